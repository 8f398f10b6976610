"""Channel alignment without a second calibration pass (``alignment_pass: shared``, the default): the statistics
of the aligned tensors are derived from the unaligned pass (torchpqt.statistics.affine), and quantize() gives
what POT's second pass on the aligned model (``alignment_pass: separate``) gives, within float32 rounding."""

from __future__ import annotations

import logging

import models
import numpy as np
import pytest
import torch
from torch import nn

import torchpqt
from torchpqt.algorithms import channel_alignment as ca
from torchpqt.algorithms.layers import layer_of
from torchpqt.graph.capture import capture
from torchpqt.observer import SHAPES, StatisticRequest, store_entries
from torchpqt.statistics import StatisticsStore, StatSpec, TensorStatistics, affine
from torchpqt.statistics.reducers import minmax, reduce

# ---------------------------------------------------------------- the derivations, on random tensors

def _spec(stat_type: str, granularity: str, q: float | None = None) -> StatSpec:
    if stat_type != "quantile":
        return StatSpec("max", stat_type, "mean", granularity)
    side = "min" if q < 0.5 else "max"
    return StatSpec(side, "quantile", "mean", granularity, outlier_prob=q if side == "min" else 1 - q)


SPEC_CASES = [_spec(t, g) for t in ("min", "max", "abs_max", "mean") for g in ("pertensor", "perchannel")] + [
    _spec("quantile", "perchannel", q) for q in (0.0, 1e-4, 0.01, 0.3, 0.5, 0.9999, 1.0)]


def _reduce(x: torch.Tensor, key: tuple, per_batch: bool) -> torch.Tensor:
    stat_type, q, granularity = key
    if stat_type in ("min", "max", "abs_max"):
        mn, mx = minmax(x, granularity, per_batch=per_batch)
        return mn if stat_type == "min" else mx if stat_type == "max" else torch.maximum(-mn, mx)
    return reduce(x, stat_type, granularity, q=q, per_batch=per_batch)


def _random_map(g: torch.Generator, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.exp(torch.randn(c, generator=g, dtype=torch.float64) * 2)  # about 1/100 .. 100, as sf's clip
    b = torch.randn(c, generator=g, dtype=torch.float64) * 3
    return a, b


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("per_batch", [False, True])
def test_derived_reductions_are_the_reductions_of_the_mapped_tensor(seed, per_batch):
    """For random y, a > 0 and b: each derived per-sample reduction equals the collector's reduction of a*y + b."""
    g = torch.Generator().manual_seed(seed)
    shape = [(3, 5, 4, 6), (1, 4, 7), (2, 6, 3, 3, 2), (4, 3, 1, 1)][seed]
    view = (1, -1, *[1] * (len(shape) - 2))
    gains = torch.rand(shape[1], generator=g, dtype=torch.float64).reshape(view) * 10
    y = torch.randn(shape, generator=g, dtype=torch.float64) * gains
    a, b = _random_map(g, shape[1])
    mapped = a.reshape(view) * y + b.reshape(view)
    values = {s.reducer_key: _reduce(y, s.reducer_key, False) for s in affine.source_specs(SPEC_CASES)}
    assert all(v.shape == (shape[0], shape[1]) for v in values.values())
    for spec in SPEC_CASES:
        want = _reduce(mapped, spec.reducer_key, per_batch).double()
        got = affine.derive(spec.reducer_key, values, a, b, per_batch=per_batch)
        assert got.shape == want.shape, spec.reducer_key
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12 * float(mapped.abs().max()),
                                   msg=str(spec.reducer_key))


def test_an_identity_map_derives_the_values_bit_for_bit():
    g = torch.Generator().manual_seed(7)
    y = torch.randn(3, 4, 5, 5, generator=g)
    one, zero = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    values = {k: _reduce(y, k, False).double() for k in (affine._MIN, affine._MAX, affine._MEAN)}
    for key in (("min", None, "pertensor"), ("abs_max", None, "perchannel"), ("mean", None, "perchannel")):
        assert torch.equal(affine.derive(key, values, one, zero), _reduce(y, key, False).double()), key


