"""Calibration data: sample selection (stat_subset_size, shuffle_data, seed), batching
(stat_batch_size) and the calibration loop (spec §1.2, §2 Sampler)."""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch.utils import _pytree as pytree
from tqdm.auto import tqdm

from torchpqt.errors import ConfigError, TorchPQTError
from torchpqt.graph.capture import split_inputs

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


def _to_device(call: Inputs, device: torch.device) -> Inputs:
    return pytree.tree_map(lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, call)


def model_device(model: torch.nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def calibrate(prepared: torch.nn.Module, batches: Iterable[Inputs], *, total: int | None = None,
              progress: bool | None = None) -> int:
    """Run ``batches`` through the prepared model under no_grad; returns the number of samples seen.

    Args:
        progress: show a tqdm bar; None shows it only when stderr is a terminal.
    """
    device = model_device(prepared)
    disable = (not sys.stderr.isatty()) if progress is None else not progress
    seen = 0
    with torch.no_grad(), tqdm(total=total, desc="calibration", unit="sample", disable=disable) as bar:
        for args, kwargs in batches:
            args, kwargs = _to_device((args, kwargs), device)
            prepared(*args, **kwargs)
            n = _num_samples((args, kwargs))
            seen += n
            bar.update(n)
    if seen == 0:
        raise TorchPQTError("the calibration data yielded no sample; pass a non-empty iterable")
    return seen
