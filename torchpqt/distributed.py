"""Calibration on several processes with ``torch.distributed``.

When a default process group is initialized (``torchrun``, ``init_process_group``; gloo on CPU, NCCL on GPU)
and has more than one rank, :func:`torchpqt.quantize` and :func:`torchpqt.convert` treat each rank's
``calibration_data`` as its shard of one calibration set: the *global* data is the concatenation of the
shards in rank order, and every rank ends with the FakeQuantize parameters one process computes on it.

How (the decisions, also in the README's "Calibrating on several processes"):

* **Statistics passes** (the first pass, channel alignment's second pass): each rank runs only its own
  samples; the per-rank :class:`~torchpqt.statistics.StatisticsStore` objects are gathered on every rank
  (:func:`all_gather_statistics`) and merged in rank order before any range is computed. Extremes merge
  exactly, kept per-sample values (median, the no-outlier means, ``hl_estimator``, batch shapes) are
  concatenated in rank order, and ``mean`` / ``batch_mean`` sums are continued term by term in rank order,
  so the merged store equals one process's bit for bit (see :func:`torchpqt.statistics.aggregators.merge`).
  The merge is one gather of the reduced statistics per pass (a few numbers per point and sample), never
  activations.
* **Sample assignment.** ``stat_subset_size`` applies to the global data. Each rank reports its shard size
  (from ``len()``: a list or tuple counts its items' samples, a DataLoader its dataset, another sized object
  its items), global sample ``i`` is the ``i``-th of the concatenation, POT's sampler selects over that
  global index space, and each rank calibrates on the selected samples it holds. Without ``shuffle_data``
  that is the first ``stat_subset_size`` global samples: rank ``r`` takes a prefix of its shard (possibly
  none). With ``shuffle_data`` the seeded ``random.sample`` draws global indices; rank ``r`` reads its picks in
  the sampler's order. Unsized shards (generators) work when ``stat_subset_size`` is not set.
* **Data-driven algorithms** (BiasCorrection's layer-by-layer inference, LayerwiseTuning) cannot be merged
  from per-rank statistics: they read the data of *one* model state sample by sample. Every read they make is
  gathered instead: the selected samples of every rank are exchanged (model inputs, after ``transform_fn``),
  put in the global sampler's order and batched as one process batches them, and every rank runs the
  algorithm on them. The results are the single process's; the cost is the inputs of those samples on every
  rank (BiasCorrection: 20 % of ``stat_subset_size``; LayerwiseTuning: all of them).
* **Exactness limits.** ``mean`` / ``batch_mean`` aggregators and ``inplace_statistics`` average per inference
  batch (POT), so they equal one process only when the batches are the same: every contributing rank but the
  last must hold a multiple of ``stat_batch_size`` selected samples (always true at the default
  ``stat_batch_size=1``); torchpqt logs a warning otherwise. With ``shuffle_data`` a rank's samples come in
  the sampler's order, not interleaved with the other ranks', so order-dependent results (``mean`` sums,
  the no-outlier means' float sums) may differ from one process in the last bits; min, max, median,
  quantiles and ``hl_estimator`` do not depend on the order and stay exact.
* **Errors.** A rank whose ``calibration_data`` is empty, or that fails in a pass, makes every rank raise
  (the failing rank its own error, the others a :class:`~torchpqt.TorchPQTError` naming the rank): no rank
  is left waiting in a collective.

``distributed=False`` on :func:`~torchpqt.quantize` / :func:`~torchpqt.convert` opts out (each rank
quantizes on its own data alone); ``distributed=True`` requires an initialized group.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from torchpqt.calibration import CalibrationData, _num_samples, calibrate, to_device
from torchpqt.errors import ConfigError, TorchPQTError
from torchpqt.inputs import ModelInputs, split_inputs
from torchpqt.statistics.store import StatisticsStore

__all__ = ["DistributedCalibrationData", "agree", "all_gather_statistics", "enabled", "shard_size"]

logger = logging.getLogger("torchpqt")


def enabled(distributed: bool | None = None, group=None) -> bool:
    """Whether a call with ``distributed`` (None: automatic) calibrates across the ranks of ``group``.

    Raises:
        TorchPQTError: ``distributed=True`` without an initialized default process group.
    """
    if distributed is False:
        return False
    ready = dist.is_available() and dist.is_initialized()
    if distributed is True and not ready:
        raise TorchPQTError("distributed=True needs an initialized torch.distributed process group: launch with "
                            "torchrun (or call torch.distributed.init_process_group) first, or pass "
                            "distributed=None/False")
    return ready and dist.get_world_size(group) > 1


class _RankZeroInfo(logging.Filter):
    """torchpqt's INFO/DEBUG lines from rank 0 only: every rank makes the same decisions."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or dist.get_rank() == 0


