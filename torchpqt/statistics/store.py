"""The statistics store: everything a calibration pass collected, as plain data.

A :class:`StatisticsStore` maps ``(point name, statistic key)`` to the state of one aggregator: a dict of
CPU tensors and plain values, e.g. ``{"aggregator": "mean", "sum": tensor, "batches": 300, "per_batch":
False, "rank": 4}``. The point name is what an algorithm asked to observe (for MinMaxQuantization the
FakeQuantize's POT name); the key names the reduction and the aggregator (:func:`statistic_key`).

``convert()`` and every algorithm read statistics only from a store, so a store can be saved after
calibration and loaded in another process (``convert(prepared, statistics=store)``), merged across
processes that calibrated on different shards (:meth:`StatisticsStore.merge`), or kept to convert again.
States keep what the aggregators need to merge exactly: sums and counts for means, extremes, and the
per-sample reduced values for median, the outlier-free estimators and ``hl_estimator``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import TorchPQTError
from .aggregators import finalize, merge
from .estimators import StatSpec

__all__ = ["StatisticsStore"]

Key = tuple[str, str]
_FORMAT = "torchpqt.statistics"
_VERSION = 1
_META = ("per_batch", "rank")


class StatisticsStore(Mapping[Key, Mapping[str, Any]]):
    """``(point name, statistic key) -> aggregator state``; read-only, build a new one to change it.

    Args:
        entries: a mapping of ``(point, key)`` to states (see the module docstring).
    """

    def __init__(self, entries: Mapping[Key, Mapping[str, Any]] | None = None) -> None:
        self._entries: dict[Key, dict[str, Any]] = {}
        for key, state in (entries or {}).items():
            if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key)):
                raise TorchPQTError(f"statistics store keys are (point name, statistic key) pairs, got {key!r}")
            if not isinstance(state, Mapping) or "aggregator" not in state:
                raise TorchPQTError(f"statistics store entry {key!r} is not an aggregator state: {state!r}")
            self._entries[key] = dict(state)

    def __getitem__(self, key: Key) -> Mapping[str, Any]:
        return self._entries[key]

    def __iter__(self) -> Iterator[Key]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"StatisticsStore({len(self.points())} points, {len(self)} statistics)"

    def points(self) -> set[str]:
        """The point names that have at least one statistic."""
        return {point for point, _ in self._entries}

    def result(self, point: str, spec: StatSpec) -> np.ndarray:
        """The aggregated statistic ``spec`` of ``point`` (float64; scalar or ``[C]``, POT's shapes).

        Raises:
            TorchPQTError: nothing was collected for ``point``, or not this statistic.
        """
        state = self._entries.get((point, spec.statistic_key))
        if state is None:
            if point not in self.points():
                raise TorchPQTError(f"no calibration data reached {point!r}: run calibration batches through the "
                                    "prepared model (under torch.no_grad()) before convert()")
            raise TorchPQTError(f"statistic {spec.statistic_key!r} of {point!r} is not in the statistics store "
                                "(it was collected for another config); calibrate again with this config")
        return finalize(state)

    def rank(self, point: str) -> int | None:
        """The rank of the tensor observed at ``point`` (None when unknown)."""
        for (p, _), state in self._entries.items():
            if p == point:
                return state.get("rank")
        return None

    def merge(self, other: StatisticsStore) -> StatisticsStore:
        """A store holding both: statistics only one has are copied, those both have are merged (the
        batches of ``self`` first).

        Raises:
            TorchPQTError: a statistic both have was collected differently (aggregator, inplace statistics,
                tensor rank or shape).
        """
        out = dict(self._entries)
        for key, state in other.items():
            mine = out.get(key)
            if mine is None:
                out[key] = dict(state)
                continue
            for meta in _META:
                if mine.get(meta) != state.get(meta):
                    raise TorchPQTError(f"cannot merge statistic {key!r}: {meta} is {mine.get(meta)!r} in one store "
                                        f"and {state.get(meta)!r} in the other; collect both with the same config")
            out[key] = merge(mine, state)
        return StatisticsStore(out)

    def save(self, path: str | Path) -> None:
        """Writes the store with ``torch.save`` (plain tensors, strings and numbers only)."""
        entries = [[point, key, state] for (point, key), state in self._entries.items()]
        torch.save({"format": _FORMAT, "version": _VERSION, "entries": entries}, path)

    @classmethod
    def load(cls, path: str | Path) -> StatisticsStore:
        """Reads a store written by :meth:`save` (``torch.load(weights_only=True)``: no code is run).

        Raises:
            TorchPQTError: the file is not a torchpqt statistics store.
        """
        data = torch.load(path, weights_only=True)
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise TorchPQTError(f"{path} is not a torchpqt statistics store (write one with StatisticsStore.save)")
        if data.get("version") != _VERSION:
            raise TorchPQTError(f"{path} is a version {data.get('version')} statistics store; this torchpqt "
                                f"reads version {_VERSION}: collect the statistics again")
        return cls({(point, key): state for point, key, state in data["entries"]})
