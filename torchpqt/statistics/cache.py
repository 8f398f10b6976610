"""The statistics cache: a calibration run's reduced values on disk, so another config converts without a pass.

``quantize(..., statistics_cache=path)`` keeps, for every tensor a calibration pass observed, the
per-batch reduced values (the per-sample min/max/quantile/mean of each batch, before any aggregator), so a
later run rebuilds every aggregator's state from them: replaying the same tensors in the same order through
the same aggregators gives the states a fresh pass gives, bit for bit. A new config therefore costs only
convert when it changes what is computed *from* the reductions: the preset, the mode (min, max and abs_max
of a granularity are recorded together, one ``aminmax`` gives all three), the bits, an estimator's
aggregator, the ignored scope. A reduction the file lacks (a quantile type, another granularity, a new
``inplace_statistics``) is computed in one pass that observes only the missing tensors; the file then holds
the union.

The key, in the file's header: a hash of the user model's parameters and buffers (:func:`model_hash`) and the
calibration data's fingerprint (:class:`DataFingerprint`: the sample indices selected, how they were batched,
a hash of every input tensor). A file whose header differs is stale: it is not used (logged once) and is
overwritten. Per entry: the state of the model the pass ran on (:func:`state_hash`: the captured graph's code
and its parameters and buffers; for a second pass, the model that channel alignment returned), the observed
tensor, its channel axis and ``inplace_statistics``.

What is cached: every calibration pass of the schedule: the first one and, with POT's two passes
(``alignment_pass: "separate"``), the one after channel alignment (keyed on the aligned model's state, so a config
that aligns the same way hits, one that does not recalibrates that pass). Statistics that convert() derives from
the first pass (the aligned tensors' in the default one-pass mode) are not cached; what they are derived from is.
Not cached: what algorithms read from the data inside convert, BiasCorrection's layer-by-layer inference
(``use_fast_bias: false``) and LayerwiseTuning: they run the data again on every call (FastBiasCorrection, the
default, reads only the cached statistics). Statistics are replayed on the CPU;
on another device the fresh run's float64 sums may differ in the last bit.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree as pytree

from .._once import log_once
from ..errors import TorchPQTError
from .collector import TensorStatistics
from .store import StatisticsStore

__all__ = ["DataFingerprint", "StatisticsCache", "model_hash", "state_hash", "statistics_digest", "update_digest"]

logger = logging.getLogger("torchpqt")

_FORMAT = "torchpqt.statistics_cache"
_VERSION = 1


def _tensor_bytes(t: torch.Tensor) -> bytes:
    if t.device.type == "meta":  # shapes only, no values to hash
        return b"meta"
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def update_digest(digest, name: str, t: torch.Tensor) -> None:
    """Feed one tensor (name, dtype, shape, bytes; a meta tensor by shape only) to a hashlib digest."""
    digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
    digest.update(_tensor_bytes(t))


def _named_tensors(module: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from module.named_parameters(remove_duplicate=False)
    yield from module.named_buffers(remove_duplicate=False)


def model_hash(model: torch.nn.Module) -> str:
    """sha256 of the model's class and every parameter and buffer (name, dtype, shape, bytes)."""
    digest = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}\n".encode())
    for name, t in _named_tensors(model):
        update_digest(digest, name, t)
    return digest.hexdigest()


def state_hash(gm: torch.fx.GraphModule) -> str:
    """sha256 of a working model as a calibration pass sees it: its graph's code, parameters and buffers."""
    digest = hashlib.sha256(gm.code.encode())
    for name, t in _named_tensors(gm):
        update_digest(digest, name, t)
    return digest.hexdigest()


def statistics_digest(store: StatisticsStore) -> str:
    """sha256 of every statistic of ``store`` (keys, states, tensors' bytes), independent of entry order."""
    digest = hashlib.sha256()
    for point, key in sorted(store):
        digest.update(f"{point}\0{key}\0".encode())
        state = store[(point, key)]
        for field in sorted(state):
            value = state[field]
            if isinstance(value, torch.Tensor):
                update_digest(digest, field, value)
            else:
                digest.update(f"{field}={value!r};".encode())
    return digest.hexdigest()