@contextlib.contextmanager
def log_on_rank_zero():
    """While sharded: one INFO line per decision (rank 0's), not one per rank; warnings from every rank."""
    filt = _RankZeroInfo()
    logger.addFilter(filt)
    try:
        yield
    finally:
        logger.removeFilter(filt)


def _gather(obj: Any, group=None) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def agree(fn: Callable[[], Any], what: str, group=None) -> Any:
    """Run ``fn`` on every rank, then make all ranks agree: if it raised on any rank, every rank raises (that
    rank its own exception, the others a :class:`TorchPQTError` naming the rank) instead of leaving the others
    in the next collective."""
    try:
        result, error = fn(), None
    except Exception as exc:  # noqa: BLE001 - re-raised below, once the other ranks have heard of it
        result, error = None, exc
    reports = _gather(None if error is None else f"{type(error).__name__}: {error}", group)
    if error is not None:
        raise error
    failed = [(r, text) for r, text in enumerate(reports) if text is not None]
    if failed:
        rank, text = failed[0]
        raise TorchPQTError(f"{what} failed on rank {rank} (of {len(reports)}): {text}")
    return result


def all_gather_statistics(store: StatisticsStore, group=None) -> StatisticsStore:
    """Every rank's ``store`` merged in rank order (:meth:`StatisticsStore.merge`), returned on every rank.

    A collective: every rank of ``group`` (default: the default group) must call it. The result equals the
    store one process collects over the ranks' data in rank order (see the module docstring).
    """
    parts = _gather({key: dict(state) for key, state in store.items()}, group)
    merged = StatisticsStore(parts[0])
    for part in parts[1:]:
        merged = merged.merge(StatisticsStore(part))
    return merged


def _store_batches(store: StatisticsStore) -> int:
    return max((int(state.get("batches", 0)) for state in store.values()), default=0)


def check_every_rank_collected(store: StatisticsStore, group=None) -> None:
    """Raise on every rank if some rank's local ``store`` is empty (it ran no batch through the prepared
    model)."""
    counts = _gather(_store_batches(store), group)
    empty = [r for r, n in enumerate(counts) if n == 0]
    if empty:
        raise TorchPQTError(f"rank(s) {empty} of {len(counts)} collected no calibration statistics: run each "
                            "rank's shard through the prepared model (under torch.no_grad()) before convert(), "
                            "or pass distributed=False to convert every rank on its own")


def shard_size(data: Iterable, transform_fn: Callable | None = None, *, items: bool = False) -> int | None:
    """The samples (``items=True``: the items) of one rank's shard, or None for an unsized iterable.

    A list or tuple counts the samples of its items (after ``transform_fn``), a DataLoader with a batch size
    its dataset (less ``drop_last``'s remainder), any other sized object one sample per item. Items are counted
    only where they can be indexed (shuffle_data's sampler picks items by index).
    """
    if items:  # shuffle_data's sampler indexes the items
        return len(data) if hasattr(data, "__len__") and hasattr(data, "__getitem__") else None
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        return sum(_num_samples(split_inputs(transform_fn(x) if transform_fn is not None else x)) for x in data)
    dataset = getattr(data, "dataset", None)
    if isinstance(data, DataLoader) and data.batch_size is not None and hasattr(dataset, "__len__"):
        n = len(dataset)
        return n - n % data.batch_size if data.drop_last else n
    return len(data) if hasattr(data, "__len__") else None


class _Picked(Sequence):
    """The items of ``data`` at ``indices``, in that order."""

    def __init__(self, data, indices: list[int]) -> None:
        self.data, self.indices = data, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.data[j] for j in self.indices[i]]
        return self.data[self.indices[i]]


