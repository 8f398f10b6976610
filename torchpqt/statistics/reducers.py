"""Per-sample reductions of activations and weights (spec §5.2, §6; POT
``statistics/functions/{activations,weights}.py``).

Activations are reduced on their own device without a host sync. Min and max come from one
``aminmax`` pass (``abs_max = max(-min, max)`` is exact, so no ``|x|`` copy is made); quantiles
use NumPy's default linear interpolation between the two neighbouring order statistics, which
are found with ``topk`` (extreme quantiles touch few elements) or ``kthvalue``, never a sort.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from ..constants import GRANULARITIES, QUANTILE_TYPES, STAT_TYPES
from ..errors import ConfigError

__all__ = ["check_statistic", "minmax", "minmax_fn", "one_per_batch", "reduce", "reduce_fn", "reduce_parts",
           "weight_stat"]

# Above this many order statistics a partial sort (topk) loses to two selections (kthvalue).
_TOPK_MAX = 1024
# Up to this many elements (a tensor that stays in cache) amin + amax beat one aminmax pass on CPU (torch 2.13:
# 69 vs 11 us for 62.7k elements, 88 vs 67 us for 49k); beyond it the single pass wins. Either gives the same
# min and max (only which zero of a -0.0 / 0.0 tie is returned may differ, which compares equal).
_SMALL = 1 << 19
# Strided block length of _extremes' candidate search.
_TOPK_BLOCK = 16
# Rows up to this long may take their extremes through float64; samples this large, in batches up to _MAX_LOOP,
# may take theirs with one aminmax each (see _faster).
_SHORT_ROW = 256
_LONG_ROW = 1 << 16
_MAX_LOOP = 64
# A quantile keeps up to this many extreme values per row and batch until its block is folded (see
# _quantile_parts): at most twice the bytes of its float64 result.
_DEFERRED_EXTREMES = 4
# Up to this many elements a mean is accumulated in float64 (see _mean_parts).
_MEAN_FLOAT64_MAX = 1 << 16


def check_statistic(stat_type: str, granularity: str, q: float | None) -> None:
    """Raise :class:`ConfigError` for an unknown statistic type or granularity, or a quantile without a valid q."""
    if stat_type not in STAT_TYPES:
        raise ConfigError(f"statistic type {stat_type!r} is not supported; allowed: {', '.join(STAT_TYPES)}")
    if granularity not in GRANULARITIES:
        raise ConfigError(
            f"granularity {granularity!r} is not supported; allowed: {', '.join(GRANULARITIES)}"
        )
    if stat_type in QUANTILE_TYPES and (q is None or not 0.0 <= q <= 1.0):
        raise ConfigError(f"statistic {stat_type!r} needs a quantile level q in [0, 1], got {q!r}")


def _out_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _reduced_dims(
    x: torch.Tensor, granularity: str, channel_axis: int, per_batch: bool
) -> tuple[int, ...] | None:
    """Axes to reduce, or None where POT returns the tensor itself (per channel, rank < 3)."""
    if granularity == "perchannel":
        if x.ndim < 3:
            return None
        c = channel_axis % x.ndim
        return tuple(d for d in range(1, x.ndim) if d != c)
    if per_batch or x.ndim < 2:
        # POT: in-graph (inplace) per-tensor reductions run over ALL axes, batch included.
        return tuple(range(x.ndim))
    return tuple(range(1, x.ndim))


def _rows(x: torch.Tensor, granularity: str, channel_axis: int, per_batch: bool) -> torch.Tensor:
    """Reshape so that the last axis holds one sample's (or channel's) elements."""
    if granularity == "perchannel":
        x = x.movedim(channel_axis % x.ndim, 1)
        return x.reshape(x.shape[0], x.shape[1], -1)
    if per_batch or x.ndim < 2:
        return x.reshape(1, -1)
    return x.reshape(x.shape[0], -1)


MinMaxFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
ReduceFn = Callable[[torch.Tensor], torch.Tensor]
#: Applied once to many batches' values stacked on a new first axis (see :func:`reduce_parts`).
Finish = Callable[[torch.Tensor], torch.Tensor]


def one_per_batch(x: torch.Tensor, granularity: str, per_batch: bool) -> bool:
    """Whether a statistic of ``x`` is one value per call (shape ``[1]``): per tensor, over a batch of one sample,
    a rank < 2 tensor or per batch (``inplace_statistics``)."""
    return granularity == "pertensor" and (per_batch or x.ndim < 2 or x.shape[0] == 1)


def minmax(
    x: torch.Tensor, granularity: str, *, channel_axis: int = 1, per_batch: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample min and max in one pass (same shapes and rules as :func:`reduce`)."""
    if torch.is_grad_enabled():  # the calibration loop runs under no_grad already: enter it only when needed
        with torch.no_grad():
            return minmax(x, granularity, channel_axis=channel_axis, per_batch=per_batch)
    return minmax_fn(x, granularity, channel_axis=channel_axis, per_batch=per_batch)(x)