class DataFingerprint:
    """What calibration read: the sample indices, their batching and a hash of every input tensor.

    Feed it the inference batches of a pass (:meth:`update`, or :meth:`wrap` an iterator of them).

    Args:
        device_values: also hash the values of tensors that are not on the CPU (a host copy per batch: only
            a statistics cache needs it); otherwise such tensors count by dtype and shape only, so calibrating
            data that already sits on an accelerator reads nothing back per batch.
    """

    def __init__(self, device_values: bool = False) -> None:
        self.device_values = device_values
        self._digest = hashlib.sha256()
        self.pieces: list[tuple[int, int, int, int]] = []  # (item index, first row, stop row, rows in the item)
        self.samples = 0
        self.batches = 0

    def update(self, batch) -> None:
        origin = tuple(getattr(batch, "origin", ()))
        self.pieces.extend(origin)
        self._digest.update(f"batch {self.batches}: {origin!r}\n".encode())
        leaves = pytree.tree_leaves(tuple(batch))
        for i, leaf in enumerate(leaves):
            if isinstance(leaf, torch.Tensor) and (leaf.device.type == "cpu" or self.device_values):
                update_digest(self._digest, str(i), leaf)
            elif isinstance(leaf, torch.Tensor):
                self._digest.update(f"{i}:{leaf.dtype}:{tuple(leaf.shape)}@{leaf.device.type};".encode())
            else:
                self._digest.update(f"{i}={leaf!r};".encode())
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        self.samples += int(tensors[0].shape[0]) if tensors and tensors[0].dim() else 1
        self.batches += 1

    def wrap(self, batches: Iterable) -> Iterator:
        for batch in batches:
            self.update(batch)
            yield batch

    @property
    def digest(self) -> str:
        return self._digest.hexdigest()

    def indices(self) -> list:
        """The samples used, in order: an item index, or ``[item, first row, stop row]`` for part of a
        batched item."""
        return [item if (start, stop) == (0, rows) and rows == 1 else [item, start, stop]
                for item, start, stop, rows in self.pieces]


def _pack(values: list[torch.Tensor]) -> tuple[torch.Tensor, list[list[int]]]:
    """One flat tensor and the batch shapes (thousands of small tensors load slowly with weights_only)."""
    return torch.cat([v.reshape(-1) for v in values]), [list(v.shape) for v in values]


def _unpack(flat: torch.Tensor, shapes: list[list[int]]) -> list[torch.Tensor]:
    if not isinstance(flat, torch.Tensor) or not isinstance(shapes, list):
        raise TypeError("a reduction is not a tensor with its batch shapes")
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    if sum(sizes) != flat.numel():
        raise ValueError("a reduction's values do not match its batch shapes")
    return [part.reshape(s) for part, s in zip(torch.split(flat, sizes), shapes)]