class DistributedCalibrationData(CalibrationData):
    """One rank's shard of the global calibration data (see the module docstring).

    :meth:`batches` reads this rank's selected samples (a statistics pass); :meth:`gathered` is the view the
    data-driven algorithms read: every read of it exchanges the selected samples of all ranks.
    """

    def __init__(self, data: Iterable, config, transform_fn: Callable | None = None, group=None, *,
                 gathered: bool = False, _sizes: dict | None = None) -> None:
        super().__init__(data, config, transform_fn)
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.is_gathered = gathered
        self._sizes = {} if _sizes is None else _sizes  # shared by subsets: {items?: [size per rank]}

    # ---------------------------------------------------------------- assignment

    def _raw_sizes(self, items: bool = False) -> list[int | None]:
        """Every rank's shard size, None where unsized (a collective on first use, then cached)."""
        if items not in self._sizes:
            try:
                mine, error = shard_size(self.data, self.transform_fn, items=items), None
            except TorchPQTError as exc:
                mine, error = None, exc
            sizes = _gather(mine if error is None else str(error), self.group)
            if error is not None:
                raise error
            failed = [(r, s) for r, s in enumerate(sizes) if isinstance(s, str)]
            if failed:
                raise TorchPQTError(f"counting the calibration data failed on rank {failed[0][0]}: {failed[0][1]}")
            self._sizes[items] = sizes
        return self._sizes[items]

    def sizes(self, items: bool = False) -> list[int]:
        """Every rank's shard size (a collective on first use).

        Raises:
            ConfigError: on every rank, when a rank's shard has no len().
        """
        sizes = self._raw_sizes(items)
        bad = [r for r, s in enumerate(sizes) if s is None]
        if bad:
            raise ConfigError(
                f"distributed calibration with stat_subset_size or shuffle_data needs every rank's shard size, "
                f"but the calibration_data of rank(s) {bad} has no len() (a generator or iterator), or is not "
                "indexable while shuffle_data is set (a DataLoader); fix: pass a list or a Dataset (a DataLoader "
                "without shuffle_data), or leave stat_subset_size unset and give each rank exactly its share")
        return sizes

    def _selection(self) -> tuple[Iterable, Any, list[Any]]:
        """(this rank's data, its config, one global sort key per item of that data)."""
        cfg = self.config
        if cfg.shuffle_data:
            sizes = self.sizes(items=True)  # raises on every rank when one cannot be indexed
            total = sum(sizes)
            k = total if cfg.stat_subset_size is None else min(cfg.stat_subset_size, total)
            # POT's sampler over the global index space (calibration._items on the concatenated dataset)
            picks = random.Random(cfg.seed).sample(range(total), k)
            start = sum(sizes[:self.rank])
            mine = [(pos, g - start) for pos, g in enumerate(picks) if start <= g < start + sizes[self.rank]]
            local = _Picked(self.data, [i for _, i in mine])
            return local, cfg.replace(shuffle_data=False, stat_subset_size=None), [pos for pos, _ in mine]
        if cfg.stat_subset_size is None:
            return self.data, cfg, []
        sizes = self.sizes()
        start = sum(sizes[:self.rank])
        take = max(0, min(sizes[self.rank], cfg.stat_subset_size - start))
        if take == 0:
            return [], cfg.replace(stat_subset_size=None), []
        return self.data, cfg.replace(stat_subset_size=take), []

    def local(self) -> CalibrationData:
        """This rank's selected samples as a plain :class:`CalibrationData` (no collective when read)."""
        data, cfg, _ = self._selection()
        return CalibrationData(data, cfg, self.transform_fn)

    def check_batching(self, takes: list[int]) -> None:
        """Log (on rank 0) when batch-averaged statistics will not equal one process's: ``takes`` are the
        samples each rank calibrated on (see the module docstring)."""
        size = self.config.stat_batch_size
        used = [t for t in takes if t]
        if self.rank == 0 and size > 1 and not self.config.shuffle_data and any(t % size for t in used[:-1]):
            logger.warning("distributed calibration: the ranks calibrate on %s samples, not multiples of "
                           "stat_batch_size=%d: one process would batch across the ranks' boundaries, so "
                           "batch-averaged statistics (mean aggregators, inplace_statistics) differ from its", takes,
                           size)

    # ---------------------------------------------------------------- CalibrationData's interface

    def subset(self, size: int, batch_size: int | None = None) -> DistributedCalibrationData:
        changes = {"stat_subset_size": size}
        if batch_size is not None:
            changes["stat_batch_size"] = batch_size
        sub = DistributedCalibrationData(self.data, self.config.replace(**changes), self.transform_fn, self.group,
                                         gathered=self.is_gathered, _sizes=self._sizes)
        sub._reads, sub.progress = self._reads, self.progress
        self._reads += 1
        return sub

    def gathered(self) -> DistributedCalibrationData:
        """The view the data-driven algorithms read: every :meth:`batches` call gathers all ranks' samples."""
        view = DistributedCalibrationData(self.data, self.config, self.transform_fn, self.group, gathered=True,
                                          _sizes=self._sizes)
        view._reads, view.progress = self._reads, self.progress
        return view

    def batches(self) -> Iterator:
        if self._reads and isinstance(self.data, Iterator):
            raise TorchPQTError("this config reads the calibration data more than once, but calibration_data is an "
                                "iterator that was read already; pass a list, a Dataset or a DataLoader instead")
        self._reads += 1
        if not self.is_gathered:
            return self.local().batches()
        return self._gathered_batches()

    def _gathered_batches(self) -> Iterator:
        data, cfg, keys = self._selection()
        one_each = CalibrationData(data, cfg.replace(stat_batch_size=1), self.transform_fn)
        batches = agree(lambda: list(one_each.batches()), "reading the calibration data", self.group)
        origins = [b.origin for b in batches]
        rows = [to_device(tuple(b), torch.device("cpu")) for b in batches]  # sent as host data: any backend
        if self.config.shuffle_data:  # one global key per item: its sampler position
            keyed = [((keys[o[0][0]], o[0][1]), (tuple(b[0]), dict(b[1]))) for o, b in zip(origins, rows)]
        else:  # the concatenation in rank order
            keyed = [((self.rank, i), (tuple(b[0]), dict(b[1]))) for i, b in enumerate(rows)]
        everything = sorted((kv for part in _gather(keyed, self.group) for kv in part), key=lambda kv: kv[0])
        if not everything:
            raise TorchPQTError("the calibration data of all ranks yielded no sample; pass non-empty shards")
        flat = self.config.replace(shuffle_data=False, stat_subset_size=None)
        return CalibrationData([ModelInputs(*row) for _, row in everything], flat).batches()

    def total(self) -> int | None:
        if not self.is_gathered:
            return self.local().total()
        cfg = self.config
        sizes = self.sizes(items=True) if cfg.shuffle_data else self._raw_sizes()
        if None in sizes:
            return None  # an unsized shard (no stat_subset_size): callers count a pass
        n = sum(sizes)
        return n if cfg.stat_subset_size is None else min(n, cfg.stat_subset_size)


