"""The driver: DefaultQuantization's steps in POT's order (spec §2), grouped into calibration passes.

POT runs ActivationChannelAlignment (always), MinMaxQuantization (always), FastBiasCorrection or
BiasCorrection (``use_fast_bias``), OverflowCorrection (GNA targets) and LayerwiseTuning
(``use_layerwise_tuning``). Their statistics are collected together in as few passes as POT uses: one
pass, plus one before it when an algorithm that changes the float model (channel alignment) needs
statistics of its own. A :class:`Schedule` says which algorithms share each pass; ``prepare()`` observes the
first pass, ``convert()`` runs the others and the algorithms.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import fx

from torchpqt import distributed
from torchpqt.algorithms import (
    bias_correction,
    channel_alignment,
    fast_bias_correction,
    min_max,
    overflow_correction,
)
from torchpqt.algorithms.base import Algorithm
from torchpqt.algorithms.layerwise_tuning import ALGORITHM as LAYERWISE_TUNING
from torchpqt.calibration import calibrate, model_device
from torchpqt.errors import TorchPQTError
from torchpqt.observer import StatisticRequest, collect, instrument, remove_probes
from torchpqt.statistics.cache import DataFingerprint, state_hash
from torchpqt.statistics.store import StatisticsStore

__all__ = ["PIPELINE", "Schedule", "Stage", "algorithms_for", "build_schedule", "observe", "run"]

logger = logging.getLogger("torchpqt")

#: Every algorithm, in POT's order; ``enabled(config)`` picks the ones a config runs.
PIPELINE: tuple[Algorithm, ...] = (
    channel_alignment.ALGORITHM,
    min_max.ALGORITHM,
    fast_bias_correction.ALGORITHM,
    bias_correction.ALGORITHM,
    overflow_correction.ALGORITHM,
    LAYERWISE_TUNING,
)


def algorithms_for(config) -> tuple[Algorithm, ...]:
    """The algorithms ``config`` runs, in POT's order."""
    return tuple(a for a in PIPELINE if a.enabled(config))


@dataclass(frozen=True)
class Stage:
    """Algorithms whose statistics one calibration pass collects, then applied in order."""

    algorithms: tuple[str, ...]
    requests: tuple[StatisticRequest, ...]
    needs_data: tuple[str, ...] = ()  # those of them whose apply() reads the calibration data again


@dataclass(frozen=True)
class Schedule:
    """What a prepared model still needs: the first stage's statistics come from the user's calibration loop
    (the prepared model observes them), every later stage with statistics needs one more pass over the
    data, and ``needs_data`` algorithms read the data again. ``convert()`` does all of it when it is given
    the calibration data."""

    stages: tuple[Stage, ...]

    @property
    def passes(self) -> int:
        """Calibration passes in all: the user's loop and the ones ``convert()`` runs."""
        return 1 + sum(1 for stage in self.stages[1:] if stage.requests)

    def label(self, index: int) -> str:
        """The progress-bar label of pass ``index`` (0-based): "channel alignment 1/2", "statistics 2/2"."""
        stage = self.stages[index]
        what = "channel alignment" if index == 0 and self.passes > 1 and \
            stage.algorithms[-1] == "ActivationChannelAlignment" else "statistics"
        return "calibration" if self.passes == 1 else f"{what} {index + 1}/{self.passes}"

    def data_needs(self) -> list[str]:
        """What makes ``convert()`` need the calibration data (empty: it does not)."""
        needs = []
        for i, stage in enumerate(self.stages):
            if i and stage.requests:
                needs.append(f"calibration pass {i + 1}/{len(self.stages)} (statistics of "
                             f"{', '.join(stage.algorithms)} on the model the previous steps return)")
            needs.extend(f"{name} (runs the calibration data again)" for name in stage.needs_data)
        return needs

    def __str__(self) -> str:
        rows = []
        for i, stage in enumerate(self.stages):
            where = "your calibration loop" if i == 0 else "convert(prepared, calibration_data)"
            rows.append(f"pass {i + 1} ({where}): {len(stage.requests)} statistics for {', '.join(stage.algorithms)}")
            rows.extend(f"  {name} reads the calibration data again in convert()" for name in stage.needs_data)
        return "\n".join(rows)


