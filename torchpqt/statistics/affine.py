"""Statistics of a tensor that a per-channel increasing affine map changed, derived from per-sample
statistics of the tensor before the change (channel alignment without a second calibration pass).

ActivationChannelAlignment leaves every tensor of the float model as it was (up to float32 rounding) except
each aligned tensor ``y`` (a producer's output, read only by its consumer), which becomes, channel by channel
along axis 1, ``y'_c = a_c * y_c + b_c`` with every ``a_c > 0``. Per sample ``i`` and channel ``c``:

* ``min'_ic = a_c min_ic + b_c`` and ``max'_ic = a_c max_ic + b_c`` (``a_c > 0`` keeps the order);
  ``abs_max' = max(-min', max')``;
* ``Q'_ic(q) = a_c Q_ic(q) + b_c``: the linear interpolation between two order statistics commutes with an
  increasing affine map;
* ``mean'_ic = a_c m_ic + b_c``;
* per tensor: the min / max over the channels of the per-channel values, the mean of the per-channel means
  (every channel holds as many elements); with ``inplace_statistics`` over the batch's samples too.

A per-tensor quantile and the ``abs_quantile`` types mix channels that moved differently: they are not
derivable (:func:`underivable` says why), nor is a per-channel statistic on another axis.

The source of a derivation is a statistics request on ``y`` with :func:`source_specs` (per-channel reductions
kept per sample by the ``median`` aggregator, batch order) and the batch shapes. :func:`derived_entries` then
builds the store entries of a request on ``y'`` from the store alone, so saved, merged (distributed) and cached
stores derive the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch

from ..errors import CalibrationError, TorchPQTError
from .collector import TensorStatistics
from .estimators import StatSpec, statistic_key

__all__ = ["SOURCE_AGGREGATOR", "derive", "derived_entries", "source_specs", "underivable"]

#: Keeps every per-sample value (``samples``, ``[N, C]`` float64 in batch order) and merges by concatenation.
SOURCE_AGGREGATOR = "median"

_EXTREMES = ("min", "max", "abs_max")
_MIN = ("min", None, "perchannel")
_MAX = ("max", None, "perchannel")
_MEAN = ("mean", None, "perchannel")


def underivable(spec: StatSpec, channel_axis: int = 1) -> str | None:
    """Why ``spec`` on an affinely changed tensor cannot be derived from the unchanged one, or None if it can."""
    if spec.type == "abs_quantile":
        return f"{spec.type} ({spec.granularity}) mixes the signs of values the alignment shifts"
    if spec.type == "quantile" and spec.granularity == "pertensor":
        return "a per-tensor quantile mixes channels the alignment scales differently"
    if spec.type not in (*_EXTREMES, "mean", "quantile"):
        return f"statistic type {spec.type!r} has no derivation"
    if spec.granularity == "perchannel" and channel_axis != 1:
        return f"a per-channel statistic on axis {channel_axis} (the alignment works on axis 1)"
    return None


def _needs(reducer_key: tuple) -> tuple[tuple, ...]:
    """The per-channel source reductions one derived reduction reads."""
    stat_type, q, _ = reducer_key
    if stat_type in _EXTREMES:
        return (_MIN, _MAX)
    if stat_type == "mean":
        return (_MEAN,)
    return (("quantile", q, "perchannel"),)


def source_specs(specs: Iterable[StatSpec]) -> tuple[StatSpec, ...]:
    """The per-channel, per-sample statistics of the unchanged tensor that derive every one of ``specs``
    (all derivable), each kept by :data:`SOURCE_AGGREGATOR`."""
    out: dict[tuple, StatSpec] = {}
    for spec in specs:
        for key in _needs(spec.reducer_key):
            if key in out:
                continue
            stat_type, _, _ = key
            if stat_type == "quantile":  # the same side and tail probability: the same q, bit for bit
                out[key] = StatSpec(spec.side, "quantile", SOURCE_AGGREGATOR, "perchannel",
                                    outlier_prob=spec.outlier_prob)
            else:
                out[key] = StatSpec("min" if stat_type == "min" else "max", stat_type, SOURCE_AGGREGATOR,
                                    "perchannel")
    return tuple(out[k] for k in sorted(out, key=repr))


def derive(reducer_key: tuple, values: Mapping[tuple, torch.Tensor], a: torch.Tensor, b: torch.Tensor, *,
           per_batch: bool = False) -> torch.Tensor:
    """One batch's per-sample reduction ``reducer_key`` of ``y' = a * y + b`` (float64).

    Args:
        reducer_key: ``(type, q, granularity)`` as the collector names a reduction (``StatSpec.reducer_key``).
        values: the batch's per-channel reductions of ``y``, ``[B, C]`` each, by reducer key
            (``("min", None, "perchannel")``, ``max``, ``mean``, ``("quantile", q, "perchannel")``).
        a, b: ``[C]``, every ``a > 0``.
        per_batch: ``inplace_statistics``: a per-tensor min / max / abs_max / mean is one value for the whole
            batch (shape ``[1]``), as the collector reduces it.

    Returns:
        The shape the collector gives on ``y'``: ``[B, C]`` per channel, ``[B]`` per tensor, ``[1]`` per batch.
    """
    stat_type, q, granularity = reducer_key
    if stat_type == "quantile" and granularity == "perchannel":
        return a * values[("quantile", q, "perchannel")] + b
    if stat_type == "mean":
        m = a * values[_MEAN] + b
        if granularity == "perchannel":
            return m
        return m.mean().reshape(1) if per_batch else m.mean(dim=1)
    if stat_type in _EXTREMES:
        mn, mx = a * values[_MIN] + b, a * values[_MAX] + b
        if granularity == "pertensor":
            mn, mx = (mn.amin().reshape(1), mx.amax().reshape(1)) if per_batch else (mn.amin(dim=1), mx.amax(dim=1))
        return mn if stat_type == "min" else mx if stat_type == "max" else torch.maximum(-mn, mx)
    raise TorchPQTError(f"internal: statistic {reducer_key!r} cannot be derived")


def _samples(store, source: str, key: tuple) -> torch.Tensor:
    state = store.get((source, statistic_key(key, SOURCE_AGGREGATOR)))
    if state is None:
        raise TorchPQTError(f"statistic {statistic_key(key, SOURCE_AGGREGATOR)!r} of {source!r} is not in the "
                            "statistics store (it was collected for another config); calibrate again with this config")
    return state["samples"].to(torch.float64)


def derived_entries(store, request, source: str, a, b) -> dict:
    """The store entries ``request`` (a :class:`~torchpqt.observer.StatisticRequest` on the changed tensor)
    would have collected, from the statistics of its ``source`` point in ``store`` and the map ``(a, b)``.

    Each batch's derived reductions feed a fresh :class:`TensorStatistics` in the recorded batch order, as a
    statistics cache replays recorded reductions. The batch shapes (when ``request.shapes``) are the source's.

    Raises:
        TorchPQTError: the store lacks the source's statistics or batch shapes.
        CalibrationError: a derived statistic is not finite.
    """
    from ..observer import batch_shapes, store_entries  # observer imports the statistics package

    shapes = batch_shapes(store, source)
    rank = store.rank(source)
    if rank is not None and rank < 3:
        raise TorchPQTError(f"internal: {source!r} has rank {rank}; per-channel reductions need rank >= 3")
    a = torch.as_tensor(np.asarray(a, dtype=np.float64))
    b = torch.as_tensor(np.asarray(b, dtype=np.float64))
    stats = TensorStatistics(request.specs, channel_axis=request.channel_axis, inplace=request.inplace)
    keys = stats.reducer_keys()
    sizes = [int(s[0]) for s in shapes]
    parts = {}
    for key in {k for r in keys for k in _needs(r)}:
        samples = _samples(store, source, key)
        if samples.shape[0] != sum(sizes) or samples.shape[-1] != a.shape[0]:
            raise TorchPQTError(f"statistics of {source!r}: {tuple(samples.shape)} per-sample values for batches "
                                f"of {sizes} samples and {a.shape[0]} channels")
        parts[key] = torch.split(samples, sizes)
    for i in range(len(sizes)):
        values = {k: v[i] for k, v in parts.items()}
        stats.feed({k: derive(k, values, a, b, per_batch=request.inplace) for k in keys})
    bad = stats.first_nonfinite_batch()
    if bad is not None:
        raise CalibrationError(f"statistics point {request.point!r} (derived from {source!r} after channel "
                               f"alignment) is not finite from calibration batch {bad} (counting from 0) on: NaN or "
                               "Inf in the calibration data or the model's activations")
    return store_entries(request.point, stats, rank, shapes if request.shapes else None)
