"""Parsing of POT's hardware rule files (spec §3.1, §7.3)."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources

import pytest

from torchpqt.errors import ConfigError
from torchpqt.hardware import (
    TARGET_DEVICES,
    OpRule,
    QConfig,
    load_hardware_config,
    parse_hardware_config,
)

SYM_PT = QConfig(8, "symmetric", "pertensor")
ASYM_PT = QConfig(8, "asymmetric", "pertensor")
SYM_PC = QConfig(8, "symmetric", "perchannel")
ASYM_PC = QConfig(8, "asymmetric", "perchannel")
Q8_W_SYM = QConfig(8, "symmetric", "perchannel", -127, 127)


@pytest.mark.parametrize(
    ("device", "primary", "priority"),
    [
        ("ANY", 8, ()),
        ("CPU", 8, ()),
        ("CPU_SPR", 8, ()),
        ("GPU", 8, ()),
        ("GNA", 16, ()),
        ("GNA3", 8, ("Convolution",)),
        ("GNA3.5", 8, ("Convolution",)),
    ],
)
def test_devices_load(device, primary, priority):
    hw = load_hardware_config(device)
    assert hw.target_device == device
    assert hw.primary_bitwidth == primary
    assert hw.input_priority_types == priority


@pytest.mark.parametrize(("alias", "same"), [("ANY", "CPU"), ("CPU_SPR", "CPU"), ("GNA3.5", "GNA3")])
def test_aliases_read_the_same_file(alias, same):
    assert dict(load_hardware_config(alias).ops) == dict(load_hardware_config(same).ops)


def test_parsed_once():
    assert load_hardware_config("GPU") is load_hardware_config("GPU")


@pytest.mark.parametrize("device", ["NPU", "cpu", "VPU", "", None, 3])
def test_unknown_target_device(device):
    with pytest.raises(ConfigError, match="target_device") as err:
        load_hardware_config(device)
    assert "GNA3.5" in str(err.value)  # the allowed values are listed


def test_npu_error_explains_missing_file():
    with pytest.raises(ConfigError, match="npu.json"):
        load_hardware_config("NPU")


def test_cpu_expansion_keeps_key_order():
    # §3.1: q8_a = {8, [sym, asym], pertensor} expands to [sym, asym]; weights list q8_w_sym then q8_w_asym.
    conv = load_hardware_config("CPU").ops["Convolution"]
    assert conv.activations == (SYM_PT, ASYM_PT)
    assert conv.weights == (Q8_W_SYM, ASYM_PC)
    assert conv.outputs == ()
    assert load_hardware_config("CPU").ops["DepthWiseConvolution"].activations == (SYM_PC, ASYM_PC)


def test_cartesian_product_over_several_lists():
    data = {
        "config": {
            "quantization": {
                "x": {"bits": [8, 4], "mode": ["symmetric", "asymmetric"], "granularity": "pertensor"}
            }
        },
        "operations": [
            {
                "type": "Op",
                "quantization": {
                    "activations": [
                        "x",
                        {"bits": 8, "mode": "symmetric", "granularity": ["perchannel", "pertensor"]},
                    ]
                },
            }
        ],
    }
    rule = parse_hardware_config(data, "TEST").ops["Op"]
    bits_mode = [(c.bits, c.mode) for c in rule.activations[:4]]
    assert bits_mode == [(8, "symmetric"), (8, "asymmetric"), (4, "symmetric"), (4, "asymmetric")]
    assert [c.granularity for c in rule.activations[4:]] == ["perchannel", "pertensor"]


def test_unknown_named_config_is_an_error():
    data = {
        "config": {"quantization": {}},
        "operations": [{"type": "Op", "quantization": {"weights": "nope"}}],
    }
    with pytest.raises(ConfigError, match="'Op'.*'nope'"):
        parse_hardware_config(data, "TEST")


def test_duplicate_op_type_is_an_error():
    data = {"operations": [{"type": "Op"}, {"type": "Op"}]}
    with pytest.raises(ConfigError, match="twice"):
        parse_hardware_config(data, "TEST")


def test_unified_scales_and_attributes():
    cpu = load_hardware_config("CPU").ops
    assert cpu["Concat"].unified_scales == "all"
    assert not cpu["Concat"].quantizable
    assert cpu["LSTMSequence"].unified_scales == ((0, 1), (4, 5))
    assert cpu["GRUSequence"].unified_scales == ((0, 1), (3, 4))
    assert cpu["LSTMSequence"].weights == (Q8_W_SYM,)
    assert cpu["Convolution"].unified_scales is None
    with pytest.raises(TypeError):
        cpu["Concat"].attributes["unified_scales"] = "none"  # read-only
    # §7.3: GNA Concat is listed but not unified.
    assert load_hardware_config("GNA").ops["Concat"].unified_scales is None


def test_rules_are_frozen():
    hw = load_hardware_config("CPU")
    with pytest.raises(dataclasses.FrozenInstanceError):
        hw.ops["Convolution"].weights = ()
    with pytest.raises(TypeError):
        hw.ops["Foo"] = OpRule("Foo")


def test_gpu_lacks_recurrent_sequences():
    # §7.3: GPU is CPU minus LSTMSequence and GRUSequence.
    cpu, gpu = load_hardware_config("CPU").ops, load_hardware_config("GPU").ops
    assert set(cpu) - set(gpu) == {"LSTMSequence", "GRUSequence"}
    assert all(cpu[t] == gpu[t] for t in gpu)


@pytest.mark.parametrize("device", ["CPU", "GNA", "GNA3"])
def test_quantizable_types(device):
    ops = load_hardware_config(device).ops
    quantizable = {t for t, rule in ops.items() if rule.quantizable}
    assert {"Convolution", "MatMul", "Add", "Multiply", "AvgPool", "ReduceMean"} <= quantizable
    assert not ({"MaxPool", "Reshape", "Concat", "Transpose"} & quantizable)
    assert ("Sigmoid" in quantizable) == device.startswith("GNA")  # §7.3
    assert ("Parameter" in quantizable) == device.startswith("GNA")


def test_gna_groups():
    ops = load_hardware_config("GNA").ops
    assert [c.bits for c in ops["MatMul"].weights] == [8, 16]
    assert ops["Parameter"].outputs[0].to_dict() == {
        "bits": 16,
        "mode": "symmetric",
        "granularity": "pertensor",
        "level_low": -32768,
        "level_high": 32767,
    }
    assert ops["Subtract"].outputs == () and load_hardware_config("GNA3").ops["Subtract"].outputs != ()


@pytest.mark.parametrize("device", sorted(set(TARGET_DEVICES.values())))
def test_every_file_config_round_trips(device):
    # Each expanded config rebuilt from its POT-style dict is the same config.
    text = resources.files("torchpqt.hardware").joinpath(device).read_text(encoding="utf-8")
    hw = parse_hardware_config(json.loads(text), device)
    for rule in hw.ops.values():
        for group in ("weights", "activations", "outputs"):
            for config in rule.configs(group):
                assert QConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "bad",
    [
        {"bits": 8, "mode": "sym", "granularity": "pertensor"},
        {"bits": 8, "mode": "symmetric", "granularity": "per_channel"},
        {"bits": 0, "mode": "symmetric", "granularity": "pertensor"},
        {"bits": 8.0, "mode": "symmetric", "granularity": "pertensor"},
        {"bits": 8, "mode": "symmetric", "granularity": "pertensor", "level_low": 5, "level_high": 5},
        {"bits": 8, "mode": "symmetric"},
        {"bits": 8, "mode": "symmetric", "granularity": "pertensor", "levels": 256},
    ],
)
def test_qconfig_validation(bad):
    with pytest.raises(ConfigError):
        QConfig.from_dict(bad)


def test_configs_of_unknown_group():
    with pytest.raises(ConfigError, match="group"):
        load_hardware_config("CPU").ops["Convolution"].configs("weight")
    assert load_hardware_config("CPU").configs("SoftMax", "activations") == ()