def minmax_fn(x: torch.Tensor, granularity: str, *, channel_axis: int = 1, per_batch: bool = False,
              tune: bool = False, scalar: bool = False) -> MinMaxFn:
    """:func:`minmax` specialized to tensors of ``x``'s shape, dtype and contiguity (the calibration hot path
    decides once per such signature and then runs only the reductions). Call it under no_grad.

    ``tune``: where two ways give the same values, time both on ``x`` and keep the faster (see
    :func:`_faster`). ``scalar``: where the result is one value (:func:`one_per_batch`), return it 0-d rather than
    shape ``[1]`` (two calls fewer per batch for a caller that stacks the values and reshapes them once)."""
    if scalar and not one_per_batch(x, granularity, per_batch):
        scalar = False
    dtype = _out_dtype(x)
    dims = _reduced_dims(x, granularity, channel_axis, per_batch)
    cast = x.dtype != dtype
    if dims is None:
        def same(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            v = t.to(dtype)
            return v, v
        return same
    if x.is_contiguous() and (granularity == "pertensor" or channel_axis % x.ndim == 1):
        fn = _rows_minmax(x, _rows(x, granularity, channel_axis, per_batch).shape, tune, scalar)
    else:
        flat = (() if scalar else (-1,)) if granularity == "pertensor" else None

        def strided(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mn, mx = t.amin(dim=dims), t.amax(dim=dims)  # two passes, still no copy of t
            return (mn.reshape(flat), mx.reshape(flat)) if flat is not None else (mn, mx)
        fn = strided
    if not cast:
        return fn

    def promoted(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mn, mx = fn(t)
        return mn.to(dtype), mx.to(dtype)
    return promoted


def _rows_minmax(x: torch.Tensor, shape: torch.Size, tune: bool, scalar: bool) -> MinMaxFn:
    """Extremes over the last axis of the contiguous ``x`` viewed as ``shape`` (its rows: no copy); 0-d for one
    row with ``scalar``."""
    if len(shape) == 2 and shape[0] == 1:  # one row: full reductions are the cheapest calls
        whole: MinMaxFn = (lambda t: (t.amin(), t.amax())) if x.numel() <= _SMALL else torch.aminmax
        if scalar:
            return whole

        def shaped(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mn, mx = whole(t)
            return mn.reshape(1), mx.reshape(1)
        return shaped

    def rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # amin + amax rather than aminmax(dim=-1): measured 10-20x faster on CPU with torch 2.13
        r = t.view(shape)
        return r.amin(dim=-1), r.amax(dim=-1)
    if not tune or x.device.type != "cpu":
        return rows
    if len(shape) == 2 and shape[-1] >= _LONG_ROW and shape[0] <= _MAX_LOOP:
        return _faster(x, rows, _per_row_aminmax(shape))
    if x.dtype == torch.float32 and shape[-1] <= _SHORT_ROW and x.numel() >= 1024:
        return _faster(x, rows, _rows_via_float64(shape))
    return rows


def _faster(x: torch.Tensor, rows: MinMaxFn, other: MinMaxFn) -> MinMaxFn:
    """``rows`` or ``other`` (the same values another way), whichever is faster on ``x``: best of 3, interleaved;
    ``other`` must win by 20%. Two cases, measured with torch 2.13 on an AVX-512 CPU: float32 min/max over short
    rows (a 7x7 map's channels) is slow on some CPUs (1152 rows of 49: 67 us, 29 us through an exact float64
    copy; rows of 36 or 64 are faster in float32), and per-sample extremes of a large batch read from memory
    twice as ``amin`` + ``amax`` but once as one ``aminmax`` per sample (``[16, 144, 56, 56]``: 1.56 ms vs
    0.97 ms; at ``[16, 1152, 7, 7]`` the loop loses)."""
    seconds = [math.inf, math.inf]
    for _ in range(3):
        for i, fn in enumerate((rows, other)):
            start = time.perf_counter()
            fn(x)
            seconds[i] = min(seconds[i], time.perf_counter() - start)
    return other if seconds[1] < 0.8 * seconds[0] else rows


def _per_row_aminmax(shape: torch.Size) -> MinMaxFn:
    """Min and max of each row of ``t.view(shape)`` (2-D), one ``aminmax`` pass per row."""
    def per_row(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [torch.aminmax(row) for row in t.view(shape)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    return per_row


def _rows_via_float64(shape: torch.Size) -> MinMaxFn:
    """Min and max over the last axis of ``t.view(shape)`` (float32), computed on a float64 copy."""
    def via_float64(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = t.view(shape).to(torch.float64)
        return d.amin(dim=-1).to(torch.float32), d.amax(dim=-1).to(torch.float32)
    return via_float64


def _lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    # numpy's _lerp, written the same way so results agree bit for bit.
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def _next_order_stat(rows: torch.Tensor, a: torch.Tensor, hi: int) -> torch.Tensor:
    """The order statistic ``hi`` given ``a`` = order statistic ``hi - 1``: two cheap passes
    instead of a second selection."""
    at_or_below = (rows <= a.unsqueeze(-1)).sum(dim=-1)
    above = rows.masked_fill(rows <= a.unsqueeze(-1), float("inf")).amin(dim=-1)
    return torch.where(at_or_below > hi, a, above)


def _extremes(rows: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """The ``k`` largest (descending) or smallest (ascending) values of each row: ``topk(rows, k, sorted=True)``'s
    values, found among few candidates where ``k`` is small next to the row.

    Each row's first ``S*g`` elements are cut into ``g`` strided blocks of :data:`_TOPK_BLOCK` (block ``j``: the
    elements ``j, j+g, j+2g, ...``; one vectorized pass gives every block's extreme). The ``k`` blocks with the
    most extreme extremes, plus the leftover tail, hold the row's ``k`` extreme values: for the ``j``-th smallest
    ``v_j`` (``j <= k``), either ``v_j`` is below the ``k``-th smallest block minimum ``m``, so every element up
    to ``v_j`` lies in a chosen block or the tail, or it is not, and the ``k`` chosen block minima are ``k``
    candidates up to ``v_j``; as candidates are a subset of the row, their ``j``-th smallest is ``v_j``. Order
    statistics are values, so this is exact, ties included. A row holding NaN (which the finiteness check of the
    calibration reports) may get other low values than topk: a block's min is then NaN."""
    n = rows.shape[-1]
    g = n // _TOPK_BLOCK
    if k * 8 > g:
        return torch.topk(rows, k, dim=-1, largest=largest, sorted=True).values
    size = _TOPK_BLOCK * g
    blocks = rows[..., :size].unflatten(-1, (_TOPK_BLOCK, g))
    ends = blocks.amax(dim=-2) if largest else blocks.amin(dim=-2)
    chosen = torch.topk(ends, k, dim=-1, largest=largest, sorted=False).indices  # [..., k]
    offsets = torch.arange(0, size, g, device=rows.device)  # each block's elements: j + offsets
    candidates = torch.gather(rows, -1, (chosen.unsqueeze(-1) + offsets).flatten(-2))
    if size < n:
        candidates = torch.cat([candidates, rows[..., size:]], dim=-1)
    return torch.topk(candidates, k, dim=-1, largest=largest, sorted=True).values


def _quantile_index(n: int, q: float) -> tuple[int, int, float]:
    """NumPy's 'linear' quantile of ``n`` values: it lies between the order statistics ``lo`` and ``hi``
    (0-based), at ``gamma`` from ``lo``."""
    idx = (n - 1) * float(q)  # numpy's virtual index for 'linear'
    lo = min(max(math.floor(idx), 0), n - 1)
    return lo, min(lo + 1, n - 1), idx - lo


def _few_extremes(n: int, lo: int, hi: int) -> tuple[int, bool, int, int] | None:
    """Where order statistics ``lo`` and ``hi`` of ``n`` are among a row's few extremes: ``(k, largest, ia, ib)``,
    they are entries ``ia`` and ``ib`` of the row's ``k`` smallest (ascending) or largest (descending) values;
    None where a selection is cheaper (more than :data:`_TOPK_MAX` values)."""
    if min(hi + 1, n - lo) > _TOPK_MAX:
        return None
    if hi + 1 <= n - lo:  # low quantile: the hi+1 smallest, ascending
        return hi + 1, False, lo, hi
    return n - lo, True, n - 1 - lo, n - 1 - hi  # high quantile: the n-lo largest, descending


def _interpolate(a: torch.Tensor, b: torch.Tensor, gamma: float) -> torch.Tensor:
    a64 = a.to(torch.float64) if a.device.type != "mps" else a.cpu().to(torch.float64)
    return _lerp(a64, b.to(a64.device, torch.float64), gamma)


def _quantile_last(rows: torch.Tensor, q: float) -> torch.Tensor:
    """np.quantile(rows, q, axis=-1) with method='linear', computed in float64."""
    n = rows.shape[-1]
    lo, hi, gamma = _quantile_index(n, q)
    few = _few_extremes(n, lo, hi)
    if few is not None:
        k, largest, ia, ib = few
        vals = _extremes(rows, k, largest=largest)
        a, b = vals[..., ia], vals[..., ib]
    else:
        a = torch.kthvalue(rows, lo + 1, dim=-1).values
        b = a if hi == lo else _next_order_stat(rows, a, hi)
    return _interpolate(a, b, gamma)


def _mean_parts(x: torch.Tensor, dims: tuple[int, ...], keep_one: bool) -> tuple[ReduceFn, Finish]:
    """Mean over ``dims`` as a sum per batch and a division once for many batches (see :func:`reduce_parts`): one
    reduction without a copy of ``x`` (a channel-last tensor is reduced along its strided axes directly), divided
    in float64. Up to :data:`_MEAN_FLOAT64_MAX` elements the sum is accumulated in float64 (a near-zero channel
    mean keeps POT's golden digits); beyond, in float32 with torch's cascade summation (measured error <= 1e-7 of
    the values' magnitude on 50k-20M element activations, where a float64 reduction of contiguous float32 data
    costs 9-28x more). Specialized to ``x``'s shape and dtype."""
    exact = x.dtype == torch.float64 or x.numel() <= _MEAN_FLOAT64_MAX
    acc = torch.float64 if exact else torch.float32
    n = math.prod(x.shape[d] for d in dims)

    def total(t: torch.Tensor) -> torch.Tensor:
        return t.sum(dim=dims, dtype=acc)

    def divide(totals: torch.Tensor) -> torch.Tensor:  # elementwise: the same values batch by batch or stacked
        out = (totals if exact else totals.to(torch.float64)) / n
        return out.reshape(out.shape[0], 1) if keep_one else out
    return total, divide


def _mean_fn(x: torch.Tensor, dims: tuple[int, ...], keep_one: bool) -> ReduceFn:
    """The mean of :func:`_mean_parts` batch by batch."""
    total, divide = _mean_parts(x, dims, keep_one)
    return lambda t: divide(total(t)[None])[0]


def reduce(
    x: torch.Tensor,
    stat_type: str,
    granularity: str,
    *,
    q: float | None = None,
    channel_axis: int = 1,
    per_batch: bool = False,
    checked: bool = False,
) -> torch.Tensor:
    """Per-sample statistic of one inference batch (spec §5.2).

    Args:
        x: the activation batch ``[B, ...]`` on any device.
        stat_type: ``min``, ``max``, ``abs_max``, ``quantile``, ``abs_quantile`` or ``mean``.
        granularity: ``pertensor`` -> ``[B]`` (``[1]`` for rank < 2); ``perchannel`` ->
            ``[B, C]`` for rank >= 3, the tensor itself (or ``|x|``) for rank < 3.
        q: quantile level, required for the quantile types.
        channel_axis: the channel axis of a per-channel statistic.
        per_batch: in-graph (``inplace_statistics``) per-tensor statistics: one value per batch,
            shape ``[1]``. Ignored by the quantile types and by per-channel statistics, as in POT.
        checked: the arguments were checked with :func:`check_statistic` already (the calibration hot path).

    Returns:
        A tensor on ``x``'s device: float64 for quantiles and means, otherwise ``x``'s float
        dtype (at least float32).
    """
    if not checked:
        check_statistic(stat_type, granularity, q)
    if torch.is_grad_enabled():  # the calibration loop runs under no_grad already: enter it only when needed
        with torch.no_grad():
            return reduce(x, stat_type, granularity, q=q, channel_axis=channel_axis, per_batch=per_batch,
                          checked=True)
    if x.requires_grad:
        x = x.detach()
    return reduce_fn(x, stat_type, granularity, q=q, channel_axis=channel_axis, per_batch=per_batch)(x)


def reduce_fn(x: torch.Tensor, stat_type: str, granularity: str, *, q: float | None = None, channel_axis: int = 1,
              per_batch: bool = False) -> ReduceFn:
    """:func:`reduce` specialized to tensors of ``x``'s shape, dtype and contiguity, for arguments checked with
    :func:`check_statistic`. Call it under no_grad, on detached tensors."""
    if stat_type in QUANTILE_TYPES:
        per_batch = False  # POT: get_tensor_statistics forces inplace off for quantiles
    if stat_type in ("min", "max", "abs_max"):
        pair = minmax_fn(x, granularity, channel_axis=channel_axis, per_batch=per_batch)
        if stat_type == "abs_max":
            def abs_max(t: torch.Tensor) -> torch.Tensor:
                mn, mx = pair(t)
                return torch.maximum(-mn, mx)
            return abs_max
        side = 0 if stat_type == "min" else 1
        return lambda t: pair(t)[side]
    is_abs = stat_type == "abs_quantile"
    dims = _reduced_dims(x, granularity, channel_axis, per_batch)
    if dims is None:
        return lambda t: (t.abs() if is_abs else t).to(torch.float64)
    if stat_type == "mean":
        return _mean_fn(x, dims, keep_one=len(dims) == x.ndim)
    return functools.partial(_quantile, granularity=granularity, channel_axis=channel_axis, q=q, is_abs=is_abs)


def reduce_parts(x: torch.Tensor, stat_type: str, granularity: str, *, q: float | None = None,
                 channel_axis: int = 1, per_batch: bool = False) -> tuple[ReduceFn, Finish | None]:
    """:func:`reduce_fn` for a caller that stacks many batches' values (the calibration hot path): ``fn`` per
    batch, then ``finish`` once on the values stacked on a new first axis gives the stack of :func:`reduce_fn`'s
    values, bit for bit. A mean's float64 division by its element count and a quantile's pick and interpolation of
    its two order statistics move to ``finish`` (elementwise, so the same values; one call per block instead of
    one per batch); ``finish`` is None where nothing is deferred."""
    if stat_type == "mean":
        dims = _reduced_dims(x, granularity, channel_axis, per_batch)
        if dims is not None:
            return _mean_parts(x, dims, keep_one=len(dims) == x.ndim)
    elif stat_type in QUANTILE_TYPES and _reduced_dims(x, granularity, channel_axis, False) is not None:
        parts = _quantile_parts(x, granularity, channel_axis, q, stat_type == "abs_quantile")
        if parts is not None:
            return parts
    return reduce_fn(x, stat_type, granularity, q=q, channel_axis=channel_axis, per_batch=per_batch), None


def _quantile_parts(x: torch.Tensor, granularity: str, channel_axis: int, q: float, is_abs: bool
                    ) -> tuple[ReduceFn, Finish] | None:
    """A quantile as each row's few extreme values per batch (:func:`_extremes`) and, once for the stacked
    batches, the pick of its two order statistics and their float64 interpolation (elementwise: the same values);
    None where that keeps more than :data:`_DEFERRED_EXTREMES` values per row (pending memory)."""
    n = _rows(x, granularity, channel_axis, False).shape[-1]
    lo, hi, gamma = _quantile_index(n, q)
    few = _few_extremes(n, lo, hi)
    if few is None or few[0] > _DEFERRED_EXTREMES:
        return None
    k, largest, ia, ib = few

    def extremes(t: torch.Tensor) -> torch.Tensor:
        rows = _rows(t, granularity, channel_axis, False)
        return _extremes(rows.abs() if is_abs else rows, k, largest=largest)

    def interpolate(stacked: torch.Tensor) -> torch.Tensor:
        return _interpolate(stacked[..., ia], stacked[..., ib], gamma)
    return extremes, interpolate


def _quantile(t: torch.Tensor, *, granularity: str, channel_axis: int, q: float, is_abs: bool) -> torch.Tensor:
    rows = _rows(t, granularity, channel_axis, False)
    return _quantile_last(rows.abs() if is_abs else rows, q)


def weight_stat(
    w: torch.Tensor | np.ndarray, stat_type: str, granularity: str, *, axis: int = 0, q: float | None = None
) -> np.ndarray:
    """Statistic of a weight tensor (spec §4.5, §5.2; POT ``statistics/functions/weights.py``).

    Args:
        w: the (folded) weight; cast to float32 first, as POT does.
        stat_type: ``min``, ``max``, ``abs_max``, ``quantile``, ``abs_quantile`` or ``mean``.
        granularity: ``pertensor`` (one value) or ``perchannel`` (one value per slice along ``axis``).
        axis: the output-channel axis: 0, or 1 for ConvTranspose weights ``[Cin, Cout, ...]``.
        q: quantile level, required for the quantile types.

    Returns:
        float64 array: shape ``()`` per tensor, ``[C]`` per channel.
    """
    check_statistic(stat_type, granularity, q)
    if isinstance(w, torch.Tensor) and stat_type in ("min", "max", "abs_max") and w.numel():
        return _weight_extreme(w, stat_type, granularity, axis)
    if isinstance(w, torch.Tensor):
        w = w.detach().to("cpu", torch.float32).numpy()
    # POT casts to float32; numpy 1.26 (POT's) then interpolates quantiles in float64.
    v = np.asarray(w, dtype=np.float32).astype(np.float64)
    if stat_type in ("abs_max", "abs_quantile"):
        v = np.abs(v)
    if granularity == "perchannel" and v.ndim > 0:
        v = np.moveaxis(v, axis, 0).reshape(v.shape[axis], -1)
        red_axis: int | None = 1
    else:
        red_axis = None
    if stat_type in QUANTILE_TYPES:
        out = np.quantile(v, q, axis=red_axis)
    else:
        fn = {"min": np.min, "max": np.max, "abs_max": np.max, "mean": np.mean}[stat_type]
        out = fn(v, axis=red_axis)
    return np.asarray(out, dtype=np.float64)


def _weight_extreme(w: torch.Tensor, stat_type: str, granularity: str, axis: int) -> np.ndarray:
    """:func:`weight_stat`'s min / max / abs_max in float32 torch (the extreme of float32 values is one of them,
    so casting afterwards gives NumPy's float64 result) instead of a float64 copy of the whole weight. Where the
    extreme is zero NumPy decides the sign of zero (the two libraries return different zeros of a tie)."""
    t = w.detach().to("cpu", torch.float32)
    if stat_type == "abs_max":
        t = t.abs()
    per_channel = granularity == "perchannel" and t.dim() > 0
    rows = t.movedim(axis, 0).reshape(t.shape[axis], -1) if per_channel else t.reshape(1, -1)
    out = (rows.amin(dim=1) if stat_type == "min" else rows.amax(dim=1)).to(torch.float64).numpy()
    zero = np.flatnonzero(out == 0)
    if zero.size:
        fn = np.min if stat_type == "min" else np.max
        out[zero] = fn(rows[torch.from_numpy(zero)].numpy().astype(np.float64), axis=1)
    return out if per_channel else out.reshape(())
