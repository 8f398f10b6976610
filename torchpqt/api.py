"""The public workflow: ``prepare`` → calibrate → ``convert``, ``quantize`` in one shot, ``plan`` to see
where FakeQuantize goes, ``collect_statistics`` to keep what calibration measured."""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import fx

from torchpqt import distributed as _dist
from torchpqt._once import call_scope
from torchpqt.algorithms import pipeline
from torchpqt.calibration import CalibrationData, calibrate, check_statistics_finite
from torchpqt.config import DefaultQuantizationConfig, load_config
from torchpqt.converted import finalize
from torchpqt.errors import TorchPQTError
from torchpqt.hardware.cpu_isa import advise_saturation
from torchpqt.inputs import ModelInputs
from torchpqt.observer import Observer, collect, instrument, remove_probes
from torchpqt.plan import QuantizationPlan
from torchpqt.planning import make_plan
from torchpqt.statistics.cache import DataFingerprint, StatisticsCache, model_hash, statistics_digest
from torchpqt.statistics.collector import TensorStatistics
from torchpqt.statistics.store import StatisticsStore

logger = logging.getLogger("torchpqt")
__all__ = ["QuantizationPlan", "collect_statistics", "convert", "plan", "prepare", "quantize"]


def _config(config, target_device: str | None) -> DefaultQuantizationConfig:
    cfg = load_config(config)
    if target_device is not None and target_device != cfg.target_device:
        cfg = cfg.replace(target_device=target_device)
    return cfg


def plan(model: torch.nn.Module, example_inputs, config=None, target_device: str | None = None
         ) -> QuantizationPlan:
    """Show where ``prepare`` would put FakeQuantize, with POT-style names, and the scope names that
    ``ignored.scope`` accepts."""
    with call_scope():
        return make_plan(model, example_inputs, _config(config, target_device), share_tensors=True)[1]


def prepare(model: torch.nn.Module, example_inputs, config=None, target_device: str | None = None
            ) -> fx.GraphModule:
    """Capture ``model`` and insert an observer at every point the first calibration pass measures.

    Args:
        model: the FP32 model; never modified (a copy is captured, in eval mode).
        example_inputs: a tensor, a tuple of positional inputs, a dict of keyword inputs or a
            :class:`torchpqt.ModelInputs` holding both.
        config: ``{"name": "DefaultQuantization", "params": {...}}``, the params dict, or a
            :class:`DefaultQuantizationConfig`; None means all defaults.
        target_device: overrides ``config.target_device`` (CPU, ANY, GPU, GNA, GNA3, GNA3.5, CPU_SPR).

    Returns:
        A GraphModule taking the model's inputs. Run calibration data through it (under no_grad),
        then call :func:`convert`. Its ``torchpqt_schedule`` says how many calibration passes the config
        needs in all (``.passes``) and whether :func:`convert` needs the data again (``.data_needs()``).
    """
    with call_scope():
        return _prepare(model, example_inputs, _config(config, target_device))


def _prepare(model: torch.nn.Module, example_inputs, cfg: DefaultQuantizationConfig, *, share_tensors: bool = False
             ) -> fx.GraphModule:
    """:func:`prepare`; ``share_tensors`` for quantize(), which converts before the user's model can change (the
    prepared graph then holds the model's own weights, not a copy: see :func:`~torchpqt.graph.capture.capture`).
    A prepared model handed to the user keeps copies: the user may train the model before calling convert()."""
    gm, _, schedule, _ = _planned(model, example_inputs, cfg, share_tensors=share_tensors)
    instrument(gm, schedule.stages[0].requests, passive=schedule.stages[0].passive)
    gm.graph.lint()
    gm.recompile()
    return gm


def _planned(model: torch.nn.Module, example_inputs, cfg: DefaultQuantizationConfig, *, share_tensors: bool = False):
    """The captured graph with its plan, schedule, config and the model's hash as attributes, not yet
    instrumented."""
    gm, qplan = make_plan(model, example_inputs, cfg, share_tensors=share_tensors)
    schedule = pipeline.build_schedule(qplan, cfg)
    advise_saturation(qplan, cfg)
    gm.torchpqt_plan = qplan
    gm.torchpqt_config = cfg
    gm.torchpqt_schedule = schedule
    gm.torchpqt_model_hash = model_hash(model)
    logger.info("prepared %d FakeQuantize points (%d activations)", len(qplan.points),
                sum(p.group != "weights" for p in qplan.points))
    return gm, qplan, schedule, cfg


