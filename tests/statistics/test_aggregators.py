"""Aggregators: POT's definitions (§5.3) on the pooled samples, for any batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchpqt.errors import ConfigError, TorchPQTError
from torchpqt.statistics import AGGREGATORS, make_aggregator


def _run(name: str, batches) -> np.ndarray:
    agg = make_aggregator(name)
    for b in batches:
        agg.update(b)
    return agg.result()


def _split(values: np.ndarray, cuts: list[int]) -> list[torch.Tensor]:
    return [torch.from_numpy(p) for p in np.split(values, sorted(set(cuts))) if len(p)]


samples = st.integers(2, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=n, max_size=n),
        st.lists(st.integers(1, n - 1), max_size=5),
    )
)


@settings(max_examples=60, deadline=None)
@given(data=samples, name=st.sampled_from(["max", "min"]))
def test_max_min_invariant_to_batching(data, name: str) -> None:
    values, cuts = np.asarray(data[0], dtype=np.float32), data[1]
    assert _run(name, _split(values, cuts)) == _run(name, [torch.from_numpy(values)])


@settings(max_examples=40, deadline=None)
@given(
    data=samples, name=st.sampled_from(["median", "mean_no_outliers", "median_no_outliers", "hl_estimator"])
)
def test_sample_aggregators_see_all_samples(data, name: str) -> None:
    # POT crashes on uneven batches here; we pool the per-sample values, so batching never matters.
    values, cuts = np.asarray(data[0], dtype=np.float32), data[1]
    np.testing.assert_allclose(
        _run(name, _split(values, cuts)), _run(name, [torch.from_numpy(values)]), rtol=1e-12
    )


def test_mean_is_mean_of_batch_means() -> None:
    # Spec §5.3 [run]: POT gives 5.0 for [[1,2],[3,4],[10]], not the sample mean 4.0.
    assert _run("mean", [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]), torch.tensor([10.0])]) == 5.0


def _pairwise_hl(x: np.ndarray) -> float:
    # Definition written out: 0.5 * median of x_i + x_j over i > j.
    sums = [x[i] + x[j] for i in range(len(x)) for j in range(i)]
    return 0.5 * float(np.median(sums))


def test_per_channel_sample_aggregators() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 4))
    batches = [torch.from_numpy(x[:4]), torch.from_numpy(x[4:])]
    np.testing.assert_allclose(_run("median", batches), np.median(x, axis=0))
    np.testing.assert_allclose(_run("hl_estimator", batches), [_pairwise_hl(x[:, c]) for c in range(4)])
    low, high = np.quantile(x, 0.01, axis=0), np.quantile(x, 0.99, axis=0)
    trimmed = [x[(x[:, c] >= low[c]) & (x[:, c] <= high[c]), c] for c in range(4)]
    np.testing.assert_allclose(_run("mean_no_outliers", batches), [t.mean() for t in trimmed])
    np.testing.assert_allclose(_run("median_no_outliers", batches), [np.median(t) for t in trimmed])
    np.testing.assert_allclose(_run("max", batches), x.max(axis=0))
    np.testing.assert_allclose(_run("mean", batches), (x[:4].mean(0) + x[4:].mean(0)) / 2)


def test_result_shapes() -> None:
    # POT's shapes (§5.3 and golden file): no_outliers keep [1] per tensor; the others are scalar.
    per_tensor = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0])]
    shapes = {name: _run(name, per_tensor).shape for name in AGGREGATORS if name != "batch_mean"}
    assert shapes == {
        "mean": (),
        "max": (),
        "min": (),
        "median": (),
        "mean_no_outliers": (1,),
        "median_no_outliers": (1,),
        "hl_estimator": (),
    }
    assert all(_run(n, per_tensor).dtype == np.float64 for n in shapes)


def test_hl_estimator_single_sample_is_that_sample() -> None:
    # POT returns NaN (median of no pairs); we return the sample.
    assert _run("hl_estimator", [torch.tensor([2.5])]) == 2.5


def test_batch_mean() -> None:
    out = _run("batch_mean", [torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 6.0]])])
    np.testing.assert_array_equal(out, [[[2.0, 4.0]]])
    agg = make_aggregator("batch_mean")
    agg.update(torch.ones(2, 3))
    with pytest.raises(ConfigError, match="stat_subset_size"):
        agg.update(torch.ones(1, 3))


def test_accepts_numpy_and_keeps_no_raw_activations() -> None:
    agg = make_aggregator("median")
    agg.update(np.array([1.0, 5.0]))
    agg.update(torch.tensor([3.0]))
    assert agg.result() == 3.0


def test_unknown_aggregator() -> None:
    with pytest.raises(ConfigError, match=r"aggregator = 'average'.*allowed values: mean, max"):
        make_aggregator("average")


@pytest.mark.parametrize("name", AGGREGATORS)
def test_empty_aggregator_raises(name: str) -> None:
    with pytest.raises(TorchPQTError, match="no calibration batch"):
        make_aggregator(name).result()
