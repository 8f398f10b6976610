"""The shipped example configs: complete, spelled like torchpqt's config, loadable as they are."""

from __future__ import annotations

import re

import pytest
import torch
from cli_helpers import EXAMPLES

from torchpqt.cli import QUICK_TEMPLATE
from torchpqt.cli.config import parse_config
from torchpqt.cli.jsonc import read_jsonc
from torchpqt.cli.model import load_callable
from torchpqt.config import (
    DefaultQuantizationConfig,
    IgnoredConfig,
    QuantizerConfig,
    RangeEstimatorConfig,
    StatisticConfig,
)

CONFIGS = EXAMPLES / "configs"
NAMES = ["default_quantization_template.json", "default_quantization_spec.json"]


def test_quick_mode_uses_the_shipped_template():
    template = read_jsonc(CONFIGS / "default_quantization_template.json")
    assert template["compression"] == QUICK_TEMPLATE


@pytest.mark.parametrize("name", NAMES)
def test_example_config_loads(name):
    cfg = parse_config(read_jsonc(CONFIGS / name), CONFIGS)
    qconfig = DefaultQuantizationConfig.from_pot_cli(cfg.compression, cfg.params)
    assert qconfig.target_device == "ANY" and qconfig.inplace_statistics
    assert qconfig.preset == "performance" and qconfig.stat_subset_size == 300


def test_spec_config_names_every_key():
    text = (CONFIGS / "default_quantization_spec.json").read_text()
    written = set(re.findall(r'"([A-Za-z_.]+)"', text))  # as a key, or quoted in a comment
    keys = set(DefaultQuantizationConfig().to_dict(full=True))
    for section in (QuantizerConfig(), RangeEstimatorConfig(), StatisticConfig(), IgnoredConfig()):
        keys |= set(section.to_dict(full=True))
    keys |= {"attributes", "type", "model_name", "model", "weights", "example_input_shape", "inputs",
             "data_source", "layout", "mean", "scale", "central_fraction", "color_order", "algorithms"}
    assert sorted(keys - written) == []
    assert "inplase_statistics" not in text  # POT's spec file misspelled it, so POT silently ignored it


def test_spec_config_uses_only_default_values():
    # "the active values are the defaults": the spec file must quantize exactly like the template
    def load(name):
        cfg = parse_config(read_jsonc(CONFIGS / name), CONFIGS)
        return DefaultQuantizationConfig.from_pot_cli(cfg.compression, cfg.params)

    spec, template = load(NAMES[1]), load(NAMES[0])
    assert spec.preset == template.preset and spec.resolved_threshold == template.resolved_threshold
    assert spec.layerwise_tuning == template.layerwise_tuning
    assert spec.ignored == template.ignored and not spec.use_layerwise_tuning


def test_example_model_and_data_are_deterministic():
    small_cnn = load_callable("models.py:small_cnn", EXAMPLES, "test")
    data = load_callable("data.py:calibration_data", EXAMPLES, "test")
    x = data()[0]
    assert x.shape == (1, 3, 32, 32) and len(data()) == 16
    torch.testing.assert_close(small_cnn()(x), small_cnn()(data()[0]), rtol=0, atol=0)
    assert not torch.equal(data(seed=1)[0], x)