def test_what_cannot_be_derived_says_why():
    assert affine.underivable(StatSpec("max", "quantile", "mean", "pertensor")) is not None
    for granularity in ("pertensor", "perchannel"):
        assert "abs_quantile" in affine.underivable(StatSpec("max", "abs_quantile", "max", granularity))
    assert affine.underivable(StatSpec("max", "abs_max", "max", "perchannel"), channel_axis=-1) is not None
    for spec in (StatSpec("max", "abs_max", "mean", "pertensor"), StatSpec("min", "quantile", "median", "perchannel"),
                 StatSpec("max", "mean", "mean", "pertensor"), StatSpec("min", "min", "min", "perchannel")):
        assert affine.underivable(spec) is None, spec


SPECS = [
    StatSpec("min", "min", "min", "pertensor"), StatSpec("max", "abs_max", "mean", "pertensor"),
    StatSpec("min", "min", "median", "perchannel"), StatSpec("max", "max", "hl_estimator", "perchannel"),
    StatSpec("min", "quantile", "mean_no_outliers", "perchannel"), StatSpec("max", "quantile", "median", "perchannel"),
    StatSpec("max", "mean", "mean", "perchannel"), StatSpec("min", "mean", "median_no_outliers", "pertensor"),
    StatSpec("max", "abs_max", "max", "perchannel"),
]


@pytest.mark.parametrize("inplace", [False, True])
def test_derived_store_entries_are_the_entries_of_the_mapped_tensor(inplace):
    """Whole requests, every aggregator, batches of 3, 3 and 1 samples: the derived store equals the store
    observed on ``a * y + b`` (float64 tolerance), shapes and rank included."""
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(n, 6, 4, 5, generator=g, dtype=torch.float64) * 4 + 1 for n in (3, 3, 1)]
    # inplace: a per-tensor statistic is one value per batch, which batch_mean takes whatever the batch size
    specs = SPECS + [StatSpec("min", "max", "batch_mean", "pertensor")] if inplace else SPECS
    a, b = _random_map(g, 6)
    view = (1, -1, 1, 1)
    request = StatisticRequest("y'", "y", tuple(specs), "obs", inplace=inplace, shapes=True)
    source = StatisticRequest("src", "y", affine.source_specs(specs), "src_obs", shapes=True)

    def observed(req, tensors):
        stats = TensorStatistics(req.specs, channel_axis=1, inplace=req.inplace)
        for t in tensors:
            stats.update(t)
        return store_entries(req.point, stats, 4, [tuple(t.shape) for t in tensors] if req.shapes else None)

    src_store = StatisticsStore(observed(source, batches))
    got = StatisticsStore(affine.derived_entries(src_store, request, "src", a.numpy(), b.numpy()))
    want = StatisticsStore(observed(request, [a.reshape(view) * t + b.reshape(view) for t in batches]))
    assert set(got) == set(want)
    assert got[("y'", SHAPES)]["samples"].tolist() == [[3, 6, 4, 5], [3, 6, 4, 5], [1, 6, 4, 5]]
    for spec in specs:
        r, w = got.result("y'", spec), want.result("y'", spec)
        assert r.shape == w.shape, spec
        np.testing.assert_allclose(r, w, rtol=1e-12, atol=1e-12, err_msg=spec.statistic_key)
    assert got.rank("y'") == 4


def test_a_store_without_the_source_says_what_is_missing():
    request = StatisticRequest("y'", "y", (StatSpec("max", "quantile", "max", "perchannel", outlier_prob=0.01),),
                               "obs")
    stats = TensorStatistics(affine.source_specs([StatSpec("min", "min", "min", "perchannel")]))
    stats.update(torch.randn(2, 3, 4, 4))
    store = StatisticsStore(store_entries("src", stats, 4, [(2, 3, 4, 4)]))
    with pytest.raises(torchpqt.TorchPQTError, match=r"quantile/perchannel@0\.99->median.*'src'"):
        affine.derived_entries(store, request, "src", np.ones(3), np.zeros(3))


