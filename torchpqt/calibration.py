"""Calibration data: sample selection (stat_subset_size, shuffle_data, seed), batching
(stat_batch_size), the data of one run read once per pass, and the calibration loop (spec §1.2, §2
Sampler)."""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils import _pytree as pytree
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from torchpqt.errors import ConfigError, TorchPQTError
from torchpqt.inputs import split_inputs

logger = logging.getLogger("torchpqt")

Inputs = tuple[tuple, dict]


def _num_samples(call: Inputs) -> int:
    leaves = [x for x in pytree.tree_leaves(call) if isinstance(x, torch.Tensor)]
    if not leaves:
        raise TorchPQTError("a calibration item holds no tensor; pass tensors, tuples or dicts of tensors "
                            "(or a transform_fn that returns them)")
    return int(leaves[0].shape[0]) if leaves[0].dim() > 0 else 1


def _slice(call: Inputs, start: int, stop: int, n: int) -> Inputs:
    def cut(x):
        if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == n:
            return x[start:stop]
        return x
    return pytree.tree_map(cut, call)


def _concat(calls: list[Inputs]) -> Inputs:
    if len(calls) == 1:
        return calls[0]
    flat = [pytree.tree_flatten(c) for c in calls]
    leaves0, spec = flat[0]
    out = []
    for i, leaf in enumerate(leaves0):
        if isinstance(leaf, torch.Tensor) and leaf.dim() > 0:
            out.append(torch.cat([f[0][i] for f in flat]))
        else:
            out.append(leaf)
    return pytree.tree_unflatten(out, spec)


def _items(data: Iterable, config) -> Iterator[Any]:
    if not config.shuffle_data:
        return iter(data)
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise ConfigError("shuffle_data=true needs an indexable dataset (with __len__ and __getitem__); "
                          "pass the Dataset itself rather than a DataLoader or generator")
    n = len(data)
    k = n if config.stat_subset_size is None else min(config.stat_subset_size, n)
    # POT: random.seed(seed); random.sample(range(len(dataset)), stat_subset_size) (samplers/creator.py)
    indices = random.Random(config.seed).sample(range(n), k)
    return (data[i] for i in indices)


def calibration_batches(data: Iterable, config, transform_fn: Callable | None = None) -> Iterator[Inputs]:
    """Yield ``(args, kwargs)`` inference batches of ``stat_batch_size`` samples, ``stat_subset_size``
    samples in all (the last batch may be short), in dataset order or POT's seeded shuffle."""
    limit = config.stat_subset_size
    size = config.stat_batch_size
    pending: list[Inputs] = []
    pending_n = taken = 0
    for item in _items(data, config):
        call = split_inputs(transform_fn(item) if transform_fn is not None else item)
        n = _num_samples(call)
        start = 0
        while start < n and (limit is None or taken < limit):
            stop = min(n, start + size - pending_n)
            if limit is not None:
                stop = min(stop, start + limit - taken)
            pending.append(call if (start, stop) == (0, n) else _slice(call, start, stop, n))
            pending_n += stop - start
            taken += stop - start
            start = stop
            if pending_n == size:
                yield _concat(pending)
                pending, pending_n = [], 0
        if limit is not None and taken >= limit:
            break
    if pending:
        yield _concat(pending)


def expected_samples(data: Iterable, config, transform_fn: Callable | None = None) -> int | None:
    """How many samples calibration will see (the progress bar's total), or None when unknown.

    A DataLoader counts its dataset's samples, a list or tuple its items times the first item's samples,
    any other sized iterable one sample per item; ``stat_subset_size`` caps the count.
    """
    n = None
    dataset = getattr(data, "dataset", None)
    if isinstance(data, DataLoader) and data.batch_size is not None and hasattr(dataset, "__len__"):
        n = len(dataset)
    elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)) and len(data):
        first = data[0]
        n = len(data) * _num_samples(split_inputs(transform_fn(first) if transform_fn is not None else first))
    elif hasattr(data, "__len__"):
        n = len(data)
    limit = config.stat_subset_size
    return limit if n is None else n if limit is None else min(n, limit)


class CalibrationData:
    """The calibration data of one run: :meth:`batches` reads it again for each pass (POT's sampler every
    time: the same samples in the same order).

    Args:
        data: what the user passed (a DataLoader, a Dataset, a list, ...).
        config: the run's config (``stat_subset_size``, ``stat_batch_size``, ``shuffle_data``, ``seed``).
        transform_fn: maps an item to model inputs.
    """

    def __init__(self, data: Iterable, config, transform_fn: Callable | None = None) -> None:
        self.data, self.config, self.transform_fn = data, config, transform_fn
        self._reads = 0

    def batches(self) -> Iterator[Inputs]:
        """The inference batches of one pass (see :func:`calibration_batches`).

        Raises:
            TorchPQTError: the data is an iterator (a generator, ``iter(loader)``), read once already.
        """
        if self._reads and isinstance(self.data, Iterator):
            raise TorchPQTError("this config reads the calibration data more than once, but calibration_data is an "
                                "iterator that was read already; pass a list, a Dataset or a DataLoader instead")
        self._reads += 1
        return calibration_batches(self.data, self.config, self.transform_fn)

    def total(self) -> int | None:
        """The samples one pass sees, for the progress bar (see :func:`expected_samples`)."""
        return expected_samples(self.data, self.config, self.transform_fn)


def _to_device(call: Inputs, device: torch.device) -> Inputs:
    return pytree.tree_map(lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, call)


def model_device(model: torch.nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def calibrate(prepared: torch.nn.Module, batches: Iterable[Inputs], *, total: int | None = None,
              progress: bool | None = None, desc: str = "calibration") -> int:
    """Run ``batches`` through the prepared model under no_grad; returns the number of samples seen.

    Args:
        total: the samples expected (the bar's total).
        progress: show a tqdm bar; None shows it only when stderr is a terminal.
        desc: the bar's label.
    """
    device = model_device(prepared)
    disable = (not sys.stderr.isatty()) if progress is None else not progress
    seen = 0
    with torch.no_grad(), tqdm(total=total, desc=desc, unit="sample", disable=disable) as bar:
        for args, kwargs in batches:
            args, kwargs = _to_device((args, kwargs), device)
            prepared(*args, **kwargs)
            n = _num_samples((args, kwargs))
            seen += n
            bar.update(n)
    if seen == 0:
        raise TorchPQTError("the calibration data yielded no sample; pass a non-empty iterable")
    return seen
