"""TensorStatistics: the per-tensor calibration collector."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchpqt.errors import ConfigError, TorchPQTError
from torchpqt.statistics import StatSpec, TensorStatistics, make_aggregator, range_estimator, reduce

ALL_SPECS = [
    StatSpec("min", "min", "mean", "pertensor"),
    StatSpec("max", "max", "max", "pertensor"),
    StatSpec("max", "abs_max", "mean", "pertensor"),
    StatSpec("max", "abs_max", "median", "perchannel"),
    StatSpec("min", "quantile", "min", "perchannel", outlier_prob=0.01),
    StatSpec("max", "abs_quantile", "hl_estimator", "pertensor", outlier_prob=0.01),
    StatSpec("max", "mean", "mean", "perchannel"),
]


def _batches(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 4, 4, generator=g) for b in (2, 2, 1)]  # a short last batch


@pytest.mark.parametrize("inplace", [False, True])
def test_matches_reduce_then_aggregate(inplace: bool) -> None:
    stats = TensorStatistics(ALL_SPECS, inplace=inplace)
    for b in _batches():
        stats.update(b)
    assert stats.num_batches == 3
    for spec in ALL_SPECS:
        agg = make_aggregator(spec.aggregator)
        for b in _batches():
            agg.update(reduce(b, spec.type, spec.granularity, q=spec.q, per_batch=inplace))
        np.testing.assert_allclose(stats.result(spec), agg.result(), rtol=1e-12, err_msg=spec.key)


def test_inplace_changes_per_tensor_extremes_only() -> None:
    specs = [StatSpec("max", "abs_max", "mean", "pertensor"), StatSpec("max", "abs_max", "max", "perchannel")]
    normal, inplace = TensorStatistics(specs), TensorStatistics(specs, inplace=True)
    for b in _batches():
        normal.update(b)
        inplace.update(b)
    per_batch = np.mean([b.abs().max().item() for b in _batches()])
    np.testing.assert_allclose(inplace.result(specs[0]), per_batch, rtol=1e-6)
    assert inplace.result(specs[0]) > normal.result(specs[0])  # §6: per-batch extremes widen the mean
    np.testing.assert_array_equal(inplace.result(specs[1]), normal.result(specs[1]))


def test_shared_reducers_and_duplicate_specs() -> None:
    mn, mx = range_estimator("activations", "symmetric", "perchannel", None)
    stats = TensorStatistics([mn, mx, mx])
    stats.update(torch.tensor([[[1.0, -4.0], [2.0, 3.0]]]))
    assert stats.result(mn) == -4.0
    np.testing.assert_array_equal(stats.result(mx), [4.0, 3.0])


def test_channel_axis() -> None:
    spec = StatSpec("max", "max", "max", "perchannel")
    stats = TensorStatistics([spec], channel_axis=-1)
    x = torch.randn(2, 5, 3)
    stats.update(x)
    np.testing.assert_allclose(stats.result(spec), x.amax(dim=(0, 1)).numpy())


def test_errors() -> None:
    with pytest.raises(ConfigError, match="no aggregator"):
        TensorStatistics([StatSpec("max", "abs_max", None, "perchannel")])
    stats = TensorStatistics([ALL_SPECS[0]])
    with pytest.raises(TorchPQTError, match="not registered"):
        stats.result(ALL_SPECS[1])
    with pytest.raises(TorchPQTError, match="no calibration batch"):
        stats.result(ALL_SPECS[0])


def test_requires_grad_input_and_repr() -> None:
    spec = ALL_SPECS[2]
    stats = TensorStatistics([spec])
    stats.update(torch.randn(2, 3, requires_grad=True) * 2)
    assert stats.result(spec).shape == ()
    assert "abs_max/pertensor->mean" in repr(stats)


def test_first_nonfinite_batch_across_check_blocks() -> None:
    """The per-batch NaN/Inf checks are folded 64 batches at a time: the first bad batch is found in any block,
    a later bad batch does not replace it, and finite values near the float32 limit are no false alarm."""
    specs = [StatSpec("min", "min", "min", "pertensor"), StatSpec("max", "max", "mean", "perchannel")]
    stats = TensorStatistics(specs)
    huge = torch.full((1, 3, 4), 3.0e38)
    huge[0, 1] = -3.0e38
    for i in range(200):
        if i in (70, 130):
            x = torch.randn(1, 3, 4)
            x[0, 2, 1] = float("nan") if i == 70 else float("-inf")
        else:
            x = huge if i % 3 == 0 else torch.randn(1, 3, 4)
        stats.update(x)
        if i in (69, 70, 71, 150):
            assert stats.first_nonfinite_batch() == (None if i == 69 else 70), i
    assert stats.first_nonfinite_batch() == 70


def test_aggregator_states_are_snapshots() -> None:
    """Running states are updated in place; a state read out earlier keeps the value it had then."""
    stats = TensorStatistics([StatSpec("max", "max", "max", "pertensor"), StatSpec("min", "min", "mean",
                                                                                    "pertensor")])
    stats.update(torch.ones(1, 4))
    before = {k: {f: v.clone() if isinstance(v, torch.Tensor) else v for f, v in s.items()}
              for k, s in stats.states().items()}
    early = stats.states()
    stats.update(torch.full((1, 4), 5.0))
    for key, state in early.items():
        for field, value in state.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, before[key][field]), (key, field)


def _reference(specs, batches, inplace=False):
    """Each statistic computed the plain way, batch by batch: NumPy float64, the mean aggregator's sum added in
    batch order (what POT's per-batch accumulation does), extremes over all values."""
    out = {}
    for spec in specs:
        per_batch = [reduce(b, spec.type, spec.granularity, q=spec.q, per_batch=inplace).double().numpy()
                     for b in batches]
        if spec.aggregator == "mean":
            total = None
            for v in per_batch:
                term = v.mean(axis=0) if v.shape[0] > 1 else v[0]
                total = term.copy() if total is None else total + term
            out[spec.statistic_key] = total / len(per_batch)
        elif spec.aggregator in ("min", "max"):
            stacked = np.concatenate(per_batch)
            out[spec.statistic_key] = stacked.min(axis=0) if spec.aggregator == "min" else stacked.max(axis=0)
        else:
            out[spec.statistic_key] = np.median(np.concatenate(per_batch), axis=0)
    return out


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_block_folding_is_bitwise_the_batch_by_batch_result(inplace, batch) -> None:
    """150 batches (more than two folding blocks), a short last batch, abs_max kept as its min/max pair, a
    one-value statistic 0-d, a mean undivided and a quantile as its rows' extremes until the block is folded:
    every statistic equals the batch-by-batch computation exactly."""
    specs = [StatSpec("min", "min", "mean", "pertensor"), StatSpec("max", "abs_max", "mean", "pertensor"),
             StatSpec("max", "abs_max", "max", "perchannel"), StatSpec("min", "min", "min", "perchannel"),
             StatSpec("max", "mean", "mean", "perchannel"), StatSpec("max", "max", "median", "pertensor"),
             StatSpec("min", "mean", "median", "pertensor"),
             StatSpec("min", "quantile", "mean", "perchannel", outlier_prob=1e-3),
             StatSpec("max", "abs_quantile", "median", "pertensor", outlier_prob=0.01)]
    g = torch.Generator().manual_seed(3)
    sizes = [batch] * 149 + [1]
    batches = [torch.randn(b, 3, 5, 4, generator=g) * (1 + i % 7) for i, b in enumerate(sizes)]
    stats = TensorStatistics(specs, inplace=inplace)
    for b in batches:
        stats.update(b)
    want = _reference(specs, batches, inplace)
    for spec in specs:
        np.testing.assert_array_equal(stats.result(spec), want[spec.statistic_key], err_msg=spec.statistic_key)
    assert stats.first_nonfinite_batch() is None


def test_a_mean_of_a_large_activation_is_accurate() -> None:
    """Beyond 65k elements the mean is summed in float32 (torch's cascade summation): within 1e-7 of the values'
    magnitude, channel-first and channel-last, where a sequential float32 sum is off by ~1e-5."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 160, 160, generator=g) * 3 + 0.25
    ref = x.double().mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(reduce(x, "mean", "perchannel").numpy(), ref, rtol=0, atol=1e-7 * 3)
    y = x.reshape(2, 8, -1).transpose(1, 2)  # [B, T, C] channel-last, strided
    np.testing.assert_allclose(reduce(y, "mean", "perchannel", channel_axis=-1).numpy(), ref, rtol=0, atol=1e-7 * 3)
    naive = torch.zeros(2, 8)
    for row in x.reshape(2, 8, -1).unbind(-1)[:4096]:  # a sequential float32 sum drifts
        naive += row
    assert (naive.double().numpy() / 4096 - x.reshape(2, 8, -1)[..., :4096].double().mean(-1).numpy()).__abs__().max() > 1e-7


def test_changing_input_signatures_and_fed_batches() -> None:
    """Batches whose shape, layout or dtype changes (each a new specialization of the reductions and a new run of
    the folding block), with replayed (fed) batches in between: every statistic equals the batch-by-batch
    computation exactly."""
    specs = [StatSpec("min", "min", "mean", "pertensor"), StatSpec("max", "abs_max", "max", "perchannel"),
             StatSpec("max", "abs_max", "median", "pertensor"), StatSpec("max", "mean", "mean", "perchannel"),
             StatSpec("min", "quantile", "min", "perchannel", outlier_prob=0.01)]
    g = torch.Generator().manual_seed(5)
    batches = []
    for i in range(90):
        x = torch.randn(1 + i % 2, 3, 4 + i % 3, 5, generator=g)
        if i % 5 == 0:
            x = x.contiguous(memory_format=torch.channels_last)  # strided along the channel axis
        if i % 11 == 0:
            x = x.double()
        batches.append(x)
    stats = TensorStatistics(specs)
    keys = stats.reducer_keys()
    for i, b in enumerate(batches):
        if i % 4 == 3:  # a replayed batch: the reduced values handed in
            stats.feed({k: reduce(b, k[0], k[2], q=k[1]) for k in keys})
        else:
            stats.update(b)
    want = _reference(specs, batches, False)
    for spec in specs:
        np.testing.assert_array_equal(stats.result(spec), want[spec.statistic_key], err_msg=spec.statistic_key)


def test_nonfinite_rows_are_exactly_those_with_nan_or_inf() -> None:
    """The fold's check flags a batch holding NaN or +-Inf, never a finite one whose sum would overflow."""
    from torchpqt.statistics.collector import _nonfinite_rows

    rows = torch.full((6, 1000), 3e38)  # a float32 sum of any row overflows
    rows[1, 7], rows[3, 0], rows[4, -1] = float("nan"), float("inf"), -float("inf")
    assert _nonfinite_rows(rows).tolist() == [False, True, False, True, True, False]
    assert _nonfinite_rows(torch.tensor([1.0, float("nan")])).tolist() == [False, True]
    assert _nonfinite_rows(torch.zeros(2, 0)).tolist() == [False, False]
