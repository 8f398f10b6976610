"""DefaultQuantizationConfig.from_pot_cli: POT CLI's placement of keys, defaults and preset renaming (spec §1.1, §12)."""

from __future__ import annotations

import pytest

from torchpqt.config import DefaultQuantizationConfig
from torchpqt.errors import ConfigError

# (target_device in `compression` or None, preset in params or None) -> preset POT used.
# Obtained by running POT 2023.3's own openvino.tools.pot.configs.config.Config._configure_algo_params
# on {"compression": {"target_device": D, "algorithms": [{"name": "DefaultQuantization",
# "params": {"preset": P}}]}} for every pair below; an absent device came out as "ANY", and
# inplace_statistics True, model_type None, dump_intermediate_model False in every case.
POT_CLI_PRESETS = {
    "CPU": {
        None: "performance",
        "performance": "performance",
        "mixed": "mixed",
        "accuracy": "mixed",
        "symmetric": "performance",
        "asymmetric": "mixed",
    },
    "GPU": {
        None: "performance",
        "performance": "performance",
        "mixed": "mixed",
        "accuracy": "mixed",
        "symmetric": "performance",
        "asymmetric": "mixed",
    },
    "CPU_SPR": {
        None: "performance",
        "performance": "performance",
        "mixed": "mixed",
        "accuracy": "mixed",
        "symmetric": "performance",
        "asymmetric": "mixed",
    },
    "GNA": {
        None: "performance",
        "performance": "performance",
        "mixed": "accuracy",
        "accuracy": "accuracy",
        "symmetric": "performance",
        "asymmetric": "accuracy",
    },
    "GNA3": {
        None: "performance",
        "performance": "performance",
        "mixed": "accuracy",
        "accuracy": "accuracy",
        "symmetric": "performance",
        "asymmetric": "accuracy",
    },
    "GNA3.5": {
        None: "performance",
        "performance": "performance",
        "mixed": "accuracy",
        "accuracy": "accuracy",
        "symmetric": "performance",
        "asymmetric": "accuracy",
    },
    None: {
        None: "performance",
        "performance": "performance",
        "mixed": "mixed",
        "accuracy": "mixed",
        "symmetric": "performance",
        "asymmetric": "mixed",
    },
}
CASES = [(d, p, want) for d, row in POT_CLI_PRESETS.items() for p, want in row.items()]


@pytest.mark.parametrize(("device", "preset", "expected"), CASES, ids=[f"{d}-{p}" for d, p, _ in CASES])
def test_preset_mapping_matches_pot(device, preset, expected):
    compression = {} if device is None else {"target_device": device}
    params = {} if preset is None else {"preset": preset}
    c = DefaultQuantizationConfig.from_pot_cli(compression, params)
    assert c.preset == expected
    assert c.target_device == (device or "ANY")
    assert (c.inplace_statistics, c.model_type, c.dump_intermediate_model) == (True, None, False)


def test_compression_keys_are_read():
    compression = {
        "target_device": "CPU",
        "model_type": "None",
        "inplace_statistics": False,
        "dump_intermediate_model": True,
        "algorithms": [{"name": "DefaultQuantization"}],
    }
    c = DefaultQuantizationConfig.from_pot_cli(compression, {"stat_subset_size": 300})
    assert (c.target_device, c.model_type, c.inplace_statistics, c.dump_intermediate_model) == (
        "CPU",
        None,
        False,
        True,
    )
    assert c.stat_subset_size == 300
    t = DefaultQuantizationConfig.from_pot_cli({"model_type": "transformer"}, {})
    assert t.model_type == "transformer"


@pytest.mark.parametrize(
    "key", ["target_device", "model_type", "inplace_statistics", "dump_intermediate_model"]
)
def test_compression_key_inside_params_is_an_error(key):
    # POT's CLI rejected these inside params ("Unknown parameter"), checked by running
    # Config._configure_algo_params with {"target_device": "CPU"} in params.
    with pytest.raises(ConfigError, match=rf"params\.{key}.*compression\.{key}"):
        DefaultQuantizationConfig.from_pot_cli({}, {key: "CPU"})


@pytest.mark.parametrize(
    ("compression", "pattern"),
    [
        ({"target_device": "NPU"}, r"compression\.target_device.*NPU"),
        ({"target_device": "VPU"}, r"compression\.target_device"),
        ({"inplace_statistics": "true"}, r"compression\.inplace_statistics"),
        ({"model_type": "bert"}, r"compression\.model_type"),
        ({"inplase_statistics": True}, r"compression\.inplase_statistics.*inplace_statistics"),
    ],
    ids=["npu", "unknown-device", "inplace-string", "model-type", "typo"],
)
def test_bad_compression_section(compression, pattern):
    with pytest.raises(ConfigError, match=pattern):
        DefaultQuantizationConfig.from_pot_cli(compression, {})


def test_cli_accepts_api_only_keys():
    # POT's CLI rejected stat_batch_size and the lr keys; torchpqt accepts them (README differences).
    c = DefaultQuantizationConfig.from_pot_cli({}, {"stat_batch_size": 4, "weights_lr": 1e-3})
    assert c.stat_batch_size == 4 and c.layerwise_tuning.weights_lr == 1e-3


def test_cli_param_errors_keep_params_path():
    with pytest.raises(ConfigError, match=r"params\.activations\.range_estimator\.max\.agregator"):
        DefaultQuantizationConfig.from_pot_cli(
            {}, {"activations": {"range_estimator": {"max": {"agregator": "mean"}}}}
        )
    with pytest.raises(ConfigError, match=r"params\.preset"):
        DefaultQuantizationConfig.from_pot_cli({}, {"preset": 3})