def _prepared_parts(prepared) -> tuple[QuantizationPlan, pipeline.Schedule]:
    qplan = getattr(prepared, "torchpqt_plan", None)
    schedule = getattr(prepared, "torchpqt_schedule", None)
    if qplan is None or schedule is None:
        raise TorchPQTError("convert() needs a model returned by torchpqt.prepare()")
    return qplan, schedule


def collect_statistics(prepared: fx.GraphModule) -> StatisticsStore:
    """The statistics the prepared model's observers collected in the calibration loop, as a
    :class:`~torchpqt.statistics.StatisticsStore` to save (``store.save(path)``), merge with other
    processes' (``store.merge(other)``) or pass to ``convert(prepared, statistics=store)``."""
    _, schedule = _prepared_parts(prepared)
    return collect(prepared, schedule.stages[0].observed)


def convert(prepared: fx.GraphModule, calibration_data: Iterable | None = None, *,
            statistics: StatisticsStore | None = None, transform_fn: Callable[[Any], Any] | None = None,
            progress: bool | None = None, distributed: bool | None = None) -> fx.GraphModule:
    """Run the config's algorithms on the calibrated model: FakeQuantize modules replace the observers and
    the weights get theirs.

    Args:
        prepared: the model :func:`prepare` returned, after the calibration loop.
        calibration_data: the calibration data again, for configs whose later steps need it (a second
            calibration pass, bias correction, layerwise tuning: ``prepared.torchpqt_schedule.data_needs()``);
            give the same data as the loop, read as :func:`quantize` reads it. Not read otherwise.
        statistics: the first pass's statistics (e.g. a store saved after calibration and loaded here)
            instead of the prepared model's observers. Taken as the statistics of all the data: not merged
            across ranks (merge them with :func:`torchpqt.distributed.all_gather_statistics` first).
        transform_fn: maps a ``calibration_data`` item to model inputs.
        progress: progress bars for the passes convert() runs (default: only when stderr is a terminal).
        distributed: None (default): when a ``torch.distributed`` default group with more than one rank is
            initialized, each rank's calibration loop and ``calibration_data`` are its shard and the statistics
            are merged across the ranks (see :mod:`torchpqt.distributed`); every rank must call convert().
            False: this rank converts on its own data alone. True: like None, but an error without a group.

    Returns:
        A new GraphModule (``prepared`` is left as it is) computing the fake-quantized model, with
        attributes ``torchpqt_config`` (the POT params dict), ``torchpqt_plan`` and ``torchpqt_run`` (the
        model parameter hash, the statistics hash and, from :func:`quantize`, the calibration samples'
        indices, count, batch size and fingerprint: what the exporter's ``manifest.json`` records).

    Raises:
        TorchPQTError: ``prepared`` is not a prepared model; no calibration data reached a point; the config
            needs the calibration data again and none was given.
    """
    with call_scope():
        sharded = _dist.enabled(distributed)
        with _dist.log_on_rank_zero() if sharded else contextlib.nullcontext():
            return _convert(prepared, calibration_data, statistics=statistics, transform_fn=transform_fn,
                            progress=progress, sharded=sharded)


