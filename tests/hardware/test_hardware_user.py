"""User ``weights``/``activations`` sections against the hardware candidates (spec §1.3)."""

from __future__ import annotations

import logging

import pytest

from torchpqt.errors import ConfigError
from torchpqt.hardware import (
    QConfig,
    apply_user_section,
    consumer_candidates,
    load_hardware_config,
    resolve_spec,
    select_by_preset,
)


def _run(device, preset, group, op_types, user):
    hw = load_hardware_config(device)
    config = select_by_preset(consumer_candidates(hw, op_types, group, user=user), preset, group)
    spec = resolve_spec(config, group)
    return config, (spec.bits, spec.mode, spec.granularity, spec.levels, spec.signed)


# Where POT does not crash, torchpqt must give POT's answer. Rows computed with POT 2023.3's
# read_all_fake_quantize_configurations + get_configurations_by_preset + compute_levels, the user
# section passed in the algorithm config (harness: pot_reference.py).
# Row: (device, preset, group, consumer types, user section, (bits, mode, granularity, levels, signed)).
POT_USER_ROWS = [
    # §1.3: a complete dict that matches nothing is used as is: 4-bit symmetric weights have 15 levels.
    (
        "CPU",
        "performance",
        "weights",
        ["Convolution"],
        {"bits": 4, "mode": "symmetric", "granularity": "perchannel"},
        (4, "symmetric", "perchannel", 15, False),
    ),
    (
        "CPU",
        "mixed",
        "weights",
        ["MatMul"],
        {"bits": 8, "mode": "symmetric", "granularity": "pertensor"},
        (8, "symmetric", "pertensor", 255, False),
    ),
    (
        "CPU",
        "performance",
        "weights",
        ["Convolution"],
        {"mode": "asymmetric"},
        (8, "asymmetric", "perchannel", 256, False),
    ),
    (
        "CPU",
        "mixed",
        "activations",
        ["Convolution"],
        {"mode": "symmetric"},
        (8, "symmetric", "pertensor", 256, False),
    ),
    (
        "CPU",
        "mixed",
        "activations",
        ["DepthWiseConvolution"],
        {"granularity": "perchannel"},
        (8, "asymmetric", "perchannel", 256, False),
    ),
    (
        "CPU",
        "mixed",
        "activations",
        ["Convolution", "Sigmoid"],
        {"bits": 4, "mode": "asymmetric", "granularity": "pertensor"},
        (4, "asymmetric", "pertensor", 16, False),
    ),
    (
        "CPU",
        "mixed",
        "activations",
        ["Convolution"],
        {"bits": 8, "mode": "symmetric", "granularity": "pertensor", "level_low": 0, "level_high": 15},
        (8, "symmetric", "pertensor", 16, False),
    ),
    (
        "CPU",
        "mixed",
        "weights",
        ["Convolution"],
        {"level_low": -127, "level_high": 127},
        (8, "symmetric", "perchannel", 255, True),
    ),
    (
        "GNA3",
        "mixed",
        "weights",
        ["MatMul"],
        {"bits": 8, "mode": "symmetric", "granularity": "pertensor"},
        (8, "symmetric", "pertensor", 255, False),
    ),
    ("GNA3", "mixed", "weights", ["Convolution"], {"bits": 16}, (16, "symmetric", "pertensor", 65535, True)),
    ("GNA3", "mixed", "activations", ["Sigmoid"], {"bits": 32}, (32, "symmetric", "pertensor", 2**32, True)),
    (
        "GNA3",
        "mixed",
        "activations",
        ["Sigmoid"],
        {"bits": 16, "mode": "symmetric", "granularity": "pertensor"},
        (16, "symmetric", "pertensor", 65536, False),
    ),
    (
        "GNA3",
        "mixed",
        "activations",
        ["Convolution", "Sigmoid"],
        {"bits": 32, "mode": "symmetric", "granularity": "pertensor"},
        (32, "symmetric", "pertensor", 2**32, False),
    ),
]


@pytest.mark.parametrize("row", POT_USER_ROWS, ids=lambda r: f"{r[0]}-{r[2]}-{'+'.join(r[3])}-{r[4]}")
def test_matches_pot_where_pot_works(row):
    device, preset, group, op_types, user, expected = row
    assert _run(device, preset, group, op_types, user)[1] == expected


