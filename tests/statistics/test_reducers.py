"""Per-sample reducers against NumPy (POT evaluates its statistics with NumPy, §5.2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchpqt.errors import ConfigError
from torchpqt.statistics import minmax, reduce, reducers, weight_stat
from torchpqt.statistics.reducers import minmax_fn

TYPES = ["min", "max", "abs_max", "mean", "quantile", "abs_quantile"]
NP_FN = {
    "min": np.min,
    "max": np.max,
    "abs_max": lambda a, axis: np.max(np.abs(a), axis=axis),
    "mean": np.mean,
    "quantile": lambda a, axis, q: np.quantile(a, q, axis=axis),
    "abs_quantile": lambda a, axis, q: np.quantile(np.abs(a), q, axis=axis),
}


def _np_stat(a: np.ndarray, stat_type: str, axis: int, q: float | None) -> np.ndarray:
    a = a.astype(np.float64)
    return NP_FN[stat_type](a, axis=axis, q=q) if "quantile" in stat_type else NP_FN[stat_type](a, axis=axis)


shapes = st.lists(st.integers(1, 7), min_size=3, max_size=4)
qs = st.one_of(st.sampled_from([0.0, 1e-4, 0.5, 1 - 1e-4, 1.0]), st.floats(0.0, 1.0))


@settings(max_examples=60, deadline=None)
@given(shape=shapes, q=qs, seed=st.integers(0, 2**16), abs_=st.booleans())
def test_quantile_equals_numpy(shape: list[int], q: float, seed: int, abs_: bool) -> None:
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
    stat_type = "abs_quantile" if abs_ else "quantile"
    a = x.numpy()
    per_tensor = reduce(x, stat_type, "pertensor", q=q)
    per_channel = reduce(x, stat_type, "perchannel", q=q)
    ref_t = _np_stat(a.reshape(a.shape[0], -1), stat_type, 1, q)
    ref_c = _np_stat(a.reshape(a.shape[0], a.shape[1], -1), stat_type, 2, q)
    np.testing.assert_allclose(per_tensor.numpy(), ref_t, rtol=1e-12, atol=0)
    np.testing.assert_allclose(per_channel.numpy(), ref_c, rtol=1e-12, atol=0)
    assert per_tensor.dtype == torch.float64


@pytest.mark.parametrize("q", [0.3, 0.5, 0.999])
def test_quantile_selection_path_with_ties(q: float) -> None:
    # Many ties and rows long enough to take the kthvalue path (more than 1024 order statistics).
    x = torch.randint(0, 7, (3, 5000)).float()
    ref = np.quantile(x.numpy().astype(np.float64), q, axis=1)
    np.testing.assert_array_equal(reduce(x, "quantile", "pertensor", q=q).numpy(), ref)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16), stat_type=st.sampled_from(TYPES))
def test_per_channel_equals_per_tensor_channel_by_channel(
    shape: list[int], seed: int, stat_type: str
) -> None:
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
    q = 0.9 if "quantile" in stat_type else None
    per_channel = reduce(x, stat_type, "perchannel", q=q)
    for c in range(x.shape[1]):
        torch.testing.assert_close(
            per_channel[:, c], reduce(x[:, c], stat_type, "pertensor", q=q).to(per_channel.dtype)
        )


@pytest.mark.parametrize("stat_type", TYPES)
def test_channel_axis_last(stat_type: str) -> None:
    x = torch.randn(2, 5, 4)  # [B, T, C], e.g. a MatMul input with channels last
    q = 0.25 if "quantile" in stat_type else None
    got = reduce(x, stat_type, "perchannel", q=q, channel_axis=-1)
    ref = _np_stat(np.moveaxis(x.numpy(), -1, 1), stat_type, 2, q)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-6)


@pytest.mark.parametrize("stat_type", TYPES)
def test_non_contiguous_input(stat_type: str) -> None:
    x = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    q = 0.75 if "quantile" in stat_type else None
    for g, axis, rows in (
        ("pertensor", 1, x.numpy().reshape(2, -1)),
        ("perchannel", 2, x.numpy().reshape(2, 3, -1)),
    ):
        np.testing.assert_allclose(
            reduce(x, stat_type, g, q=q).numpy(), _np_stat(rows, stat_type, axis, q), rtol=1e-6
        )


def test_shapes_follow_pot() -> None:
    # §5.2: per tensor [B] for rank >= 2, [1] below; per channel [B, C] for rank >= 3, else the tensor itself.
    assert reduce(torch.randn(4, 3, 2), "max", "pertensor").shape == (4,)
    assert reduce(torch.randn(6), "max", "pertensor").shape == (1,)
    assert reduce(torch.randn(4, 3, 2, 2), "max", "perchannel").shape == (4, 3)
    x = torch.randn(4, 3)
    torch.testing.assert_close(reduce(x, "min", "perchannel"), x)
    torch.testing.assert_close(reduce(x, "abs_quantile", "perchannel", q=0.5), x.abs().double())


def test_per_batch_reduces_the_whole_batch() -> None:
    x = torch.randn(4, 3, 5)
    for stat_type, ref in (("min", x.min()), ("max", x.max()), ("abs_max", x.abs().max())):
        got = reduce(x, stat_type, "pertensor", per_batch=True)
        assert got.shape == (1,)
        assert got.item() == ref.item()
    # Quantiles and per-channel statistics ignore it (POT forces inplace off / reduces the same axes).
    torch.testing.assert_close(
        reduce(x, "quantile", "pertensor", q=0.9, per_batch=True), reduce(x, "quantile", "pertensor", q=0.9)
    )
    torch.testing.assert_close(reduce(x, "max", "perchannel", per_batch=True), reduce(x, "max", "perchannel"))


def test_minmax_matches_reduce() -> None:
    x = torch.randn(3, 4, 5)
    mn, mx = minmax(x, "perchannel")
    torch.testing.assert_close(mn, x.amin(dim=2))
    torch.testing.assert_close(mx, x.amax(dim=2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_inputs(dtype: torch.dtype) -> None:
    x = torch.randn(2, 3, 40).to(dtype)
    ref = np.quantile(x.float().numpy().astype(np.float64).reshape(2, -1), 0.3, axis=1)
    np.testing.assert_allclose(reduce(x, "quantile", "pertensor", q=0.3).numpy(), ref, rtol=1e-12)
    assert reduce(x, "max", "pertensor").dtype == torch.promote_types(dtype, torch.float32)


def test_mean_is_accumulated_in_float64() -> None:
    # float32 accumulation gives 2**24 + 1 == 2**24, so a mean of 0 instead of 1/3; a near-zero
    # channel mean needs this accuracy to meet POT's numbers at rtol 1e-5 (golden per-channel mean).
    x = torch.tensor([[[2.0**24, 1.0, -(2.0**24)]]])
    assert reduce(x, "mean", "perchannel").item() == pytest.approx(1 / 3, rel=1e-12)
    assert reduce(x, "mean", "pertensor").item() == pytest.approx(1 / 3, rel=1e-12)


def test_errors_name_the_problem() -> None:
    x = torch.randn(2, 3)
    with pytest.raises(ConfigError, match="allowed"):
        reduce(x, "median", "pertensor")
    with pytest.raises(ConfigError, match="granularity"):
        reduce(x, "max", "perlayer")
    with pytest.raises(ConfigError, match="q in"):
        reduce(x, "quantile", "pertensor")


@pytest.mark.parametrize("stat_type", TYPES)
def test_weight_stat(stat_type: str) -> None:
    w = np.random.default_rng(1).standard_normal((3, 4, 2, 2)).astype(np.float32)
    q = 1e-4 if "quantile" in stat_type else None
    per_tensor = weight_stat(torch.from_numpy(w), stat_type, "pertensor", q=q)
    assert per_tensor.shape == () and per_tensor.dtype == np.float64
    np.testing.assert_allclose(per_tensor, _np_stat(w.ravel(), stat_type, 0, q), rtol=1e-12)
    out0 = weight_stat(w, stat_type, "perchannel", q=q)
    np.testing.assert_allclose(out0, _np_stat(w.reshape(3, -1), stat_type, 1, q), rtol=1e-12)
    # ConvTranspose weights [Cin, Cout, ...]: the output channel is axis 1.
    out1 = weight_stat(w, stat_type, "perchannel", axis=1, q=q)
    np.testing.assert_allclose(
        out1, _np_stat(np.swapaxes(w, 0, 1).reshape(4, -1), stat_type, 1, q), rtol=1e-12
    )


@pytest.mark.parametrize("stat_type", ["min", "max", "abs_max"])
def test_weight_extremes_are_numpys_bit_for_bit(stat_type: str) -> None:
    """The float32 torch path of min / max / abs_max gives NumPy's float64 result exactly, signed zeros and NaN
    included (a channel whose extreme is a tie of -0.0 and 0.0)."""
    w = torch.from_numpy(np.random.default_rng(2).standard_normal((5, 3, 3)).astype(np.float32))
    w[1] = 0.0
    w[1, 0, 0] = -0.0
    w[2] = -0.0
    w[3, 1, 2] = float("nan")
    for granularity, axis in (("pertensor", 0), ("perchannel", 0), ("perchannel", 1)):
        got = weight_stat(w, stat_type, granularity, axis=axis)
        v = np.abs(w.numpy().astype(np.float64)) if stat_type == "abs_max" else w.numpy().astype(np.float64)
        fn = np.min if stat_type == "min" else np.max
        want = np.asarray(fn(np.moveaxis(v, axis, 0).reshape(v.shape[axis], -1), axis=1) if granularity ==
                          "perchannel" else fn(v), dtype=np.float64)
        assert got.shape == want.shape and got.dtype == np.float64
        assert np.array_equal(np.signbit(got), np.signbit(want)) and np.array_equal(got, want, equal_nan=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("stat_type", TYPES)
def test_cuda_matches_cpu(stat_type: str) -> None:
    x = torch.randn(4, 8, 30, 30)
    q = 1e-4 if "quantile" in stat_type else None
    for granularity in ("pertensor", "perchannel"):
        got = reduce(x.cuda(), stat_type, granularity, q=q)
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), reduce(x, stat_type, granularity, q=q), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("largest", [False, True])
def test_extremes_candidate_search_equals_topk(largest: bool) -> None:
    """The strided-block candidate search returns topk's sorted values exactly: random rows, rows of few distinct
    values (ties across blocks), a leftover tail, +-inf, and k up to the fallback bound."""
    g = torch.Generator().manual_seed(7)
    for trial in range(60):
        n = int(torch.randint(16 * 8, 6000, (1,), generator=g))
        rows = torch.randn(3, 5, n, generator=g)
        if trial % 3 == 1:
            rows = torch.randint(-2, 3, (3, 5, n), generator=g).float()
        if trial % 3 == 2:
            rows[0, 0, :7] = float("inf")
            rows[1, 1, -5:] = -float("inf")
        for k in (1, 2, 3, n // 16 // 8):
            got = reducers._extremes(rows, k, largest)
            want = torch.topk(rows, k, dim=-1, largest=largest, sorted=True).values
            assert torch.equal(got, want), (trial, n, k)


def test_extremes_of_strided_rows() -> None:
    x = torch.randn(2, 3000, 6).transpose(1, 2)  # per-channel rows of a channel-last tensor: not contiguous
    got = reducers._extremes(x, 3, largest=False)
    assert torch.equal(got, torch.topk(x, 3, dim=-1, largest=False).values)


def test_short_rows_through_float64_are_the_float32_extremes() -> None:
    """The float64 route the calibration may time as faster gives the same values as float32 amin/amax."""
    x = torch.randn(2, 300, 7, 7)
    x[0, 0, 0, :3] = torch.tensor([float("inf"), -float("inf"), -0.0])
    x[1, 5] = 0.0
    shape = torch.Size((2, 300, 49))
    mn, mx = reducers._rows_via_float64(shape)(x)
    assert mn.dtype == mx.dtype == torch.float32
    assert torch.equal(mn, x.view(shape).amin(-1)) and torch.equal(mx, x.view(shape).amax(-1))
    tuned = minmax_fn(x, "perchannel", tune=True)(x)  # whichever route was faster here
    assert torch.equal(tuned[0], mn) and torch.equal(tuned[1], mx)


def test_one_aminmax_per_sample_gives_the_rows_extremes() -> None:
    """The per-sample aminmax loop the calibration may time as faster on large samples gives amin/amax's values."""
    x = torch.randn(4, 3, 150, 150)
    x[1, 0, 0, :2] = torch.tensor([float("inf"), -float("inf")])
    shape = torch.Size((4, 3 * 150 * 150))
    mn, mx = reducers._per_row_aminmax(shape)(x)
    assert torch.equal(mn, x.view(shape).amin(-1)) and torch.equal(mx, x.view(shape).amax(-1))
    tuned = minmax_fn(x, "pertensor", tune=True)(x)  # whichever route was faster here
    assert torch.equal(tuned[0], mn) and torch.equal(tuned[1], mx)