def _convert(prepared: fx.GraphModule, calibration_data, *, statistics: StatisticsStore | None = None,
             transform_fn=None, progress: bool | None = None, sharded: bool = False, local_empty_ok: bool = False,
             cache: StatisticsCache | None = None, fingerprint: DataFingerprint | None = None) -> fx.GraphModule:
    qplan, schedule = _prepared_parts(prepared)
    cfg = prepared.torchpqt_config
    if statistics is None:
        if sharded:
            def local() -> StatisticsStore:
                check_statistics_finite(prepared, qplan.points)
                return collect_statistics(prepared)
            store = _dist.agree(local, "convert()")
            if not local_empty_ok:
                _dist.check_every_rank_collected(store)
            store = _dist.all_gather_statistics(store)
        else:
            check_statistics_finite(prepared, qplan.points)
            store = collect_statistics(prepared)
    else:
        store = statistics
    data = calibration_data
    if data is not None and not isinstance(data, CalibrationData):
        data = (_dist.DistributedCalibrationData(data, cfg, transform_fn) if sharded
                else CalibrationData(data, cfg, transform_fn))
    pipeline.check_covered(store, schedule.stages[0].observed)
    needs = schedule.data_needs()

    def check_data() -> None:
        if needs and data is None:
            raise TorchPQTError(
                "convert(): this config needs the calibration data again for " + "; ".join(needs) + ". Call "
                "torchpqt.convert(prepared, calibration_data) with the data of your calibration loop (and its "
                "transform_fn), or use torchpqt.quantize()")
    if sharded:  # every rank hears of one rank's missing data
        _dist.agree(check_data, "convert()")
    else:
        check_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's pytree spec deprecation noise on copy
        # keeps none of prepared's torchpqt_* attributes; the observers' statistics (read into `store` already) are
        # not copied: the copy's observers are removed or replaced below
        idle = TensorStatistics(())
        qm = copy.deepcopy(prepared, {id(m.stats): idle for m in prepared.modules() if isinstance(m, Observer)})
    qm.torchpqt_plan = qplan
    remove_probes(qm, schedule.stages[0].requests)
    qm, store = pipeline.run(qm, schedule, store, cfg, data, progress=progress, cache=cache)
    if cache is not None:
        cache.save()
        logger.info("statistics cache %s: %d observed tensor(s) reused, %d calibrated", cache.path, cache.reused,
                    cache.computed)
    finalize(qm)
    del qm.torchpqt_fq_params  # the FakeQuantize modules hold the result
    qm.torchpqt_config = {"name": "DefaultQuantization", "params": cfg.to_dict(full=True)}
    qm.torchpqt_run = _run_info(prepared, store, cfg, fingerprint)
    return qm


def _run_info(prepared, store: StatisticsStore, cfg, fingerprint: DataFingerprint | None) -> dict:
    """``qmodel.torchpqt_run``: what a run manifest records to reproduce the run (small: hashes, indices)."""
    calibration = None
    if fingerprint is not None and fingerprint.batches:
        calibration = {"fingerprint": fingerprint.digest, "samples": fingerprint.samples,
                       "batches": fingerprint.batches, "batch_size": cfg.stat_batch_size,
                       "indices": fingerprint.indices()}
    return {"model_hash": getattr(prepared, "torchpqt_model_hash", None), "statistics_hash": statistics_digest(store),
            "calibration": calibration}