# POT crashes with KeyError('mode'/'granularity') on these (§1.3, run with POT 2023.3); torchpqt
# completes the user's dict from the first hardware candidate instead. Expected values follow the
# completion rule: user keys win, bits/mode/granularity from the candidate, the candidate's grid
# limits only while bits and mode are unchanged, otherwise limits derived from bits (§3.4).
COMPLETED_ROWS = [
    (
        "CPU",
        "performance",
        "weights",
        ["Convolution"],
        {"bits": 4},
        QConfig(4, "symmetric", "perchannel"),
        15,
    ),
    ("CPU", "accuracy", "weights", ["MatMul"], {"bits": 4}, QConfig(4, "symmetric", "perchannel"), 15),
    (
        "CPU",
        "performance",
        "weights",
        ["Convolution"],
        {"granularity": "pertensor"},
        QConfig(8, "symmetric", "pertensor", -127, 127),
        255,
    ),
    (
        "CPU",
        "performance",
        "activations",
        ["Convolution"],
        {"granularity": "perchannel"},
        QConfig(8, "symmetric", "perchannel"),
        256,
    ),
    (
        "CPU",
        "mixed",
        "activations",
        ["Convolution"],
        {"level_low": 0, "level_high": 15},
        QConfig(8, "symmetric", "pertensor", 0, 15),
        16,
    ),
    (
        "CPU",
        "performance",
        "activations",
        ["Convolution", "DepthWiseConvolution"],
        {"bits": 32},
        QConfig(32, "symmetric", "pertensor"),
        2**32,
    ),
    (
        "GNA",
        "performance",
        "weights",
        ["Convolution"],
        {"bits": 8},
        QConfig(8, "symmetric", "pertensor"),
        255,
    ),
    (
        "GNA",
        "performance",
        "activations",
        ["Convolution"],
        {"mode": "asymmetric"},
        QConfig(16, "asymmetric", "pertensor"),
        65536,
    ),
    (
        "GNA",
        "performance",
        "activations",
        ["Convolution"],
        {"granularity": "perchannel"},
        QConfig(16, "symmetric", "perchannel", -32768, 32767),
        65536,
    ),
]


@pytest.mark.parametrize("row", COMPLETED_ROWS, ids=lambda r: f"{r[0]}-{r[2]}-{r[4]}")
def test_pot_crash_cases_are_completed(row):
    device, preset, group, op_types, user, expected, levels = row
    config, spec = _run(device, preset, group, op_types, user)
    assert config == expected
    assert spec[3] == levels


def test_completed_4bit_matches_complete_dict():
    # Completing {bits: 4} must land on what POT does with the complete dict (15 levels, not 255).
    partial = _run("CPU", "performance", "weights", ["Convolution"], {"bits": 4})
    full = _run(
        "CPU",
        "performance",
        "weights",
        ["Convolution"],
        {"bits": 4, "mode": "symmetric", "granularity": "perchannel"},
    )
    assert partial == full


def test_matching_keeps_order_and_ignores_other_keys():
    candidates = load_hardware_config("CPU").ops["Convolution"].activations
    user = {"mode": "asymmetric", "range_estimator": {"max": {"type": "abs_max"}}, "foo": 1}
    assert apply_user_section(candidates, user, "activations") == [candidates[1]]
    assert apply_user_section(candidates, {}, "activations") == list(candidates)
    assert apply_user_section(candidates, None, "activations") == list(candidates)


def test_level_key_absent_from_candidate_is_a_mismatch():
    # POT: _is_subset needs every user key in the hardware config; q8_a has no level_low.
    candidates = load_hardware_config("CPU").ops["Convolution"].activations
    (result,) = apply_user_section(candidates, {"level_low": -128}, "activations")
    assert result == QConfig(8, "symmetric", "pertensor", -128, None)


def test_user_filter_runs_per_consumer_before_intersection():
    # GNA Conv (q16_a) + Sigmoid (q32_a) with {bits: 32}: the Sigmoid keeps q32_a (explicit limits), the
    # Conv is completed to 32 bits without limits; the intersection keeps the left (Conv) one, as POT
    # does with a complete dict in that place.
    hw = load_hardware_config("GNA")
    (config,) = consumer_candidates(hw, ["Convolution", "Sigmoid"], "activations", user={"bits": 32})
    assert config == QConfig(32, "symmetric", "pertensor")


def test_warns_once(caplog):
    candidates = load_hardware_config("CPU").ops["Convolution"].weights
    user = {"bits": 6, "granularity": "pertensor"}
    with caplog.at_level(logging.WARNING, logger="torchpqt"):
        apply_user_section(candidates, user, "weights")
        apply_user_section(candidates, user, "weights")
    messages = [r.getMessage() for r in caplog.records if "not listed by the hardware" in r.getMessage()]
    assert len(messages) == 1
    assert "'bits': 6" in messages[0] and "weights" in messages[0]


@pytest.mark.parametrize(
    ("user", "match"),
    [
        ({"mode": "sym"}, r"weights\.mode"),
        ({"granularity": "per-channel"}, r"weights\.granularity"),
        ({"bits": "8"}, r"weights\.bits"),
        ({"bits": 64}, r"weights\.bits"),
        ({"bits": True}, r"weights\.bits"),
        ({"level_low": 1.5}, r"weights\.level_low"),
        ({"level_low": 10, "level_high": 3}, r"weights\.level_low=10"),
    ],
)
def test_invalid_user_values(user, match):
    candidates = load_hardware_config("CPU").ops["Convolution"].weights
    with pytest.raises(ConfigError, match=match):
        apply_user_section(candidates, user, "weights")


def test_partial_dict_without_candidates():
    with pytest.raises(ConfigError, match="bits/mode/granularity"):
        apply_user_section([], {"bits": 4}, "weights")
    complete = {"bits": 4, "mode": "symmetric", "granularity": "pertensor"}
    assert apply_user_section([], complete, "weights") == [QConfig(4, "symmetric", "pertensor")]


def test_section_must_be_a_dict():
    with pytest.raises(ConfigError, match="activations section"):
        apply_user_section([], ["bits", 8], "activations")
