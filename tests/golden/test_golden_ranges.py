"""Every statistic, aggregator and FakeQuantize range of the golden file (spec §13), which was
computed with POT 2023.3's own functions and, for the FQ ranges, confirmed by full POT runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fq_math import scale_zero_point

from torchpqt.quant.params import fake_quantize_params
from torchpqt.quant.spec import QuantSpec
from torchpqt.statistics import TensorStatistics, make_aggregator, range_estimator, reduce, weight_stat

GOLDEN = json.loads((Path(__file__).parent.parent / "data" / "golden_ranges.json").read_text())
ACT = GOLDEN["activations"]
WTS = GOLDEN["weights"]
RTOL = 1e-5


def _activation_batches() -> list[torch.Tensor]:
    # Spec §13.1 recipe, as recorded in the JSON.
    rng = np.random.default_rng(20240607)
    x = rng.standard_normal((4, 2, 3, 4, 5))
    x = x * np.array([1.0, 2.0, 0.5]).reshape(1, 1, 3, 1, 1) + np.array([0.5, -1.0, 0.0]).reshape(
        1, 1, 3, 1, 1
    )
    x[1, 0, 1, 2, 3] = 25.0
    x[3, 1, 0, 0, 0] = -18.0
    x = x.astype(np.float32)
    return [torch.from_numpy(x[i]) for i in range(4)]


def _weights() -> tuple[np.ndarray, np.ndarray]:
    # Spec §13.2 recipe.
    wr = np.random.default_rng(7)
    w = (wr.standard_normal((4, 3, 3, 3)) * 0.5).astype(np.float32)
    w[2] *= 1e-3
    w[3] = 0.0
    wt = (wr.standard_normal((3, 4, 2, 2)) * 0.5).astype(np.float32)
    return w, wt


BATCHES = _activation_batches()
W, WT = _weights()

# JSON statistic names -> (type, q).
STAT_NAMES = {
    "min": ("min", None),
    "max": ("max", None),
    "abs_max": ("abs_max", None),
    "mean": ("mean", None),
    "quantile_q=1e-4": ("quantile", 1e-4),
    "quantile_q=1-1e-4": ("quantile", 1 - 1e-4),
    "abs_quantile_q=1-1e-4": ("abs_quantile", 1 - 1e-4),
}


def _close(actual, expected) -> None:
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=RTOL)


def _cases(tree: dict) -> list:
    return [pytest.param(g, name, id=f"{g}-{name}") for g in tree for name in tree[g]]


@pytest.mark.parametrize(("granularity", "name"), _cases(ACT["per_batch_stats"]))
def test_per_batch_statistic(granularity: str, name: str) -> None:
    stat_type, q = STAT_NAMES[name]
    got = [reduce(b, stat_type, granularity, q=q).numpy() for b in BATCHES]
    _close(np.stack(got), ACT["per_batch_stats"][granularity][name])


def _aggregated_cases() -> list:
    tree = ACT["aggregated"]
    return [
        pytest.param(g, name, agg, id=f"{g}-{name}-{agg}")
        for g in tree
        for name in tree[g]
        for agg in tree[g][name]
    ]


@pytest.mark.parametrize(("granularity", "name", "aggregator"), _aggregated_cases())
def test_aggregated_statistic(granularity: str, name: str, aggregator: str) -> None:
    stat_type, q = STAT_NAMES[name]
    agg = make_aggregator(aggregator)
    for b in BATCHES:
        agg.update(reduce(b, stat_type, granularity, q=q))
    _close(agg.result(), ACT["aggregated"][granularity][name][aggregator])


@pytest.mark.parametrize("name", list(ACT["inplace_pertensor_per_batch"]))
def test_inplace_per_batch_statistic(name: str) -> None:
    got = np.stack([reduce(b, name, "pertensor", per_batch=True).numpy() for b in BATCHES])
    _close(got, ACT["inplace_pertensor_per_batch"][name])


@pytest.mark.parametrize(
    ("name", "aggregator"),
    [(n, a) for n, aggs in ACT["inplace_pertensor_aggregated"].items() for a in aggs],
)
def test_inplace_aggregated_statistic(name: str, aggregator: str) -> None:
    agg = make_aggregator(aggregator)
    for b in BATCHES:
        agg.update(reduce(b, name, "pertensor", per_batch=True))
    _close(agg.result(), ACT["inplace_pertensor_aggregated"][name][aggregator])


def _act_spec(mode: str, granularity: str) -> QuantSpec:
    return QuantSpec("activations", 8, mode, granularity, -128, 127, 256, False)


def _collect(mode: str, granularity: str, preset: str, inplace: bool = False):
    mn, mx = range_estimator("activations", mode, granularity, {"preset": preset})
    stats = TensorStatistics([mn, mx], inplace=inplace)
    for b in BATCHES:
        stats.update(b)
    return mn, mx, stats.result(mn), stats.result(mx)


def _estimator_dict(spec) -> dict:
    d = {"aggregator": spec.aggregator, "type": spec.type, "granularity": spec.granularity}
    if spec.outlier_prob is not None:
        d["outlier_prob"] = spec.outlier_prob
    return d


@pytest.mark.parametrize("case", list(ACT["fake_quantize_from_stats"]))
def test_fake_quantize_from_stats(case: str) -> None:
    gold = ACT["fake_quantize_from_stats"][case]
    preset, granularity, mode = case.split("/")
    mn, mx, min_stat, max_stat = _collect(mode, granularity, preset)
    assert _estimator_dict(mn) == gold["range_estimator"]["min"]
    assert _estimator_dict(mx) == gold["range_estimator"]["max"]
    _close(min_stat, gold["aggregated_min_stat"])
    _close(max_stat, gold["aggregated_max_stat"])
    p = fake_quantize_params(min_stat, max_stat, _act_spec(mode, granularity))
    assert p.levels == gold["levels"]
    scale, zp = scale_zero_point(p)
    for got, key in (
        (p.input_low, "input_low"),
        (p.input_high, "input_high"),
        (scale, "scale"),
        (zp, "zero_point"),
    ):
        np.testing.assert_allclose(np.atleast_1d(got), gold[key], rtol=RTOL, err_msg=key)
    np.testing.assert_array_equal(p.output_low, p.input_low)
    np.testing.assert_array_equal(p.output_high, p.input_high)


# Spec §13.1 inplace rows (confirmed by full POT runs). Full precision from POT 2023.3's
# fix_zero_filters_symmetric / fix_zero_filters_asymmetric / tune_range and aggregation.mean/amin
# applied to the in-graph per-batch statistics (run in the POT environment).
INPLACE_FQ = {
    "symmetric": (-13.753517931840552, 13.646068572998047),
    "asymmetric": (-8.616186141967773, 8.54887218773365),
}


@pytest.mark.parametrize("mode", list(INPLACE_FQ))
def test_inplace_fake_quantize(mode: str) -> None:
    _, _, min_stat, max_stat = _collect(mode, "pertensor", "default", inplace=True)
    p = fake_quantize_params(min_stat, max_stat, _act_spec(mode, "pertensor"))
    np.testing.assert_allclose([p.input_low, p.input_high], INPLACE_FQ[mode], rtol=RTOL)


def _weight_stat_cases() -> list:
    out = []
    for tensor, axis, key in ((W, 0, "conv_W_stats"), (WT, 1, "deconv_Wt_stats_transpose_True")):
        for g, stats in WTS[key].items():
            out += [pytest.param(tensor, axis, key, g, n, id=f"{key}-{g}-{n}") for n in stats]
    return out


@pytest.mark.parametrize(("w", "axis", "key", "granularity", "name"), _weight_stat_cases())
def test_weight_statistic(w: np.ndarray, axis: int, key: str, granularity: str, name: str) -> None:
    stat_type, q = STAT_NAMES[name]
    _close(
        weight_stat(torch.from_numpy(w), stat_type, granularity, axis=axis, q=q), WTS[key][granularity][name]
    )


def _weight_fq_cases() -> list:
    out = []
    for tensor, axis, key in ((W, 0, "conv_W_fake_quantize"), (WT, 1, "deconv_Wt_fake_quantize")):
        for where, modes in WTS[key].items():
            out += [pytest.param(tensor, axis, key, where, m, id=f"{key}-{where}-{m}") for m in modes]
    return out


@pytest.mark.parametrize(("w", "axis", "key", "where", "mode"), _weight_fq_cases())
def test_weight_fake_quantize(w: np.ndarray, axis: int, key: str, where: str, mode: str) -> None:
    gold = WTS[key][where][mode]
    granularity, preset = where.split("/")
    sym = mode == "symmetric"
    spec = QuantSpec("weights", 8, mode, granularity, -127 if sym else -128, 127, 255 if sym else 256, sym)
    mn, mx = range_estimator("weights", mode, granularity, {"preset": preset})
    assert (mn is None) == sym  # symmetric weights compute no min statistic

    def stat(s):
        return None if s is None else weight_stat(w, s.type, s.granularity, axis=axis, q=s.q)

    p = fake_quantize_params(stat(mn), stat(mx), spec)
    assert p.levels == gold["levels"]
    np.testing.assert_allclose(np.atleast_1d(p.input_low), gold["input_low"], rtol=RTOL)
    np.testing.assert_allclose(np.atleast_1d(p.input_high), gold["input_high"], rtol=RTOL)
    if "zero_point" in gold:
        np.testing.assert_allclose(np.atleast_1d(scale_zero_point(p)[1]), gold["zero_point"], rtol=RTOL)
    fixed = gold.get("with_saturation_fix(first conv on CPU/ANY)")
    if fixed is not None:
        q = fake_quantize_params(stat(mn), stat(mx), spec, output_scale=2.0)
        for k in ("input_low", "input_high", "output_low", "output_high"):
            np.testing.assert_allclose(np.atleast_1d(getattr(q, k)), fixed[k], rtol=RTOL, err_msg=k)


def _example_spec(ex: dict) -> QuantSpec:
    levels = ex["levels"]
    per_channel = isinstance(ex["max_stat"], list)
    granularity = "perchannel" if per_channel else "pertensor"
    if ex["kind"] == "weights_symmetric":
        return QuantSpec("weights", 8, "symmetric", granularity, -127, 127, levels, True)
    bits = int(np.log2(levels))
    mode = "asymmetric" if ex["kind"] == "asymmetric" else "symmetric"
    # GNA configs give level_low < 0 explicitly, which forces signed activations (spec §3.4).
    signed = "GNA" in ex["desc"]
    return QuantSpec("activations", bits, mode, granularity, -(levels // 2), levels // 2 - 1, levels, signed)


@pytest.mark.parametrize(
    "ex", GOLDEN["min_max_to_fake_quantize_examples"], ids=lambda ex: ex["desc"].split(" (")[0][:50]
)
def test_min_max_to_fake_quantize(ex: dict) -> None:
    p = fake_quantize_params(ex["min_stat"], ex["max_stat"], _example_spec(ex))
    assert p.levels == ex["levels"]
    scale, zp = scale_zero_point(p)
    for got, key in (
        (p.input_low, "input_low"),
        (p.input_high, "input_high"),
        (scale, "scale"),
        (zp, "zero_point"),
    ):
        np.testing.assert_allclose(np.atleast_1d(got), ex[key], rtol=RTOL, err_msg=key)