@pytest.mark.parametrize("stat_type, granularity, q, per_batch, shape", [
    ("mean", "perchannel", None, False, (1, 6, 5, 5)),  # summed in float64
    ("mean", "perchannel", None, False, (2, 4, 130, 130)),  # summed in float32, divided in float64
    ("mean", "pertensor", None, True, (3, 4, 5)),  # one value per batch: [1]
    ("mean", "pertensor", None, False, (1, 7)),
    ("quantile", "perchannel", 1e-4, False, (2, 5, 7, 7)),  # the 2 smallest per row
    ("quantile", "perchannel", 0.9999, False, (1, 3, 120, 110)),  # 3 largest of 13200
    ("abs_quantile", "pertensor", 0.999, False, (2, 3, 10, 20)),
    ("quantile", "pertensor", 0.25, False, (2, 40)),  # many order statistics: not deferred
])
def test_deferred_parts_give_the_stacked_batch_values(stat_type, granularity, q, per_batch, shape) -> None:
    """reduce_parts: the per-batch part of each batch, stacked, then finished once, is bit for bit the stack of
    reduce_fn's values (the calibration hot path defers a mean's division and a quantile's interpolation)."""
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(*shape, generator=g) * (i + 1) + 0.3 for i in range(5)]
    batches[2].view(-1)[:3] = 0.0  # ties
    fn, finish = reducers.reduce_parts(batches[0], stat_type, granularity, q=q, per_batch=per_batch)
    want = torch.stack([reduce(b, stat_type, granularity, q=q, per_batch=per_batch) for b in batches])
    parts = torch.stack([fn(b) for b in batches])
    got = parts if finish is None else finish(parts)
    assert (finish is None) == (q == 0.25)
    assert got.dtype == want.dtype == torch.float64 and got.shape == want.shape
    assert torch.equal(got, want)