def test_the_alignment_map_is_what_the_aligned_producer_computes():
    """align_pair's (a, b): the aligned producer's output is a * y + b (within float32 rounding)."""
    g = torch.Generator().manual_seed(5)
    w_in = torch.randn(6, 3, 3, 3, generator=g) * torch.tensor([0.01, 0.1, 1.0, 3.0, 10.0, 0.5]).reshape(6, 1, 1, 1)
    b_in = torch.randn(6, generator=g)
    x = torch.randn(4, 3, 8, 8, generator=g)
    y = torch.nn.functional.conv2d(x, w_in, b_in)
    amin = y.amin((0, 2, 3)).double().numpy() * 0.9
    amax = y.amax((0, 2, 3)).double().numpy() * 0.9
    new = ca.align_pair(w_in, b_in, torch.randn(5, 6, 1, 1, generator=g), torch.zeros(5), amin, amax)
    assert new.mean_aligned and new.scale_aligned and new.a.dtype == new.b.dtype == np.float64
    np.testing.assert_allclose(new.a, 1 / np.clip((amax - amin) / np.median(amax - amin), 0.01, 100))
    np.testing.assert_allclose(new.b, -(amin + amax) / 2 * new.a)
    aligned = torch.nn.functional.conv2d(x, new.w_in, new.b_in).double()
    mapped = torch.from_numpy(new.a).reshape(1, -1, 1, 1) * y.double() + torch.from_numpy(new.b).reshape(1, -1, 1, 1)
    torch.testing.assert_close(aligned, mapped, rtol=1e-5, atol=1e-5 * float(mapped.abs().max()))


# ---------------------------------------------------------------- quantize(): shared == separate


class ChainedPairs(nn.Module):
    """conv1 (3x3, padded) -> conv2 (1x1) -> conv3 (1x1) -> ReLU -> conv4: conv2 is the consumer of one aligned
    pair and the producer of the next; both have biases with offsets (mean alignment) and channel gains that
    differ by orders of magnitude (scale alignment). Input [1, 3, 8, 8]."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(11)
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 5, 1)
        self.conv3, self.conv4 = nn.Conv2d(5, 8, 1), nn.Conv2d(8, 4, 3, padding=1)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.5)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.2)
            self.conv1.weight.mul_(torch.tensor([0.01, 0.1, 1.0, 3.0, 10.0, 0.5]).reshape(6, 1, 1, 1))
            self.conv1.bias.add_(torch.tensor([2.0, -1.0, 0.5, 3.0, -4.0, 0.0]))
            self.conv2.weight.mul_(torch.tensor([20.0, 0.2, 1.0, 0.05, 4.0]).reshape(5, 1, 1, 1))
            self.conv2.bias.add_(torch.tensor([-3.0, 1.0, 0.0, 2.0, 5.0]))

    def forward(self, x):
        return self.conv4(torch.relu(self.conv3(self.conv2(self.conv1(x)))))


def _model(name: str) -> tuple[nn.Module, list[torch.Tensor]]:
    if name == "chained_pairs":
        g = torch.Generator().manual_seed(2)
        return ChainedPairs().eval(), [torch.randn(1, 3, 8, 8, generator=g) * (1 + i / 5) for i in range(10)]
    return models.build(name), models.calibration_data(name, 10)


CONFIGS = {
    "performance": {},
    "mixed": {"preset": "mixed"},
    "perchannel": {"activations": {"granularity": "perchannel"}},
    "perchannel-asymmetric-quantile": {"activations": {  # per-channel quantiles of both sides: derived too
        "mode": "asymmetric", "granularity": "perchannel", "range_estimator": {"preset": "quantile"}}},
    "inplace": {"inplace_statistics": True},
    "inplace-mixed-batch3": {"inplace_statistics": True, "preset": "mixed", "stat_batch_size": 3},
    "median-hl": {"activations": {"range_estimator": {"min": {"aggregator": "median"},
                                                      "max": {"aggregator": "hl_estimator"}}}},
    "batch3-short-last": {"stat_batch_size": 3},
    "bias-correction": {"use_fast_bias": False},
    "bias-correction-mixed-batch3": {"use_fast_bias": False, "preset": "mixed", "stat_batch_size": 3},
}
RTOL_FQ, RTOL_BIAS, ATOL_BIAS_RANGE = 1e-5, 1e-4, 1e-6  # tests/pipeline/test_pipeline_pot_parity.py's


def _fqs(q) -> dict[str, torch.Tensor]:
    return {f"{n}.{attr}": getattr(m, attr).detach().double()
            for n, m in q.named_modules() if isinstance(m, torchpqt.FakeQuantize)
            for attr in ("input_low", "input_high", "output_low", "output_high")}


def _layers(q) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Every biased layer's stored weight and bias, by node name."""
    out = {}
    for node in q.graph.nodes:
        layer = layer_of(q, node)
        if layer is not None:
            out[node.name] = (layer.weight.detach().double(), None if layer.bias is None else layer.bias.detach().double())
    return out


