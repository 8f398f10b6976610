"""Cross-sample aggregators: reduce the per-batch statistics of the calibration subset to one
value or one value per channel (spec §5.3, POT ``statistics/functions/aggregation.py``).

Each aggregator takes the per-batch statistics (``[B]`` per tensor, ``[B, C]`` per channel, or
``[1]`` for in-graph per-batch statistics) through :meth:`Aggregator.update` and gives the
result as a float64 NumPy array from :meth:`Aggregator.result`.

* ``mean``, ``max``, ``min`` and ``batch_mean`` keep their state on the statistic's device, so calibration
  never waits on a device-to-host copy; ``min``/``max`` hold one running extreme, ``mean``/``batch_mean`` each
  batch's term (a number per batch and channel, what merges in rank order need) and sum them in batch order
  when the state is read.
* :meth:`Aggregator.update_stacked` takes many batches of equal shape at once (the collector folds its
  pending batches in blocks); the state is bitwise the one of feeding them one by one.
* ``median``, ``mean_no_outliers``, ``median_no_outliers`` and ``hl_estimator`` keep the reduced
  per-sample values (a few numbers per sample, never activations) and concatenate them at the
  end, so any subset size works (POT crashes when ``stat_subset_size % stat_batch_size != 0``).
* ``hl_estimator`` is exact, O(N^2) in the number of samples like POT, evaluated in channel
  chunks; fine up to a few thousand samples.

:meth:`Aggregator.state` gives what an aggregator holds as a plain dict of CPU tensors and ints (the
statistics store keeps these); :func:`finalize` turns a state into the result and :func:`merge` combines
the states of two parts of the data (other processes, other shards), so a result can be computed from
saved, merged states exactly as from one run.
"""

from __future__ import annotations

import abc
from typing import Any, Protocol

import numpy as np
import torch

from ..constants import STAT_AGGREGATORS
from ..errors import ConfigError, TorchPQTError

__all__ = ["AGGREGATORS", "Aggregator", "finalize", "make_aggregator", "merge"]

# POT: no_outliers_estimator(alpha=0.01)
_OUTLIER_ALPHA = 0.01
# Elements of the pairwise-sum matrix evaluated at once by hl_estimator (32 MiB of float64).
_HL_CHUNK_ELEMENTS = 1 << 22


class Aggregator(Protocol):
    """Online reduction of per-batch statistics."""

    def update(self, batch_stat: torch.Tensor | np.ndarray) -> None: ...

    def update_stacked(self, stacked: torch.Tensor) -> None: ...

    def result(self) -> np.ndarray: ...

    def state(self) -> dict[str, Any] | None: ...


def _as_tensor(batch_stat: torch.Tensor | np.ndarray) -> torch.Tensor:
    # hot path (once per observer per batch): avoid needless conversions
    if isinstance(batch_stat, torch.Tensor):
        t = batch_stat.detach() if batch_stat.requires_grad else batch_stat
    else:
        t = torch.as_tensor(batch_stat)
    if t.device.type == "mps":  # no float64 there
        t = t.cpu()
    if t.dtype != torch.float64:
        t = t.to(torch.float64)
    return t if t.dim() else t.reshape(1)


def _stackable(t: torch.Tensor) -> bool:
    """Whether the block fast paths apply to per-batch statistics stacked as ``t`` (``[K, *batch_stat]``)."""
    return t.dim() >= 2 and not t.requires_grad and t.device.type != "mps"


def _sequential_sum(terms: torch.Tensor) -> torch.Tensor:
    """``terms[0] + terms[1] + ...`` added one by one in float64 on the CPU (cumsum adds in order), as a running
    ``state += term`` would: bitwise the same on any device the terms came from."""
    return torch.cumsum(terms.to("cpu", torch.float64), dim=0)[-1]