def build_schedule(plan, config) -> Schedule:
    """Ask every algorithm ``config`` runs for its statistics and group them into passes."""
    stages, names, requests, data = [], [], [], []
    for algorithm in algorithms_for(config):
        wanted = tuple(algorithm.statistic_points(plan, config))
        names.append(algorithm.name)
        requests.extend(wanted)
        if algorithm.needs_data:
            data.append(algorithm.name)
        if algorithm.new_pass_after and wanted:
            stages.append(Stage(tuple(names), tuple(requests), tuple(data)))
            names, requests, data = [], [], []
    if names or not stages:
        stages.append(Stage(tuple(names), tuple(requests), tuple(data)))
    seen = set()
    for r in (r for stage in stages for r in stage.requests):
        if r.point in seen:
            raise TorchPQTError(f"internal: two algorithms observe the statistics point {r.point!r}")
        seen.add(r.point)
    return Schedule(tuple(stages))


def check_covered(store: StatisticsStore, requests) -> None:
    """Raise the error ``store.result`` gives for the first statistic of ``requests`` that is missing."""
    for r in requests:
        for spec in r.specs:
            if (r.point, spec.statistic_key) not in store:
                store.result(r.point, spec)


def _registered(name: str) -> Algorithm:
    for algorithm in PIPELINE:
        if algorithm.name == name:
            return algorithm
    raise TorchPQTError(f"the prepared model's pipeline names {name!r}, which this torchpqt does not have; "
                        "prepare the model again")


def observe(model: fx.GraphModule, requests, data, *, cache=None, progress: bool | None = None,
            desc: str = "calibration") -> StatisticsStore:
    """One calibration pass of ``requests`` on ``model`` (observers left in place; the caller removes the
    probes). With a :class:`~torchpqt.statistics.cache.StatisticsCache`, the requests it covers for this model
    state are served from it (their observers are put in place but compute nothing) and the pass runs only
    when some are missing, recording those into the cache."""
    state = state_hash(model) if cache is not None else None
    known = frozenset(r.point for r in requests if cache.covered(state, r)) if cache is not None else frozenset()
    instrument(model, requests, passive=known, record=cache is not None)
    model.graph.lint()
    model.recompile()
    missing = [r for r in requests if r.point not in known]
    if missing:
        read = DataFingerprint(device_values=True)
        batches = data.batches() if cache is None else read.wrap(data.batches())
        calibrate(model, batches, total=data.total(), progress=progress, desc=desc)
        if cache is not None and read.digest != cache.data:
            raise TorchPQTError("calibration_data gave other samples on this read than on the first one (a "
                                "DataLoader with shuffle=True, or random transforms?), so its statistics cannot be "
                                "cached under its fingerprint; give data that reads the same every time, or no "
                                "statistics_cache")
    if cache is None:
        return collect(model, requests)
    for r in missing:
        cache.add(state, r, model.get_submodule(r.module_name))
    cache.reused += len(known)
    cache.computed += len(missing)
    return cache.entries(state, requests)


def run(model: fx.GraphModule, schedule: Schedule, store: StatisticsStore, config, data=None, *,
        progress: bool | None = None, cache=None) -> tuple[fx.GraphModule, StatisticsStore]:
    """Apply every stage to ``model`` (convert()'s working copy, first-pass probes removed): run the later
    passes on ``data`` (a :class:`~torchpqt.calibration.CalibrationData`; through ``cache`` when given, see
    :func:`observe`), then each algorithm. Returns the model and the store with every pass's statistics. With a
    :class:`~torchpqt.distributed.DistributedCalibrationData` the passes are sharded across the ranks (no cache)."""
    sharded = isinstance(data, distributed.DistributedCalibrationData)
    device = model_device(model)
    for i, stage in enumerate(schedule.stages):
        if i and stage.requests:
            if sharded:  # this rank's samples, then every rank's statistics merged in rank order
                instrument(model, stage.requests)
                model.graph.lint()
                model.recompile()
                distributed.calibrate_pass(model, data, progress=progress, desc=schedule.label(i))
                part = distributed.all_gather_statistics(collect(model, stage.requests), data.group)
            else:
                part = observe(model, stage.requests, data, cache=cache, progress=progress, desc=schedule.label(i))
            store = store.merge(part)
            remove_probes(model, stage.requests)
        check_covered(store, stage.requests)
        if data is not None:
            data.progress = progress
        for name in stage.algorithms:
            algorithm = _registered(name)
            # sharded: a data-driven algorithm reads every rank's samples (gathered), see torchpqt.distributed
            model = algorithm.apply(model, model.torchpqt_plan, store, config,
                                    data=(data.gathered() if sharded else data) if algorithm.needs_data else None)
            model.to(device)  # the FakeQuantize modules and tensors an algorithm made join the model's device
    return model, store