def calibrate_pass(model: torch.nn.Module, data: DistributedCalibrationData, *, progress: bool | None,
                   desc: str) -> list[int]:
    """One statistics pass of this rank's selected samples through ``model``, agreed across the ranks; returns
    the samples each rank ran.

    Raises:
        TorchPQTError: on every rank when a rank failed, or when no rank had a selected sample.
    """
    progress = progress if data.rank == 0 else False  # one bar, rank 0's

    def run() -> int:
        batches = data.batches()  # this rank's selected samples (an iterator read twice is an error here)
        first = next(batches, None)
        if first is None:
            return 0
        return calibrate(model, itertools.chain([first], batches), total=data.total(), progress=progress,
                         desc=desc)

    seen = _gather(agree(run, f"calibration pass {desc!r}", data.group), data.group)
    if sum(seen) == 0:
        raise TorchPQTError("the calibration data of all ranks yielded no sample; pass non-empty shards")
    data.check_batching(seen)
    return seen


def check_shards(first_items: list[bool], group=None) -> None:
    """Raise on every rank when some rank's calibration_data is empty (``first_items``: gathered flags)."""
    empty = [r for r, has in enumerate(first_items) if not has]
    if empty:
        raise TorchPQTError(f"rank(s) {empty} of {len(first_items)} got no calibration data: give every rank a "
                            "non-empty shard (or pass distributed=False to quantize each rank on its own data)")


def gather_flags(flag: bool, group=None) -> list[bool]:
    return _gather(bool(flag), group)