@pytest.mark.parametrize("shape, granularity, per_batch, scalar", [
    ((1, 3, 4, 4), "pertensor", False, True), ((2, 3, 4, 4), "pertensor", True, True), ((5,), "pertensor", False, True),
    ((2, 3, 4, 4), "pertensor", False, False), ((1, 3, 4, 4), "perchannel", False, False),
])
def test_scalar_extremes_where_there_is_one_value(shape, granularity, per_batch, scalar) -> None:
    """minmax_fn(scalar=True) gives 0-d extremes exactly where the result is one value (one_per_batch), equal to
    minmax's [1]-shaped ones; elsewhere the same shapes as minmax. Also for a strided tensor and a large one."""
    for x in (torch.randn(*shape), torch.randn(*shape[::-1]).permute(*range(len(shape) - 1, -1, -1)),
              torch.randn(*shape).repeat_interleave(30000, dim=-1)):
        assert reducers.one_per_batch(x, granularity, per_batch) == scalar
        mn, mx = minmax_fn(x, granularity, per_batch=per_batch, scalar=True)(x)
        ref_mn, ref_mx = reducers.minmax(x, granularity, per_batch=per_batch)
        assert mn.shape == (() if scalar else ref_mn.shape)
        assert torch.equal(mn.reshape(ref_mn.shape), ref_mn) and torch.equal(mx.reshape(ref_mx.shape), ref_mx)