def _output_ranges(q, data) -> dict[str, float]:
    """max - min of every biased layer's output over ``data``."""
    ranges: dict[str, float] = {}

    class Grab(torch.fx.Interpreter):
        def run_node(self, n):
            r = super().run_node(n)
            if layer_of(q, n) is not None:
                ranges[n.name] = max(ranges.get(n.name, 0.0), float(r.max() - r.min()))
            return r

    with torch.no_grad():
        for x in data:
            Grab(q).run(x)
    return ranges


def max_relative_fq_difference(shared, separate) -> float:
    a, b = _fqs(shared), _fqs(separate)
    return max(float(((a[k] - b[k]).abs() / b[k].abs().clamp_min(1e-30)).max()) for k in b)


def compare(shared, separate, data) -> None:
    """FakeQuantize ranges (rtol 1e-5), weights and biases (rtol 1e-4 or 1e-6 of the layer's output range)."""
    a, b = _fqs(shared), _fqs(separate)
    assert a.keys() == b.keys() and a
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=RTOL_FQ, atol=1e-8, err_msg=k)
    la, lb = _layers(shared), _layers(separate)
    assert la.keys() == lb.keys() and la
    ranges = _output_ranges(separate, data)
    for name, ((wa, ba), (wb, bb)) in ((n, (la[n], lb[n])) for n in la):
        np.testing.assert_allclose(wa.numpy(), wb.numpy(), rtol=RTOL_BIAS, atol=1e-7, err_msg=name)
        assert (ba is None) == (bb is None), name
        if ba is not None:
            np.testing.assert_allclose(ba.numpy(), bb.numpy(), rtol=RTOL_BIAS, atol=ATOL_BIAS_RANGE * ranges[name],
                                       err_msg=name)