def _snapshot(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy of a running state (updated in place by later batches, so never the state itself)."""
    return t.to("cpu", copy=True)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


class _Online(abc.ABC):
    """Common part of the aggregators: batches in, a state out. A subclass defines :meth:`_update_block` (``K``
    batches of one shape, stacked) and :meth:`state`."""

    name = ""

    def __init__(self) -> None:
        self._count = 0
        # mean / batch_mean: each batch's term of the sum, so that a merge adds them in one run's order;
        # the sample aggregators: every sample's value
        self._parts: list[torch.Tensor] = []

    def _empty(self) -> TorchPQTError:
        return TorchPQTError(
            f"aggregator {self.name!r} got no statistics: no calibration batch reached this tensor; "
            "check that the calibration data runs through it"
        )

    def result(self) -> np.ndarray:
        state = self.state()
        if state is None:
            raise self._empty()
        return finalize(state)

    def update(self, batch_stat: torch.Tensor | np.ndarray) -> None:
        if isinstance(batch_stat, torch.Tensor) and batch_stat.dim() and _stackable(batch_stat[None]):
            self.update_stacked(batch_stat[None])
        else:
            self._update_one(batch_stat)

    def update_stacked(self, stacked: torch.Tensor) -> None:
        """``K`` batches' statistics of one shape, stacked on a new first axis, in batch order."""
        if not _stackable(stacked):
            for t in stacked:
                self._update_one(t)
            return
        self._update_block(stacked)

    def _update_one(self, batch_stat) -> None:  # a statistic the block path cannot take (mps, 0-d, numpy)
        self._update_block(_as_tensor(batch_stat)[None])

    @abc.abstractmethod
    def _update_block(self, stacked: torch.Tensor) -> None:
        """Take ``K`` batches' statistics stacked as ``[K, *batch_stat]`` (float64 conversion is the subclass's)."""

    @abc.abstractmethod
    def state(self) -> dict[str, Any] | None:
        """What the aggregator holds (see :func:`finalize` and :func:`merge`), or None before any batch."""


class _Mean(_Online):
    """POT: aggregation.py::mean, the unweighted mean of per-batch means."""

    name = "mean"

    def _update_block(self, stacked: torch.Tensor) -> None:
        # POT quirk kept on purpose: a short last batch weighs as much as a full one.
        if stacked.shape[1] == 1:  # batches of one: a float64 sum of one row is its mean bit for bit
            terms = stacked.sum(dim=1, dtype=torch.float64)
        else:  # each batch's float64 mean over its samples, computed as for one batch alone
            terms = torch.stack([t.to(torch.float64).mean(dim=0) for t in stacked])
        self._parts.append(terms)  # each batch's term, for merges in order (distributed calibration)
        self._count += len(terms)

    def state(self) -> dict[str, Any] | None:
        if not self._parts:
            return None
        values = torch.cat(self._parts).cpu()
        return {"aggregator": self.name, "sum": _sequential_sum(values), "batches": self._count,
                "batch_values": values}


class _Extreme(_Online):
    """POT: aggregation.py::amax / amin, the extreme over all batches and samples."""

    def __init__(self, largest: bool) -> None:
        super().__init__()
        self._state: torch.Tensor | None = None  # the running extreme, float64
        self._largest = largest
        self.name = "max" if largest else "min"

    def _update_block(self, stacked: torch.Tensor) -> None:
        rows = stacked.flatten(0, 1)  # every sample of every batch
        m = rows.amax(dim=0) if self._largest else rows.amin(dim=0)  # exact: the extreme is one of them
        if self._state is None:
            self._state = m.to(torch.float64, copy=True)  # its own tensor: later blocks update it in place
        elif self._largest:
            torch.maximum(self._state, m, out=self._state)
        else:
            torch.minimum(self._state, m, out=self._state)
        self._count += len(stacked)

    def state(self) -> dict[str, Any] | None:
        if self._state is None:
            return None
        return {"aggregator": self.name, "value": _snapshot(self._state), "batches": self._count}


class _BatchMean(_Online):
    """POT: aggregation.py::batch_mean, element-wise mean over batches, keeping the batch axis."""

    name = "batch_mean"

    def _update_block(self, stacked: torch.Tensor) -> None:
        terms = stacked.to(torch.float64)
        if self._parts and self._parts[0].shape[1:] != terms.shape[1:]:
            raise ConfigError(
                f"aggregator 'batch_mean' needs equal batch shapes, got {tuple(self._parts[0].shape[1:])} then "
                f"{tuple(terms.shape[1:])}; make stat_subset_size a multiple of stat_batch_size"
            )
        self._parts.append(terms)
        self._count += len(terms)

    def state(self) -> dict[str, Any] | None:
        if not self._parts:
            return None
        values = torch.cat(self._parts).cpu()
        return {"aggregator": self.name, "sum": _sequential_sum(values), "batches": self._count,
                "batch_values": values}


class _Samples(_Online):
    """Aggregators that need every per-sample value: they keep the reduced values only."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def _update_block(self, stacked: torch.Tensor) -> None:
        self._parts.append(stacked.flatten(0, 1).to(torch.float64))  # the samples of every batch, in order
        self._count += len(stacked)

    def state(self) -> dict[str, Any] | None:
        if not self._parts:
            return None
        samples = torch.cat([p.to(self._parts[0].device) for p in self._parts], dim=0).cpu()
        return {"aggregator": self.name, "samples": samples, "batches": self._count}


def _median(x: np.ndarray) -> np.ndarray:
    # POT: np.median(X, axis=(0, 1)) over [batches, batch, (C)]; same as over all samples.
    return np.asarray(np.median(x, axis=0), dtype=np.float64)


def _no_outliers(x: np.ndarray, base) -> np.ndarray:
    """POT: no_outliers_estimator: drop samples outside [Q(1%), Q(99%)] per channel, then `base`."""
    x = x.reshape(x.shape[0], -1)  # per tensor [N] -> [N, 1]: POT returns shape [1] there
    low = np.quantile(x, _OUTLIER_ALPHA, axis=0)
    high = np.quantile(x, 1 - _OUTLIER_ALPHA, axis=0)
    out = np.empty(x.shape[1], dtype=np.float64)
    for c in range(x.shape[1]):
        col = x[:, c]
        out[c] = base(col[(col >= low[c]) & (col <= high[c])])
    return out


def _hl_estimator(x: np.ndarray) -> np.ndarray:
    """POT: hodges_lehmann_mean: 0.5 * median of x_i + x_j over strict pairs i > j, per channel.

    Per tensor the result is a scalar, per channel ``[C]`` (POT's shapes). With a single sample
    POT returns NaN (median of no pairs); we return that sample instead.
    """
    per_tensor = x.ndim == 1
    x = x.reshape(x.shape[0], -1)
    n, channels = x.shape
    if n == 1:
        out = x[0].copy()
    else:
        i, j = np.tril_indices(n, -1)
        out = np.empty(channels, dtype=np.float64)
        step = max(1, _HL_CHUNK_ELEMENTS // len(i))
        for c0 in range(0, channels, step):
            block = x[:, c0 : c0 + step]
            out[c0 : c0 + step] = 0.5 * np.median(block[i] + block[j], axis=0)
    return out.reshape(()) if per_tensor else out


_SAMPLE_FUNCTIONS = {
    "median": _median,
    "mean_no_outliers": lambda x: _no_outliers(x, np.mean),
    "median_no_outliers": lambda x: _no_outliers(x, np.median),
    "hl_estimator": _hl_estimator,
}

AGGREGATORS = STAT_AGGREGATORS
assert set(AGGREGATORS) == {"mean", "max", "min", "batch_mean", *_SAMPLE_FUNCTIONS}


def finalize(state: dict[str, Any]) -> np.ndarray:
    """The aggregated statistic (float64) from an aggregator's :meth:`~Aggregator.state`."""
    name = state["aggregator"]
    if name == "mean":
        return _to_numpy(state["sum"] / state["batches"])
    if name in ("max", "min"):
        return _to_numpy(state["value"])
    if name == "batch_mean":
        return _to_numpy(state["sum"] / state["batches"])[None]
    return _SAMPLE_FUNCTIONS[name](_to_numpy(state["samples"]))


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The state of one aggregator that saw the batches of ``a`` and then those of ``b``.

    Extremes and kept samples merge exactly. ``mean`` and ``batch_mean`` states keep each batch's term
    (``batch_values``): the merged sum continues ``a``'s sum with ``b``'s terms one by one, the float64 adds of
    one run over both parts in that order, so the merged mean is bitwise one run's. States without the terms
    (stores saved by an older torchpqt) add their sums: equal up to the float64 summation order.

    Raises:
        TorchPQTError: the states come from different aggregators or shapes.
    """
    name = a["aggregator"]
    if b["aggregator"] != name:
        raise TorchPQTError(f"cannot merge a {name!r} statistic with a {b['aggregator']!r} one")
    out = {**a, "batches": a["batches"] + b["batches"]}
    if name in ("max", "min"):
        out["value"] = torch.maximum(a["value"], b["value"]) if name == "max" else torch.minimum(a["value"], b["value"])
    elif name in ("mean", "batch_mean"):
        if a["sum"].shape != b["sum"].shape:
            raise TorchPQTError(f"cannot merge {name!r} statistics of shapes {tuple(a['sum'].shape)} and "
                                f"{tuple(b['sum'].shape)}")
        if "batch_values" in a and "batch_values" in b:
            out["sum"] = _sequential_sum(torch.cat([a["sum"][None], b["batch_values"]]))
            out["batch_values"] = torch.cat([a["batch_values"], b["batch_values"]])
        else:
            out["sum"] = a["sum"] + b["sum"]
            out.pop("batch_values", None)
    else:
        out["samples"] = torch.cat([a["samples"], b["samples"]], dim=0)
    return out


def make_aggregator(name: str) -> Aggregator:
    """Create a fresh aggregator.

    Args:
        name: one of ``mean``, ``max``, ``min``, ``median``, ``mean_no_outliers``,
            ``median_no_outliers``, ``hl_estimator``, ``batch_mean``.

    Returns:
        An object with ``update(batch_stat)`` and ``result() -> np.ndarray`` (float64).

    Raises:
        ConfigError: the name is not a known aggregator.
    """
    if name == "mean":
        return _Mean()
    if name in ("max", "min"):
        return _Extreme(largest=name == "max")
    if name == "batch_mean":
        return _BatchMean()
    if name in _SAMPLE_FUNCTIONS:
        return _Samples(name)
    raise ConfigError(
        f"range_estimator.<min|max>.aggregator = {name!r} is not supported; allowed values: {', '.join(AGGREGATORS)}"
    )
