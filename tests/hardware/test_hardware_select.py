"""Config selection: intersection, presets, unification, levels (spec §3.2-§3.4, §8 point 2).

The expected rows of the tables below were produced by running POT 2023.3's own functions
(``HardwareConfig.from_json`` via ``load_hardware_config``, ``read_all_fake_quantize_configurations``,
``get_configurations_by_preset`` and ``compute_levels``) on synthetic FQ -> consumer maps, with
``_fake_quantize_to_types`` / ``find_fqs_to_unify`` replaced by the maps (openvino-dev 2023.3);
the harness is ``pot_reference.py`` next to this file.
Row: (target_device, preset, group, consumer op types, (bits, mode, granularity, config level_low,
config level_high, levels, signed)).
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from torchpqt.errors import ConfigError
from torchpqt.hardware import (
    PRESETS,
    QConfig,
    consumer_candidates,
    intersect_configs,
    load_hardware_config,
    resolve_spec,
    select_by_preset,
    select_unified,
    transformer_matmul_qconfig,
)
from torchpqt.quant.spec import QuantSpec

MODES = {"sym": "symmetric", "asym": "asymmetric"}
LO32, HI32, N32 = -(2**31), 2**31 - 1, 2**32  # GNA q32 grid
CONV, DW = "Convolution", "DepthWiseConvolution"
GRANS = {"pt": "pertensor", "pc": "perchannel"}

# fmt: off
# §3.3 effective table: one consumer per FQ.
POT_SINGLE_CONSUMER = [
    ("CPU", "performance", "weights", (CONV,), (8, "sym", "pc", -127, 127, 255, True)),
    ("CPU", "performance", "weights", ("MatMul",), (8, "sym", "pc", -127, 127, 255, True)),
    ("CPU", "performance", "activations", (CONV,), (8, "sym", "pt", None, None, 256, False)),
    ("CPU", "performance", "activations", (DW,), (8, "sym", "pc", None, None, 256, False)),
    ("CPU", "mixed", "weights", (CONV,), (8, "sym", "pc", -127, 127, 255, True)),
    ("CPU", "mixed", "weights", ("MatMul",), (8, "sym", "pc", -127, 127, 255, True)),
    ("CPU", "mixed", "activations", (CONV,), (8, "asym", "pt", None, None, 256, False)),
    ("CPU", "mixed", "activations", (DW,), (8, "asym", "pc", None, None, 256, False)),
    ("CPU", "accuracy", "weights", (CONV,), (8, "asym", "pc", None, None, 256, False)),
    ("CPU", "accuracy", "weights", ("MatMul",), (8, "asym", "pc", None, None, 256, False)),
    ("CPU", "accuracy", "activations", (CONV,), (8, "asym", "pt", None, None, 256, False)),
    ("CPU", "accuracy", "activations", (DW,), (8, "asym", "pc", None, None, 256, False)),
    ("ANY", "performance", "weights", (CONV,), (8, "sym", "pc", -127, 127, 255, True)),
    ("ANY", "performance", "weights", ("MatMul",), (8, "sym", "pc", -127, 127, 255, True)),
    ("ANY", "performance", "activations", (CONV,), (8, "sym", "pt", None, None, 256, False)),
    ("ANY", "performance", "activations", (DW,), (8, "sym", "pc", None, None, 256, False)),
    ("ANY", "mixed", "weights", (CONV,), (8, "sym", "pc", -127, 127, 255, True)),
    ("ANY", "mixed", "weights", ("MatMul",), (8, "sym", "pc", -127, 127, 255, True)),
    ("ANY", "mixed", "activations", (CONV,), (8, "asym", "pt", None, None, 256, False)),
    ("ANY", "mixed", "activations", (DW,), (8, "asym", "pc", None, None, 256, False)),
    ("ANY", "accuracy", "weights", (CONV,), (8, "asym", "pc", None, None, 256, False)),
    ("ANY", "accuracy", "weights", ("MatMul",), (8, "asym", "pc", None, None, 256, False)),
    ("ANY", "accuracy", "activations", (CONV,), (8, "asym", "pt", None, None, 256, False)),
    ("ANY", "accuracy", "activations", (DW,), (8, "asym", "pc", None, None, 256, False)),
    ("GPU", "performance", "weights", (CONV,), (8, "sym", "pc", -127, 127, 255, True)),
    ("GPU", "performance", "weights", ("MatMul",), (8, "sym", "pc", -127, 127, 255, True)),
    ("GPU", "performance", "activations", (CONV,), (8, "sym", "pt", None, None, 256, False)),
    ("GPU", "performance", "activations", (DW,), (8, "sym", "pc", None, None, 256, False)),
    ("GPU", "mixed", "weights", (CONV,), (8, "sym", "pc", -127, 127, 255, True)),
    ("GPU", "mixed", "weights", ("MatMul",), (8, "sym", "pc", -127, 127, 255, True)),
    ("GPU", "mixed", "activations", (CONV,), (8, "asym", "pt", None, None, 256, False)),
    ("GPU", "mixed", "activations", (DW,), (8, "asym", "pc", None, None, 256, False)),
    ("GPU", "accuracy", "weights", (CONV,), (8, "asym", "pc", None, None, 256, False)),
    ("GPU", "accuracy", "weights", ("MatMul",), (8, "asym", "pc", None, None, 256, False)),
    ("GPU", "accuracy", "activations", (CONV,), (8, "asym", "pt", None, None, 256, False)),
    ("GPU", "accuracy", "activations", (DW,), (8, "asym", "pc", None, None, 256, False)),
    ("GNA", "performance", "weights", (CONV,), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA", "performance", "weights", ("MatMul",), (8, "sym", "pc", -127, 127, 255, True)),
    ("GNA", "performance", "weights", ("Add",), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA", "performance", "weights", ("Multiply",), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA", "performance", "activations", (CONV,), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA", "performance", "activations", ("Sigmoid",), (32, "sym", "pt", LO32, HI32, N32, True)),
    ("GNA", "performance", "outputs", (CONV,), (32, "sym", "pt", LO32, HI32, N32, True)),
    ("GNA", "performance", "outputs", ("Sigmoid",), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA", "performance", "outputs", ("Parameter",), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA", "mixed", "weights", (CONV,), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA", "mixed", "weights", ("MatMul",), (8, "sym", "pc", -127, 127, 255, True)),
    ("GNA", "mixed", "weights", ("Add",), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA", "mixed", "weights", ("Multiply",), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA", "mixed", "activations", (CONV,), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA", "mixed", "activations", ("Sigmoid",), (32, "sym", "pt", LO32, HI32, N32, True)),
    ("GNA", "mixed", "outputs", (CONV,), (32, "sym", "pt", LO32, HI32, N32, True)),
    ("GNA", "mixed", "outputs", ("Sigmoid",), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA", "mixed", "outputs", ("Parameter",), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA", "accuracy", "weights", (CONV,), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA", "accuracy", "weights", ("MatMul",), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA", "accuracy", "weights", ("Add",), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA", "accuracy", "weights", ("Multiply",), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA", "accuracy", "activations", (CONV,), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA", "accuracy", "activations", ("Sigmoid",), (32, "sym", "pt", LO32, HI32, N32, True)),
    ("GNA", "accuracy", "outputs", (CONV,), (32, "sym", "pt", LO32, HI32, N32, True)),
    ("GNA", "accuracy", "outputs", ("Sigmoid",), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA", "accuracy", "outputs", ("Parameter",), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA3", "performance", "weights", (CONV,), (8, "sym", "pt", -127, 127, 255, True)),
    ("GNA3", "performance", "weights", ("MatMul",), (8, "sym", "pc", -127, 127, 255, True)),
    ("GNA3", "performance", "weights", ("Add",), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA3", "performance", "weights", ("Multiply",), (8, "sym", "pc", -127, 127, 255, True)),
    ("GNA3", "performance", "activations", (CONV,), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA3", "performance", "activations", ("Sigmoid",), (32, "sym", "pt", LO32, HI32, N32, True)),
    ("GNA3", "performance", "outputs", (CONV,), (32, "sym", "pt", LO32, HI32, N32, True)),
    ("GNA3", "performance", "outputs", ("Sigmoid",), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA3", "performance", "outputs", ("Parameter",), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA3", "mixed", "weights", (CONV,), (8, "sym", "pt", -127, 127, 255, True)),
    ("GNA3", "mixed", "weights", ("MatMul",), (8, "sym", "pc", -127, 127, 255, True)),
    ("GNA3", "mixed", "weights", ("Add",), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA3", "mixed", "weights", ("Multiply",), (8, "sym", "pc", -127, 127, 255, True)),
    ("GNA3", "mixed", "activations", (CONV,), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA3", "mixed", "activations", ("Sigmoid",), (32, "sym", "pt", LO32, HI32, N32, True)),
    ("GNA3", "mixed", "outputs", (CONV,), (32, "sym", "pt", LO32, HI32, N32, True)),
    ("GNA3", "mixed", "outputs", ("Sigmoid",), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA3", "mixed", "outputs", ("Parameter",), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA3", "accuracy", "weights", (CONV,), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA3", "accuracy", "weights", ("MatMul",), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA3", "accuracy", "weights", ("Add",), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA3", "accuracy", "weights", ("Multiply",), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA3", "accuracy", "activations", (CONV,), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA3", "accuracy", "activations", ("Sigmoid",), (32, "sym", "pt", LO32, HI32, N32, True)),
    ("GNA3", "accuracy", "outputs", (CONV,), (32, "sym", "pt", LO32, HI32, N32, True)),
    ("GNA3", "accuracy", "outputs", ("Sigmoid",), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA3", "accuracy", "outputs", ("Parameter",), (16, "sym", "pt", -32768, 32767, 65536, True)),
]

# §3.2: FQs with two consumers (intersection; GNA's primary bit width 16 wins over 8 and 32).
POT_TWO_CONSUMERS = [
    ("CPU", "performance", "activations", (CONV, DW), (8, "sym", "pt", None, None, 256, False)),
    ("CPU", "performance", "activations", (CONV, "Sigmoid"), (8, "sym", "pt", None, None, 256, False)),
    ("CPU", "performance", "activations", ("Sigmoid", CONV), (8, "sym", "pt", None, None, 256, False)),
    ("CPU", "performance", "weights", ("MatMul", "Multiply"), (8, "sym", "pc", -127, 127, 255, True)),
    ("CPU", "performance", "weights", (CONV, "MatMul"), (8, "sym", "pc", -127, 127, 255, True)),
    ("CPU", "mixed", "activations", (CONV, DW), (8, "asym", "pt", None, None, 256, False)),
    ("CPU", "mixed", "activations", (CONV, "Sigmoid"), (8, "asym", "pt", None, None, 256, False)),
    ("CPU", "mixed", "activations", ("Sigmoid", CONV), (8, "asym", "pt", None, None, 256, False)),
    ("CPU", "mixed", "weights", ("MatMul", "Multiply"), (8, "sym", "pc", -127, 127, 255, True)),
    ("CPU", "mixed", "weights", (CONV, "MatMul"), (8, "sym", "pc", -127, 127, 255, True)),
    ("CPU", "accuracy", "activations", (CONV, DW), (8, "asym", "pt", None, None, 256, False)),
    ("CPU", "accuracy", "activations", (CONV, "Sigmoid"), (8, "asym", "pt", None, None, 256, False)),
    ("CPU", "accuracy", "activations", ("Sigmoid", CONV), (8, "asym", "pt", None, None, 256, False)),
    ("CPU", "accuracy", "weights", ("MatMul", "Multiply"), (8, "asym", "pc", None, None, 256, False)),
    ("CPU", "accuracy", "weights", (CONV, "MatMul"), (8, "asym", "pc", None, None, 256, False)),
    ("GNA", "performance", "activations", (CONV, DW), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA", "performance", "activations", (CONV, "Sigmoid"), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA", "performance", "activations", ("Sigmoid", CONV), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA", "performance", "weights", ("MatMul", "Multiply"), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA", "performance", "weights", (CONV, "MatMul"), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA", "mixed", "activations", (CONV, DW), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA", "mixed", "activations", (CONV, "Sigmoid"), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA", "mixed", "activations", ("Sigmoid", CONV), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA", "mixed", "weights", ("MatMul", "Multiply"), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA", "mixed", "weights", (CONV, "MatMul"), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA", "accuracy", "activations", (CONV, DW), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA", "accuracy", "activations", (CONV, "Sigmoid"), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA", "accuracy", "activations", ("Sigmoid", CONV), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA", "accuracy", "weights", ("MatMul", "Multiply"), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA", "accuracy", "weights", (CONV, "MatMul"), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA3", "performance", "activations", (CONV, DW), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA3", "performance", "activations", (CONV, "Sigmoid"), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA3", "performance", "activations", ("Sigmoid", CONV), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA3", "performance", "weights", ("MatMul", "Multiply"), (8, "sym", "pc", -127, 127, 255, True)),
    ("GNA3", "performance", "weights", (CONV, "MatMul"), (8, "sym", "pt", -127, 127, 255, True)),
    ("GNA3", "mixed", "activations", (CONV, DW), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA3", "mixed", "activations", (CONV, "Sigmoid"), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA3", "mixed", "activations", ("Sigmoid", CONV), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA3", "mixed", "weights", ("MatMul", "Multiply"), (8, "sym", "pc", -127, 127, 255, True)),
    ("GNA3", "mixed", "weights", (CONV, "MatMul"), (8, "sym", "pt", -127, 127, 255, True)),
    ("GNA3", "accuracy", "activations", (CONV, DW), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA3", "accuracy", "activations", (CONV, "Sigmoid"), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA3", "accuracy", "activations", ("Sigmoid", CONV), (16, "sym", "pt", -32768, 32767, 65536, True)),
    ("GNA3", "accuracy", "weights", ("MatMul", "Multiply"), (16, "sym", "pt", -32767, 32767, 65535, True)),
    ("GNA3", "accuracy", "weights", (CONV, "MatMul"), (16, "sym", "pt", -32767, 32767, 65535, True)),
]
# fmt: on


def _select(device, preset, group, op_types):
    hw = load_hardware_config(device)
    config = select_by_preset(consumer_candidates(hw, op_types, group), preset, group)
    return config, resolve_spec(config, group)


def _check(config, spec, expected):
    bits, mode, gran, low, high, levels, signed = expected
    assert config == QConfig(bits, MODES[mode], GRANS[gran], low, high)
    assert (spec.levels, spec.signed) == (levels, signed)


def _id(row):
    return f"{row[0]}-{row[1]}-{row[2]}-{'+'.join(row[3])}"


@pytest.mark.parametrize("row", POT_SINGLE_CONSUMER, ids=_id)
def test_effective_table(row):
    device, preset, group, op_types, expected = row
    _check(*_select(device, preset, group, op_types), expected)


@pytest.mark.parametrize("row", POT_TWO_CONSUMERS, ids=_id)
def test_two_consumers(row):
    device, preset, group, op_types, expected = row
    _check(*_select(device, preset, group, op_types), expected)


def _q(bits, mode, gran, low=None, high=None):
    return QConfig(bits, MODES[mode], GRANS[gran], low, high)


# Inputs and results of POT 2023.3's intersect_configs(left, right, primary_bitwidth), run on the same
# lists written as POT dicts.
POT_INTERSECTIONS = {
    "offset_quirk": (
        [_q(8, "sym", "pt"), _q(16, "sym", "pt")],
        [_q(16, "sym", "pt")],
        8,
        [_q(8, "sym", "pt"), _q(16, "sym", "pt")],
    ),
    "offset_quirk_primary16": (
        [_q(8, "sym", "pt"), _q(16, "sym", "pt")],
        [_q(16, "sym", "pt")],
        16,
        [_q(16, "sym", "pt"), _q(16, "sym", "pt")],
    ),
    "fewer_bits": (
        [_q(16, "sym", "pt")],
        [_q(8, "sym", "pt", -127, 127)],
        32,
        [_q(8, "sym", "pt", -127, 127)],
    ),
    "tie_keeps_left": (
        [_q(8, "sym", "pt", -127, 127)],
        [_q(8, "sym", "pt")],
        8,
        [_q(8, "sym", "pt", -127, 127)],
    ),
    "weaker_variant": ([_q(8, "asym", "pc")], [_q(8, "sym", "pt")], 8, [_q(8, "sym", "pt")]),
    "weaker_both_extended": (
        [_q(8, "asym", "pc")],
        [_q(8, "asym", "pt"), _q(8, "sym", "pc")],
        8,
        [_q(8, "sym", "pt"), _q(8, "sym", "pc")],
    ),
    "order_quirk": (
        [_q(8, "asym", "pt"), _q(8, "sym", "pt")],
        [_q(8, "sym", "pt"), _q(8, "asym", "pt")],
        8,
        [_q(8, "asym", "pt")],
    ),
    "cpu_conv_and_depthwise": (
        [_q(8, "sym", "pt"), _q(8, "asym", "pt")],
        [_q(8, "sym", "pc"), _q(8, "asym", "pc")],
        8,
        [_q(8, "sym", "pt"), _q(8, "asym", "pt")],
    ),
    "no_primary": ([_q(16, "sym", "pt")], [_q(8, "sym", "pt")], None, [_q(8, "sym", "pt")]),
}


@pytest.mark.parametrize("name", POT_INTERSECTIONS)
def test_intersect_configs_matches_pot(name):
    left, right, primary, expected = POT_INTERSECTIONS[name]
    assert intersect_configs(left, right, primary) == expected


def test_conv_and_depthwise_consumers_share_pertensor():
    # §3.2 weaker-variant retry: q8_a (pertensor) x q8_a_ch (perchannel) meet on pertensor.
    hw = load_hardware_config("CPU")
    expected = [_q(8, "sym", "pt"), _q(8, "asym", "pt")]
    assert consumer_candidates(hw, ["Convolution", "DepthWiseConvolution"], "activations") == expected
    assert consumer_candidates(hw, ["DepthWiseConvolution", "Convolution"], "activations") == expected


def test_consumers_without_rule_are_skipped():
    hw = load_hardware_config("CPU")
    only_conv = consumer_candidates(hw, ["Convolution"], "activations")
    assert consumer_candidates(hw, ["SoftMax", "Convolution", "MaxPool"], "activations") == only_conv
    with pytest.raises(ConfigError, match=r"SoftMax.*activations.*CPU"):
        consumer_candidates(hw, ["SoftMax", "MaxPool"], "activations")
    with pytest.raises(ConfigError, match="outputs"):
        consumer_candidates(hw, ["Convolution"], "outputs")  # CPU has no outputs group


@pytest.mark.parametrize(
    ("config", "group", "levels", "low", "high"),
    [
        (_q(16, "sym", "pt", -32768, 32767), "activations", 65536, -32768, 32767),  # GNA q16_a / q16_o
        (_q(16, "sym", "pt", -32767, 32767), "weights", 65535, -32767, 32767),  # GNA q16_w
        (_q(32, "sym", "pt", -(2**31), 2**31 - 1), "activations", 2**32, -(2**31), 2**31 - 1),  # q32
        (_q(8, "sym", "pc", -127, 127), "weights", 255, -127, 127),  # q8_w
        (_q(8, "sym", "pt"), "weights", 255, -127, 127),  # derived: symmetric weights drop one level
        (_q(8, "asym", "pc"), "weights", 256, -128, 127),
        (_q(8, "sym", "pt"), "activations", 256, -128, 127),
        (_q(4, "sym", "pc"), "weights", 15, -7, 7),  # §1.3: the complete 4-bit weights dict
        (_q(8, "sym", "pt", 0, 15), "activations", 16, 0, 15),
    ],
)
def test_resolve_spec_levels(config, group, levels, low, high):
    spec = resolve_spec(config, group)
    assert isinstance(spec, QuantSpec)
    assert (spec.levels, spec.level_low, spec.level_high) == (levels, low, high)
    assert (spec.group, spec.bits, spec.mode, spec.granularity) == (
        group,
        config.bits,
        config.mode,
        config.granularity,
    )


def test_signed_needs_both_limits_below_zero():
    # §3.4: a user level_low of 0 does not force unsigned, and limits derived from bits never force signed.
    assert resolve_spec(_q(16, "sym", "pt", -32768, 32767), "activations").signed
    assert not resolve_spec(_q(8, "sym", "pt", 0, 15), "activations").signed
    assert not resolve_spec(_q(8, "sym", "pt"), "activations").signed
    assert not resolve_spec(QConfig(8, "symmetric", "pertensor", level_low=-128), "activations").signed


@given(
    bits=st.integers(2, 32),
    mode=st.sampled_from(["symmetric", "asymmetric"]),
    group=st.sampled_from(["weights", "activations", "outputs"]),
)
def test_derived_grid(bits, mode, group):
    spec = resolve_spec(QConfig(bits, mode, "pertensor"), group)
    narrow = group == "weights" and mode == "symmetric"
    assert spec.levels == 2**bits - narrow
    assert spec.level_high - spec.level_low + 1 == spec.levels
    assert spec.level_high == 2 ** (bits - 1) - 1
    assert not spec.signed


@given(
    low=st.integers(-(2**20), 0),
    high=st.integers(1, 2**20),
    group=st.sampled_from(["weights", "activations"]),
)
def test_explicit_grid(low, high, group):
    spec = resolve_spec(QConfig(21, "symmetric", "pertensor", low, high), group)
    assert (spec.level_low, spec.level_high, spec.levels) == (low, high, high - low + 1)
    assert spec.signed == (low < 0)


def test_resolve_spec_rejects_bad_input():
    with pytest.raises(ConfigError, match="group"):
        resolve_spec(_q(8, "sym", "pt"), "weight")


_configs = st.builds(
    QConfig,
    bits=st.sampled_from([8, 16, 32]),
    mode=st.sampled_from(["symmetric", "asymmetric"]),
    granularity=st.sampled_from(["pertensor", "perchannel"]),
)


@given(
    left=st.lists(_configs, min_size=1, max_size=5),
    right=st.lists(_configs, min_size=1, max_size=5),
    primary=st.sampled_from([8, 16, None]),
)
def test_intersection_properties(left, right, primary):
    result = intersect_configs(left, right, primary)
    assert result  # the weaker-variant retry always meets on symmetric pertensor

    def weakened(configs):
        out = set(configs) | {dataclasses.replace(c, mode="symmetric") for c in configs}
        return out | {dataclasses.replace(c, granularity="pertensor") for c in out}

    for config in result:
        assert config in weakened(left) | weakened(right)
        key = (config.mode, config.granularity)
        assert key in {(c.mode, c.granularity) for c in weakened(left)}
        assert key in {(c.mode, c.granularity) for c in weakened(right)}


@given(configs=st.lists(_configs, min_size=1, max_size=4, unique_by=lambda c: (c.mode, c.granularity)))
def test_self_intersection_is_identity(configs):
    assert intersect_configs(configs, configs) == configs


@pytest.mark.parametrize("group", ["weights", "activations", "outputs"])
def test_preset_rule(group):
    candidates = [_q(8, "sym", "pc"), _q(8, "asym", "pt"), _q(16, "asym", "pc")]
    first, last = candidates[0], candidates[-1]
    picked = {preset: select_by_preset(candidates, preset, group) for preset in PRESETS}
    if group == "weights":
        assert picked == {"performance": first, "mixed": first, "accuracy": last}
    else:
        assert picked == {"performance": first, "mixed": last, "accuracy": last}


def test_preset_errors():
    with pytest.raises(ConfigError, match="preset"):
        select_by_preset([_q(8, "sym", "pt")], "symmetric", "activations")  # CLI alias, not for the API
    with pytest.raises(ConfigError, match="candidate"):
        select_by_preset([], "performance", "weights")


# Scale unification, POT 2023.3's get_configurations_by_preset with find_fqs_to_unify returning one
# group whose bridge is a Concat (concat=True) or an Add (concat=False, same shapes).
# Row: (device, preset, concat, member consumers, expected (bits, mode, granularity) or None for the error).
POT_UNIFIED = [
    ("CPU", "performance", True, [["Convolution"], ["Convolution"]], (8, "sym", "pt")),
    ("CPU", "mixed", True, [["DepthWiseConvolution"], ["Convolution"]], (8, "asym", "pt")),
    ("CPU", "performance", True, [["Convolution"], ["DepthWiseConvolution"]], None),
    ("CPU", "mixed", True, [["DepthWiseConvolution"], ["DepthWiseConvolution"]], None),
    # POT restarts the running intersection after an empty member: only a trailing one is fatal.
    (
        "CPU",
        "accuracy",
        True,
        [["DepthWiseConvolution"], ["DepthWiseConvolution"], ["Convolution"]],
        (8, "asym", "pt"),
    ),
    ("CPU", "accuracy", True, [["Convolution"], ["DepthWiseConvolution"], ["DepthWiseConvolution"]], None),
    ("CPU", "performance", False, [["DepthWiseConvolution"], ["DepthWiseConvolution"]], (8, "sym", "pc")),
    ("GPU", "mixed", False, [["Convolution"], ["DepthWiseConvolution"]], (8, "asym", "pt")),
    ("GNA", "performance", True, [["Sigmoid"], ["Convolution"]], (16, "sym", "pt")),
]


@pytest.mark.parametrize("row", POT_UNIFIED, ids=lambda r: f"{r[0]}-{r[1]}-{r[2]}-{len(r[3])}")
def test_select_unified(row):
    device, preset, concat, members, expected = row
    hw = load_hardware_config(device)
    lists = [consumer_candidates(hw, types, "activations") for types in members]
    if expected is None:
        with pytest.raises(ConfigError, match="pertensor"):
            select_unified(lists, preset, concat, primary_bitwidth=hw.primary_bitwidth)
        return
    config = select_unified(lists, preset, concat, primary_bitwidth=hw.primary_bitwidth)
    bits, mode, gran = expected
    assert (config.bits, config.mode, config.granularity) == (bits, MODES[mode], GRANS[gran])


@pytest.mark.parametrize(
    ("device", "mode"),
    [
        ("CPU", "symmetric"),
        ("ANY", "symmetric"),
        ("CPU_SPR", "symmetric"),
        ("GPU", "symmetric"),
        ("GNA", "asymmetric"),
        ("GNA3", "asymmetric"),
    ],
)
def test_transformer_act_x_act_matmul(device, mode):
    # §8 point 2: only the mode changes; levels stay.
    config = QConfig(8, "asymmetric", "pertensor", -128, 127)
    assert transformer_matmul_qconfig(config, device) == dataclasses.replace(config, mode=mode)
