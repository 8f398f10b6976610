"""torchpqt.config: defaults, validation messages, JSON round trips (spec §1, §9, §11)."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchpqt.config import (
    AGGREGATORS,
    STATISTIC_TYPES,
    DefaultQuantizationConfig,
    IgnoredConfig,
    IgnoredOperation,
    LayerwiseTuningConfig,
    QuantizerConfig,
    StatisticConfig,
    load_config,
)
from torchpqt.errors import ConfigError

# The DefaultQuantization params of the config-file example in spec §12 (POT's
# default_quantization_spec.json), without the four keys that live in `compression`.
SPEC_EXAMPLE_PARAMS = {
    "preset": "performance",
    "stat_subset_size": 300,
    "shuffle_data": False,
    "seed": 0,
    "use_fast_bias": True,
    "use_layerwise_tuning": False,
    "saturation_fix": "first_layer",
    "threshold": 2.0,
    "apply_for_all_nodes": False,
    "ignored": {"scope": ["<NODE>"], "operations": [{"type": "<TYPE>", "attributes": {"<N>": "<V>"}}]},
    "weights": {
        "bits": 8,
        "mode": "symmetric",
        "granularity": "perchannel",
        "level_low": -127,
        "level_high": 127,
        "range_estimator": {"max": {"type": "quantile", "outlier_prob": 0.0001}},
    },
    "activations": {
        "bits": 8,
        "mode": "symmetric",
        "granularity": "pertensor",
        "range_estimator": {
            "preset": "quantile",
            "min": {"aggregator": "mean", "type": "quantile", "outlier_prob": 0.0001, "clipping_value": 0},
            "max": {"aggregator": "mean", "type": "quantile", "outlier_prob": 0.0001, "clipping_value": 6},
        },
    },
}


# ---------------------------------------------------------------- defaults


def test_defaults_follow_pot_api():
    # Values from spec §1.2 (API column) and §11 (QuantizeModelFinetuning.__init__).
    c = DefaultQuantizationConfig()
    assert (c.preset, c.stat_subset_size, c.stat_batch_size, c.shuffle_data, c.seed) == (
        "performance",
        None,
        1,
        False,
        0,
    )
    assert (c.target_device, c.model_type, c.inplace_statistics, c.dump_intermediate_model) == (
        "CPU",
        None,
        False,
        False,
    )
    assert (c.use_fast_bias, c.use_layerwise_tuning, c.saturation_fix, c.apply_for_all_nodes) == (
        True,
        False,
        "first_layer",
        False,
    )
    assert c.ignored == IgnoredConfig() and c.weights.to_dict() == {} and c.activations.to_dict() == {}
    assert c.range_estimator is None and c.to_dict() == {}
    t = c.layerwise_tuning
    assert (t.num_samples_for_tuning, t.batch_size, t.optimizer, t.loss, t.weight_decay) == (
        5000,
        25,
        "Adam",
        "l2",
        0.0,
    )
    assert (t.calibration_indices_pool, t.use_ranking_subset, t.calculate_grads_on_loss_increase_only) == (
        300,
        False,
        False,
    )
    assert (t.weights_lr, t.bias_lr, t.weight_fq_scale_lr, t.input_fq_min_lr, t.scale_lr, t.min_lr) == (
        1e-5,
        1e-4,
        1e-6,
        1e-6,
        1e-6,
        1e-6,
    )


@pytest.mark.parametrize(
    ("params", "expected"),
    [({}, 2.0), ({"use_fast_bias": False}, 1000.0), ({"use_fast_bias": False, "threshold": 5}, 5.0)],
    ids=["fast-bias", "bias-correction", "explicit"],
)
def test_resolved_threshold(params, expected):
    # FastBiasCorrection defaults to 2.0, BiasCorrection to 1000.0 (spec §10.1, §10.2).
    assert DefaultQuantizationConfig.from_dict(params).resolved_threshold == expected


def test_lr_keys_use_pot_dotted_names():
    c = DefaultQuantizationConfig.from_dict({"weight_fq.scale_lr": 1e-3, "input_fq.min_lr": 2e-3})
    assert c.layerwise_tuning.weight_fq_scale_lr == 1e-3 and c.layerwise_tuning.input_fq_min_lr == 2e-3
    assert c.to_dict() == {"weight_fq.scale_lr": 1e-3, "input_fq.min_lr": 2e-3}


def test_model_type_string_none_and_empty_preset():
    c = DefaultQuantizationConfig.from_dict({"model_type": "None", "preset": ""})
    assert c.model_type is None and c.preset == "performance"


def test_quantile_without_outlier_prob_gets_default(caplog):
    with caplog.at_level(logging.INFO, logger="torchpqt"):
        c = DefaultQuantizationConfig.from_dict(
            {
                "activations": {
                    "range_estimator": {"max": {"type": "abs_quantile"}, "min": {"type": "quantile"}}
                }
            }
        )
    assert c.activations.range_estimator.max.outlier_prob == 1e-4
    assert c.activations.range_estimator.min.outlier_prob == 1e-4
    assert "params.activations.range_estimator.max.outlier_prob" in caplog.text
    assert StatisticConfig(type="quantile", outlier_prob=0.01).outlier_prob == 0.01
    assert StatisticConfig(type="max").outlier_prob is None


def test_unused_tuning_keys_are_accepted_and_logged(caplog):
    with caplog.at_level(logging.INFO, logger="torchpqt"):
        c = DefaultQuantizationConfig.from_dict({"random_seed": 3, "tuning_iterations": 10})
    assert c.layerwise_tuning.random_seed == 3 and "params.random_seed" in caplog.text


# ---------------------------------------------------------------- construction paths


def test_wrapped_and_bare_params_are_equal():
    bare = {"preset": "mixed", "stat_subset_size": 300}
    wrapped = {"name": "DefaultQuantization", "params": bare}
    assert DefaultQuantizationConfig.from_dict(wrapped) == DefaultQuantizationConfig.from_dict(bare)
    assert (
        load_config(wrapped)
        == load_config(bare)
        == DefaultQuantizationConfig(preset="mixed", stat_subset_size=300)
    )


def test_load_config_passthrough_and_none():
    c = DefaultQuantizationConfig(preset="accuracy")
    assert load_config(c) is c
    assert load_config(None) == DefaultQuantizationConfig()
    with pytest.raises(ConfigError, match="config"):
        load_config("performance")


def test_direct_construction_normalizes_and_validates():
    c = DefaultQuantizationConfig(weights={"bits": 8}, ignored={"scope": ["a", ["b", "c"]]})
    assert c.weights == QuantizerConfig(bits=8) and c.ignored.scope == ("a", "b|c")
    with pytest.raises(ConfigError, match=r"QuantizerConfig\.bits"):
        QuantizerConfig(bits=True)


def test_config_is_frozen_and_hashable():
    c = DefaultQuantizationConfig.from_dict(SPEC_EXAMPLE_PARAMS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.preset = "mixed"  # type: ignore[misc]
    assert hash(c) == hash(DefaultQuantizationConfig.from_dict(copy.deepcopy(SPEC_EXAMPLE_PARAMS)))


def test_replace_revalidates():
    c = DefaultQuantizationConfig()
    d = c.replace(stat_subset_size=10, weights={"mode": "asymmetric"})
    assert d.stat_subset_size == 10 and d.weights.mode == "asymmetric" and c.stat_subset_size is None
    with pytest.raises(ConfigError, match="stat_subset_size"):
        c.replace(stat_subset_size=0)
    with pytest.raises(ConfigError, match="did you mean 'stat_subset_size'"):
        c.replace(stat_subset_sise=10)


# ---------------------------------------------------------------- ignored


def test_scope_lists_join_with_pipe_and_regex_kept():
    c = DefaultQuantizationConfig.from_dict(
        {"ignored": {"scope": ["conv1", ["sub", "inner"], "re:layer4\\..*"]}}
    )
    assert c.ignored.scope == ("conv1", "sub|inner", "re:layer4\\..*")


def test_ignored_operation_attributes_immutable_with_dict_view():
    op = IgnoredOperation(type="Convolution", attributes={"pads_begin": [0, 0], "auto_pad": "explicit"})
    assert op.attributes == (("pads_begin", (0, 0)), ("auto_pad", "explicit"))
    assert op.attributes_dict() == {"pads_begin": [0, 0], "auto_pad": "explicit"}
    assert op.to_dict() == {
        "type": "Convolution",
        "attributes": {"pads_begin": [0, 0], "auto_pad": "explicit"},
    }
    assert IgnoredOperation(type="Add").to_dict() == {"type": "Add"}
    hash(op)


# ---------------------------------------------------------------- errors


BAD_CONFIGS = [
    (
        "typo-aggregator",
        {"activations": {"range_estimator": {"max": {"agregator": "mean"}}}},
        r"params\.activations\.range_estimator\.max\.agregator.*did you mean 'aggregator'",
    ),
    ("typo-inplace", {"inplase_statistics": True}, r"params\.inplase_statistics.*inplace_statistics"),
    ("bits-in-params", {"bits": 8}, r"params\.bits.*'weights' or 'activations'"),
    ("bits-bool", {"weights": {"bits": True}}, r"params\.weights\.bits.*True"),
    ("bits-float", {"weights": {"bits": 8.0}}, r"params\.weights\.bits.*\[2, 32\]"),
    ("bits-too-big", {"activations": {"bits": 64}}, r"params\.activations\.bits.*64"),
    ("mode-bad", {"weights": {"mode": "symetric"}}, r"params\.weights\.mode.*did you mean 'symmetric'"),
    ("granularity-bad", {"activations": {"granularity": "per_channel"}}, r"params\.activations\.granularity"),
    ("level-low-positive", {"weights": {"level_low": 1, "level_high": 255}}, r"params\.weights\.level_low"),
    ("level-high-zero", {"weights": {"level_high": 0}}, r"params\.weights\.level_high"),
    (
        "levels-exceed-bits",
        {"weights": {"bits": 4, "level_low": -127, "level_high": 127}},
        r"params\.weights\.level_low/level_high.*bits=4",
    ),
    (
        "outlier-prob-zero",
        {"activations": {"range_estimator": {"max": {"outlier_prob": 0}}}},
        r"params\.activations\.range_estimator\.max\.outlier_prob",
    ),
    (
        "outlier-prob-half",
        {"activations": {"range_estimator": {"min": {"outlier_prob": 0.5}}}},
        r"params\.activations\.range_estimator\.min\.outlier_prob.*< 0\.5",
    ),
    (
        "stat-type-bad",
        {"weights": {"range_estimator": {"max": {"type": "absmax"}}}},
        r"params\.weights\.range_estimator\.max\.type.*abs_max",
    ),
    (
        "aggregator-bad",
        {"activations": {"range_estimator": {"max": {"aggregator": "avg"}}}},
        r"params\.activations\.range_estimator\.max\.aggregator.*hl_estimator",
    ),
    (
        "aggregator-in-weights",
        {"weights": {"range_estimator": {"max": {"aggregator": "max"}}}},
        r"params\.weights\.range_estimator\.max\.aggregator.*not allowed",
    ),
    (
        "aggregator-in-global",
        {"range_estimator": {"min": {"aggregator": "min"}}},
        r"params\.range_estimator\.min\.aggregator.*activations\.range_estimator",
    ),
    (
        "estimator-preset-bad",
        {"range_estimator": {"preset": "percentile"}},
        r"params\.range_estimator\.preset",
    ),
    (
        "clipping-inverted",
        {"activations": {"range_estimator": {"min": {"clipping_value": 6}, "max": {"clipping_value": 0}}}},
        r"params\.activations\.range_estimator\.min\.clipping_value",
    ),
    (
        "clipping-nan",
        {"activations": {"range_estimator": {"max": {"clipping_value": float("nan")}}}},
        r"params\.activations\.range_estimator\.max\.clipping_value",
    ),
    ("preset-bad", {"preset": "fast"}, r"params\.preset.*performance, mixed, accuracy"),
    ("preset-cli-alias", {"preset": "asymmetric"}, r"params\.preset.*'accuracy'"),
    ("device-npu", {"target_device": "NPU"}, r"params\.target_device.*NPU.*2023\.3"),
    ("device-lowercase", {"target_device": "cpu"}, r"params\.target_device.*did you mean 'CPU'"),
    ("model-type-bad", {"model_type": "cnn"}, r"params\.model_type.*transformer"),
    ("subset-zero", {"stat_subset_size": 0}, r"params\.stat_subset_size.*>= 1"),
    ("subset-bool", {"stat_subset_size": True}, r"params\.stat_subset_size"),
    ("batch-negative", {"stat_batch_size": -1}, r"params\.stat_batch_size"),
    ("seed-string", {"seed": "0"}, r"params\.seed"),
    ("shuffle-int", {"shuffle_data": 1}, r"params\.shuffle_data.*true or false"),
    ("saturation-bad", {"saturation_fix": "first"}, r"params\.saturation_fix.*first_layer"),
    ("threshold-zero", {"threshold": 0}, r"params\.threshold"),
    ("weights-not-dict", {"weights": 8}, r"params\.weights.*JSON object"),
    ("scope-string", {"ignored": {"scope": "conv1"}}, r"params\.ignored\.scope.*\['conv1'\]"),
    ("scope-bad-regex", {"ignored": {"scope": ["ok", "re:conv(["]}}, r"params\.ignored\.scope\[1\]"),
    ("scope-empty-name", {"ignored": {"scope": [""]}}, r"params\.ignored\.scope\[0\]"),
    (
        "operation-no-type",
        {"ignored": {"operations": [{"attributes": {"group": 1}}]}},
        r"params\.ignored\.operations\[0\]\.type.*missing",
    ),
    (
        "operation-attr-dict",
        {"ignored": {"operations": [{"type": "Convolution", "attributes": {"x": {"a": 1}}}]}},
        r"params\.ignored\.operations\[0\]\.attributes\.x",
    ),
    (
        "operation-attr-nan",
        {"ignored": {"operations": [{"type": "Add", "attributes": {"x": float("inf")}}]}},
        r"params\.ignored\.operations\[0\]\.attributes\.x",
    ),
    ("skip-model-string", {"ignored": {"skip_model": "yes"}}, r"params\.ignored\.skip_model"),
    ("ignored-unknown", {"ignored": {"scopes": ["a"]}}, r"params\.ignored\.scopes.*did you mean 'scope'"),
    ("optimizer-bad", {"optimizer": "adam"}, r"params\.optimizer.*did you mean 'Adam'"),
    ("loss-bad", {"loss": "l1"}, r"params\.loss.*l2"),
    ("lr-negative", {"weight_fq.scale_lr": -1e-6}, r"params\.weight_fq\.scale_lr"),
    ("tuning-batch-zero", {"batch_size": 0}, r"params\.batch_size"),
    ("tuning-key-nested", {"layerwise_tuning": {"batch_size": 5}}, r"params\.layerwise_tuning"),
    ("name-other-algo", {"name": "AccuracyAwareQuantization", "params": {}}, r"name.*DefaultQuantization"),
    ("wrapper-extra-key", {"name": "DefaultQuantization", "params": {}, "parms": {}}, r"parms.*'params'"),
    ("params-not-dict", {"name": "DefaultQuantization", "params": [1]}, r"params.*JSON object"),
]


@pytest.mark.parametrize(("config", "pattern"), [b[1:] for b in BAD_CONFIGS], ids=[b[0] for b in BAD_CONFIGS])
def test_bad_config_names_the_key(config, pattern):
    with pytest.raises(ConfigError, match=pattern):
        DefaultQuantizationConfig.from_dict(config)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"preset": "mixed", "stat_subset_size": 300},
        {"target_device": "GNA3.5", "model_type": "transformer", "inplace_statistics": True},
        {"weights": {"bits": 4, "mode": "symmetric", "granularity": "perchannel"}},
        {"activations": {"range_estimator": {}}, "range_estimator": {"max": {"type": "max"}}},
        {"ignored": {"skip_model": True, "operations": [{"type": "Add"}]}},
        {"use_layerwise_tuning": True, "batch_size": 5, "optimizer": "SGD", "weights_lr": 0.001},
    ],
    ids=["empty", "preset-subset", "device", "partial-weights", "estimators", "ignored", "tuning"],
)
def test_minimal_json_round_trips_exactly(params):
    c = DefaultQuantizationConfig.from_dict(params)
    assert c.to_dict() == params
    assert DefaultQuantizationConfig.from_dict(c.to_dict(full=True)) == c


def test_spec_example_keeps_every_value():
    c = DefaultQuantizationConfig.from_dict(SPEC_EXAMPLE_PARAMS)
    full = c.to_dict(full=True)
    assert {k: full[k] for k in SPEC_EXAMPLE_PARAMS} == SPEC_EXAMPLE_PARAMS
    assert DefaultQuantizationConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    # Keys equal to the defaults are left out of the minimal form.
    assert set(c.to_dict()) == {"stat_subset_size", "threshold", "ignored", "weights", "activations"}


def test_sections_keep_only_given_keys():
    w = DefaultQuantizationConfig.from_dict({"weights": {"granularity": "pertensor"}}).weights
    assert w.to_dict() == {"granularity": "pertensor"}
    assert LayerwiseTuningConfig().to_dict() == {}


# A valid random config, drawn as POT JSON.
_stat = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(STATISTIC_TYPES),
        "outlier_prob": st.floats(1e-6, 0.49),
        "granularity": st.sampled_from(["pertensor", "perchannel"]),
    },
)


@st.composite
def _estimator(draw, aggregator: bool):
    out = draw(st.fixed_dictionaries({}, optional={"preset": st.sampled_from(["default", "quantile"])}))
    for side, clip in (("min", st.floats(-100, -1)), ("max", st.floats(1, 100))):
        if draw(st.booleans()):
            stat = draw(_stat)
            if draw(st.booleans()):
                stat["clipping_value"] = draw(clip)
            if aggregator and draw(st.booleans()):
                stat["aggregator"] = draw(st.sampled_from(AGGREGATORS))
            out[side] = stat
    return out


@st.composite
def _quantizer(draw, aggregator: bool):
    out = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "mode": st.sampled_from(["symmetric", "asymmetric"]),
                "granularity": st.sampled_from(["pertensor", "perchannel"]),
            },
        )
    )
    bits = draw(st.integers(2, 32))
    if draw(st.booleans()):
        out["bits"] = bits
    if draw(st.booleans()):
        out["level_low"] = draw(st.integers(-(2 ** (bits - 1)), 0))
    if draw(st.booleans()):
        out["level_high"] = draw(st.integers(1, 2 ** (bits - 1) - 1))
    if draw(st.booleans()):
        out["range_estimator"] = draw(_estimator(aggregator))
    return out


_names = st.text("abc.|/_0", min_size=1, max_size=6)
_ignored = st.fixed_dictionaries(
    {},
    optional={
        "skip_model": st.booleans(),
        "scope": st.lists(st.one_of(_names, st.lists(_names, min_size=1, max_size=2)), max_size=3),
        "operations": st.lists(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["Convolution", "Add", "MatMul"])},
                optional={
                    "attributes": st.dictionaries(_names, st.one_of(st.integers(), st.lists(st.integers())))
                },
            ),
            max_size=2,
        ),
    },
)
_params = st.fixed_dictionaries(
    {},
    optional={
        "preset": st.sampled_from(["performance", "mixed", "accuracy"]),
        "stat_subset_size": st.one_of(st.none(), st.integers(1, 10_000)),
        "stat_batch_size": st.integers(1, 64),
        "shuffle_data": st.booleans(),
        "seed": st.integers(0, 2**32 - 1),
        "target_device": st.sampled_from(["CPU", "ANY", "GPU", "GNA", "GNA3", "GNA3.5", "CPU_SPR"]),
        "model_type": st.sampled_from([None, "transformer"]),
        "inplace_statistics": st.booleans(),
        "use_fast_bias": st.booleans(),
        "saturation_fix": st.sampled_from(["first_layer", "all", "no"]),
        "threshold": st.floats(0.01, 1e4),
        "ignored": _ignored,
        "weights": _quantizer(aggregator=False),
        "activations": _quantizer(aggregator=True),
        "range_estimator": _estimator(aggregator=False),
        "batch_size": st.integers(1, 100),
        "optimizer": st.sampled_from(["Adam", "SGD"]),
        "weight_fq.min_lr": st.floats(0, 1),
        "random_seed": st.integers(0, 100),
    },
)


@settings(max_examples=150, deadline=None)
@given(_params)
def test_round_trip_property(params):
    c = DefaultQuantizationConfig.from_dict(params)
    for d in (c.to_dict(), c.to_dict(full=True)):
        assert DefaultQuantizationConfig.from_dict(json.loads(json.dumps(d, allow_nan=False))) == c


# Any JSON value at any key either validates or raises ConfigError, never a raw Python error.
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
_paths = st.sampled_from(
    [
        ("preset",),
        ("stat_subset_size",),
        ("seed",),
        ("target_device",),
        ("model_type",),
        ("threshold",),
        ("ignored",),
        ("ignored", "scope"),
        ("ignored", "operations"),
        ("weights",),
        ("weights", "bits"),
        ("weights", "level_low"),
        ("activations", "range_estimator"),
        ("activations", "range_estimator", "max"),
        ("activations", "range_estimator", "max", "outlier_prob"),
        ("range_estimator", "min", "type"),
        ("batch_size",),
        ("weight_fq.scale_lr",),
        ("tuning_iterations",),
    ]
)


@settings(max_examples=300, deadline=None)
@given(_paths, _json)
def test_any_value_gives_config_error_or_config(path, value):
    params: dict = {}
    node = params
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    try:
        DefaultQuantizationConfig.from_dict(params)
    except ConfigError as err:
        assert path[0] in str(err)


def test_import_stays_light():
    code = "import sys, torchpqt.config; print(sorted(m for m in ('onnx', 'openvino') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bias_extension_keys_default_to_pots_behaviour_and_are_validated():
    c = DefaultQuantizationConfig()
    assert (c.correct_zero_bias, c.fast_bias_padding_fix) == (False, False)
    assert "correct_zero_bias" not in c.to_dict() and c.to_dict(full=True)["fast_bias_padding_fix"] is False
    on = load_config({"correct_zero_bias": True, "fast_bias_padding_fix": True})
    assert on.to_dict() == {"correct_zero_bias": True, "fast_bias_padding_fix": True}
    assert DefaultQuantizationConfig.from_dict(on.to_dict()) == on
    for key in ("correct_zero_bias", "fast_bias_padding_fix"):
        with pytest.raises(ConfigError, match=rf"params\.{key}: expected true or false, got 1"):
            load_config({key: 1})
    with pytest.raises(ConfigError, match="did you mean 'fast_bias_padding_fix'"):
        load_config({"fast_bias_pading_fix": True})