@pytest.mark.parametrize("model_name", ["align_chain", "chained_pairs"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_one_pass_gives_the_second_pass_ranges_and_biases(model_name, config):
    model, data = _model(model_name)
    params = CONFIGS[config]
    prepared = torchpqt.prepare(model, data[0], params)
    schedule = prepared.torchpqt_schedule
    assert schedule.passes == 1 and schedule.derived_points(), str(schedule)  # derived, not a second pass
    assert torchpqt.prepare(model, data[0], {**params, "alignment_pass": "separate"}).torchpqt_schedule.passes == 2
    shared = torchpqt.quantize(model, data, params, progress=False)
    separate = torchpqt.quantize(model, data, {**params, "alignment_pass": "separate"}, progress=False)
    compare(shared, separate, data)


def test_the_chained_model_aligns_means_and_scales_of_both_pairs():
    model, data = _model("chained_pairs")
    gm = capture(model, data[0])
    pairs = ca.find_pairs(gm)
    assert [(p.producer.name, p.consumer.name) for p in pairs] == [("conv2d", "conv2d_1"), ("conv2d_1", "conv2d_2")]
    for p in pairs:
        y = []

        class Grab(torch.fx.Interpreter):
            def run_node(self, n, p=p, y=y):
                r = super().run_node(n)
                if n.name == p.producer.name:
                    y.append(r)
                return r

        with torch.no_grad():
            for x in data:
                Grab(gm).run(x)
        y = torch.cat(y).double()
        lo, hi = y.amin((0, 2, 3)).numpy(), y.amax((0, 2, 3)).numpy()
        new = ca.align(p, lo, hi)
        assert new.mean_aligned and new.scale_aligned and not np.allclose(new.a, 1) and not np.allclose(new.b, 0)


def test_an_underivable_statistic_falls_back_to_pots_two_passes_bitwise(caplog):
    model, data = _model("align_chain")
    params = {"activations": {"range_estimator": {"preset": "quantile"}}}
    with caplog.at_level(logging.INFO, logger="torchpqt"):
        schedule = torchpqt.prepare(model, data[0], params).torchpqt_schedule
    assert schedule.passes == 2 and schedule.derived_points() == []
    lines = [r.getMessage() for r in caplog.records if "cannot be derived" in r.getMessage()]
    assert len(lines) == 1 and "abs_quantile" in lines[0] and "second pass" in lines[0], lines
    shared = torchpqt.quantize(model, data, params, progress=False)
    separate = torchpqt.quantize(model, data, {**params, "alignment_pass": "separate"}, progress=False)
    sa, sb = shared.state_dict(), separate.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    a, b = _fqs(shared), _fqs(separate)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_saved_statistics_convert_to_the_quantize_model_without_the_data(tmp_path):
    model, data = _model("chained_pairs")
    prepared = torchpqt.prepare(model, data[0])
    assert prepared.torchpqt_schedule.data_needs() == []
    with torch.no_grad():
        for x in data:
            prepared(x)
    path = tmp_path / "stats.pt"
    torchpqt.collect_statistics(prepared).save(path)
    fresh = torchpqt.prepare(model, data[0])  # another process: no calibration
    loaded = torchpqt.convert(fresh, statistics=torchpqt.StatisticsStore.load(path))
    oneshot = torchpqt.quantize(model, data, progress=False)
    sa, sb = loaded.state_dict(), oneshot.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert loaded.torchpqt_run["statistics_hash"] == oneshot.torchpqt_run["statistics_hash"]
    x = torch.cat(data)
    assert torch.equal(loaded(x), oneshot(x))
    # the store holds only what the loop observed: the derived points are made by convert()
    store = torchpqt.StatisticsStore.load(path)
    derived = set(prepared.torchpqt_schedule.derived_points())
    assert derived and not derived & store.points()


def test_the_one_pass_store_merges_like_one_run():
    """Two halves of the data calibrated apart, their stores merged (as distributed ranks' are): the model one
    loop over all of it gives, bit for bit."""
    model, data = _model("chained_pairs")
    stores = []
    for part in (data[:4], data[4:]):
        prepared = torchpqt.prepare(model, data[0], {"activations": {"range_estimator": {
            "max": {"aggregator": "median"}}}})
        with torch.no_grad():
            for x in part:
                prepared(x)
        stores.append(torchpqt.collect_statistics(prepared))
    fresh = torchpqt.prepare(model, data[0], {"activations": {"range_estimator": {"max": {"aggregator": "median"}}}})
    merged = torchpqt.convert(fresh, statistics=stores[0].merge(stores[1]))
    whole = torchpqt.quantize(model, data, {"activations": {"range_estimator": {"max": {"aggregator": "median"}}}},
                              progress=False)
    sa, sb = merged.state_dict(), whole.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    half = _fqs(torchpqt.convert(fresh, statistics=stores[0]))  # the test can fail: half the data differs
    assert any(not torch.equal(half[k], v) for k, v in _fqs(whole).items())


def test_alignment_pass_is_a_validated_config_key():
    from torchpqt.config import DefaultQuantizationConfig, load_config

    assert DefaultQuantizationConfig().alignment_pass == "shared"
    assert "alignment_pass" not in DefaultQuantizationConfig().to_dict()
    c = load_config({"alignment_pass": "separate"})
    assert c.to_dict() == {"alignment_pass": "separate"}
    assert DefaultQuantizationConfig.from_dict(c.to_dict()) == c
    with pytest.raises(torchpqt.ConfigError, match=r"params\.alignment_pass: got 'seperate'; did you mean "
                                                    r"'separate'\? Allowed: shared, separate"):
        load_config({"alignment_pass": "seperate"})