def quantize(model: torch.nn.Module, calibration_data: Iterable, config=None, *, example_inputs=None,
             target_device: str | None = None, transform_fn: Callable[[Any], Any] | None = None,
             progress: bool | None = None, statistics_cache: str | Path | None = None,
             distributed: bool | None = None) -> fx.GraphModule:
    """Quantize ``model`` in one call: capture, calibrate on ``calibration_data``, convert.

    Args:
        model: the FP32 model; never modified.
        calibration_data: any iterable (a DataLoader, a Dataset, a list). Each item is a tensor (with a
            batch dimension), a tuple of positional inputs, a dict of keyword inputs, a
            :class:`torchpqt.ModelInputs`, or anything ``transform_fn`` maps to those.
            ``stat_subset_size`` counts samples, not items. Configs that need more than one pass read it
            again (so it must not be a one-shot iterator then).
        config: see :func:`prepare`.
        example_inputs: inputs for capture; default: the first calibration batch.
        target_device: overrides ``config.target_device``.
        transform_fn: maps an item to model inputs, e.g. ``lambda item: item[0]`` for ``(x, label)``.
        progress: show a progress bar (default: only when stderr is a terminal).
        statistics_cache: a file for the calibration statistics (see
            :mod:`torchpqt.statistics.cache`): what it holds for this model and these samples is reused, what
            this config needs beyond it is calibrated (only those tensors observed) and added. The data is read
            once more to fingerprint it (no forward pass), so it must not be a one-shot iterator.
        distributed: None (default): when a ``torch.distributed`` default group with more than one rank is
            initialized, ``calibration_data`` is this rank's shard of the calibration set (the set is the
            shards' concatenation in rank order, ``stat_subset_size`` counts over all of it) and every rank
            returns the model one process computes on that set (see :mod:`torchpqt.distributed`); every rank
            must call quantize(). False: this rank quantizes on its own data alone. True: like None, but an
            error without a group.

    Returns:
        The fake-quantized model (see :func:`convert`), with ``torchpqt_run``: the hashes a run manifest
        records (model, calibration samples, statistics).

    Raises:
        TorchPQTError: also for a ``statistics_cache`` file that exists but cannot be read.
    """
    with call_scope():
        cfg = _config(config, target_device)
        sharded = _dist.enabled(distributed)
        if sharded and statistics_cache is not None:
            raise TorchPQTError("statistics_cache is not supported with sharded calibration (torch.distributed): "
                                "quantize with distributed=False on one process to fill or use a cache")
        if sharded:
            with _dist.log_on_rank_zero():
                return _quantize_sharded(model, calibration_data, cfg, example_inputs, transform_fn, progress)
        data = CalibrationData(calibration_data, cfg, transform_fn)
        fingerprint = DataFingerprint(device_values=statistics_cache is not None)
        if statistics_cache is not None:
            if isinstance(calibration_data, Iterator):
                raise TorchPQTError("statistics_cache needs calibration_data it can read twice (to fingerprint the "
                                    "samples first): pass a list, a Dataset or a DataLoader, not an iterator")
            batches = iter(fingerprint.wrap(data.batches()))
            first = next(batches, None)
            for _ in batches:  # the fingerprint pass: reads the samples, no forward
                pass
        else:
            batches = fingerprint.wrap(data.batches())
            first = next(batches, None)
        if first is None:
            raise TorchPQTError("calibration_data yielded no sample; pass a non-empty iterable")
        if example_inputs is None:
            example_inputs = ModelInputs(*first)
        if statistics_cache is None:
            prepared = _prepare(model, example_inputs, cfg, share_tensors=True)
            calibrate(prepared, itertools.chain([first], batches), total=data.total(), progress=progress,
                      desc=prepared.torchpqt_schedule.label(0))
            return _convert(prepared, data, progress=progress, fingerprint=fingerprint)
        prepared, qplan, schedule, cfg = _planned(model, example_inputs, cfg, share_tensors=True)
        cache = StatisticsCache.open(statistics_cache, prepared.torchpqt_model_hash, fingerprint.digest)
        store = pipeline.observe(prepared, schedule.stages[0].requests, data, cache=cache, progress=progress,
                                 desc=schedule.label(0), passive=schedule.stages[0].passive)
        check_statistics_finite(prepared, qplan.points)  # the tensors this pass observed
        return _convert(prepared, data, statistics=store, progress=progress, cache=cache, fingerprint=fingerprint)


def _quantize_sharded(model, calibration_data, cfg, example_inputs, transform_fn, progress) -> fx.GraphModule:
    """quantize() on this rank's shard (see :mod:`torchpqt.distributed`)."""
    def first_batch():  # the shard's first item, whether or not the sampler selects it: capture needs one
        nonlocal calibration_data
        if isinstance(calibration_data, Iterator):
            head = list(itertools.islice(calibration_data, 1))
            calibration_data = itertools.chain(head, calibration_data)
        else:
            head = list(itertools.islice(iter(calibration_data), 1))
        flat = cfg.replace(shuffle_data=False, stat_subset_size=None)
        return next(CalibrationData(head, flat, transform_fn).batches(), None)

    first = _dist.agree(first_batch, "reading the calibration data")
    _dist.check_shards(_dist.gather_flags(first is not None))
    if example_inputs is None:
        example_inputs = ModelInputs(*first)
    prepared = _dist.agree(lambda: _prepare(model, example_inputs, cfg, share_tensors=True), "prepare()")
    data = _dist.DistributedCalibrationData(calibration_data, cfg, transform_fn)
    _dist.calibrate_pass(prepared, data, progress=progress, desc=prepared.torchpqt_schedule.label(0))
    return _convert(prepared, data, statistics=None, transform_fn=None, progress=progress, sharded=True,
                    local_empty_ok=True)