class StatisticsCache:
    """The reduced values of the tensors observed on one model and one calibration data set, in a file.

    Use :meth:`open`; :meth:`covered` says whether a request can be served, :meth:`entries` serves it,
    :meth:`add` records a freshly observed tensor, :meth:`save` writes the file (only when something was added).
    """

    def __init__(self, path: str | Path, model: str, data: str) -> None:
        self.path, self.model, self.data = Path(path), model, data
        self._entries: dict[tuple, dict[str, Any]] = {}
        self.dirty = False
        self.reused = 0
        self.computed = 0

    @classmethod
    def open(cls, path: str | Path, model: str, data: str) -> StatisticsCache:
        """The cache at ``path`` for this model hash and data fingerprint; empty when the file does not exist
        or is stale (written for other weights or other samples: logged once, overwritten on save).

        Raises:
            TorchPQTError: the file exists but is not a readable statistics cache.
        """
        cache = cls(path, model, data)
        p = Path(path)
        if not p.exists():
            logger.info("statistics cache %s does not exist yet: calibrating and writing it", p)
            return cache
        fix = "delete it, or pass another statistics_cache path"
        try:
            blob = torch.load(p, weights_only=True)
        except Exception as exc:  # torch.load raises many kinds on a damaged file
            raise TorchPQTError(f"statistics cache {p} cannot be read ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}); {fix}") from exc
        if not isinstance(blob, Mapping) or blob.get("format") != _FORMAT:
            raise TorchPQTError(f"{p} is not a torchpqt statistics cache; {fix}")
        if blob.get("version") != _VERSION:
            raise TorchPQTError(f"statistics cache {p} has version {blob.get('version')!r}; this torchpqt reads "
                                f"version {_VERSION}: {fix}")
        if blob.get("model") != model:
            log_once(("stale cache", str(p)), logging.WARNING, "statistics cache %s was written for other model "
                     "weights: not used; calibrating again and overwriting it", p)
            return cache
        if blob.get("data") != data:
            log_once(("stale cache", str(p)), logging.WARNING, "statistics cache %s was written for other "
                     "calibration samples (indices, batching or values differ): not used; calibrating again and "
                     "overwriting it", p)
            return cache
        try:
            for e in blob["entries"]:
                key = (e["state"], e["tensor"], int(e["channel_axis"]), bool(e["inplace"]))
                reductions = {(t, q, g): _unpack(flat, shapes) for t, q, g, flat, shapes in e["reductions"]}
                cache._entries[key] = {"rank": e["rank"], "shapes": e["shapes"], "batches": int(e["batches"]),
                                       "reductions": reductions}
        except (KeyError, TypeError, ValueError) as exc:
            raise TorchPQTError(f"statistics cache {p} is damaged ({type(exc).__name__}: {exc}); {fix}") from exc
        return cache

    @staticmethod
    def _key(state: str, request) -> tuple:
        return (state, request.tensor, int(request.channel_axis), bool(request.inplace))

    def covered(self, state: str, request) -> bool:
        """Whether every statistic of ``request`` (and its batch shapes, if asked) is in the cache."""
        entry = self._entries.get(self._key(state, request))
        if entry is None or (request.shapes and entry["shapes"] is None):
            return False
        return all(spec.reducer_key in entry["reductions"] for spec in request.specs)

    def entries(self, state: str, requests: Sequence) -> StatisticsStore:
        """The store of ``requests`` (all covered), each aggregator fed the recorded values batch by batch."""
        from ..observer import store_entries  # observer imports the statistics package

        out: dict = {}
        for r in requests:
            entry = self._entries[self._key(state, r)]
            stats = TensorStatistics(r.specs, channel_axis=r.channel_axis, inplace=r.inplace)
            needed = stats.reducer_keys()
            for b in range(entry["batches"]):
                stats.feed({k: entry["reductions"][k][b] for k in needed})
            shapes = [tuple(s) for s in entry["shapes"]] if r.shapes else None
            out.update(store_entries(r.point, stats, entry["rank"], shapes))
        return StatisticsStore(out)

    def add(self, state: str, request, observer) -> None:
        """Record what ``observer`` (instrumented with ``record=True``) saw for ``request``; merged into the
        entry of the same tensor (its other reductions are kept)."""
        records = observer.stats.records
        if not records or observer.stats.num_batches == 0:
            return
        key = self._key(state, request)
        entry = self._entries.get(key)
        n = observer.stats.num_batches
        if entry is None or entry["batches"] != n:
            entry = {"rank": observer.ndim, "shapes": None, "batches": n, "reductions": {}}
            self._entries[key] = entry
        for k, values in records.items():
            entry["reductions"][k] = [v.detach().cpu() for v in values]
        if observer.shapes:
            entry["shapes"] = [list(s) for s in observer.shapes]
        self.dirty = True

    def save(self) -> None:
        """Write the file (atomically: a temporary file renamed over it) when something was added."""
        if not self.dirty:
            return
        entries = [{"state": s, "tensor": t, "channel_axis": a, "inplace": i, "rank": e["rank"],
                    "shapes": e["shapes"], "batches": e["batches"],
                    "reductions": [[k[0], k[1], k[2], *_pack(v)] for k, v in e["reductions"].items()]}
                   for (s, t, a, i), e in self._entries.items()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save({"format": _FORMAT, "version": _VERSION, "model": self.model, "data": self.data,
                    "entries": entries}, tmp)
        os.replace(tmp, self.path)
        self.dirty = False
        logger.info("statistics cache %s: %d observed tensors saved", self.path, len(entries))
