"""The driver: DefaultQuantization's steps in POT's order (spec §2), grouped into calibration passes.

POT runs ActivationChannelAlignment (always), MinMaxQuantization (always), FastBiasCorrection or
BiasCorrection (``use_fast_bias``), OverflowCorrection (GNA targets) and LayerwiseTuning
(``use_layerwise_tuning``). Their statistics are collected together in as few passes as possible: one pass,
plus one before it when an algorithm that changes the float model needs statistics of its own (POT: channel
alignment's pass on the FP32 model, then everything else on the aligned model; ``alignment_pass: "separate"``).
Channel alignment changes only the tensors it aligns, each by a per-channel affine map, so by default
(``alignment_pass: "shared"``) the later algorithms' statistics are taken in the same first pass and those on the
aligned tensors derived in ``convert()`` (:mod:`torchpqt.statistics.affine`). A :class:`Schedule` says which
algorithms share each pass and which points are derived; ``prepare()`` observes the first pass, ``convert()`` runs
the others and the algorithms.
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
from torchpqt.statistics import affine
from torchpqt.statistics.cache import DataFingerprint, state_hash
from torchpqt.statistics.store import StatisticsStore

__all__ = ["PIPELINE", "Derived", "Schedule", "Stage", "algorithms_for", "build_schedule", "observe", "run"]

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
class Derived:
    """A statistics point on a tensor that an earlier algorithm of its pass changes by a per-channel affine map
    (channel alignment): observed passively in the pass, its statistics are derived in ``convert()`` from the
    ``source`` point on the same tensor once that algorithm has applied (:mod:`torchpqt.statistics.affine`)."""

    point: str
    tensor: str
    source: str
    changed_by: str  # the algorithm whose map it undergoes


@dataclass(frozen=True)
class Stage:
    """Algorithms whose statistics one calibration pass collects, then applied in order."""

    algorithms: tuple[str, ...]
    requests: tuple[StatisticRequest, ...]
    needs_data: tuple[str, ...] = ()  # those of them whose apply() reads the calibration data again
    derived: tuple[Derived, ...] = ()  # requests observed passively, their statistics derived in convert()

    @property
    def passive(self) -> frozenset[str]:
        """The points of :attr:`derived`: their observers are in the graph but compute nothing."""
        return frozenset(d.point for d in self.derived)

    @property
    def observed(self) -> tuple[StatisticRequest, ...]:
        """The requests whose statistics the pass itself collects."""
        passive = self.passive
        return tuple(r for r in self.requests if r.point not in passive)


@dataclass(frozen=True)
class Schedule:
    """What a prepared model still needs: the first stage's statistics come from the user's calibration loop
    (the prepared model observes them), every later stage with statistics needs one more pass over the
    data, and ``needs_data`` algorithms read the data again. ``convert()`` does all of it when it is given
    the calibration data. A stage's ``derived`` points need no pass: ``convert()`` derives them."""

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

    def derived_points(self) -> list[str]:
        """Every point whose statistics ``convert()`` derives instead of observing."""
        return [d.point for stage in self.stages for d in stage.derived]

    def __str__(self) -> str:
        rows = []
        for i, stage in enumerate(self.stages):
            where = "your calibration loop" if i == 0 else "convert(prepared, calibration_data)"
            rows.append(f"pass {i + 1} ({where}): {len(stage.observed)} statistics for {', '.join(stage.algorithms)}")
            by_tensor: dict[tuple[str, str], list[str]] = {}
            for d in stage.derived:
                by_tensor.setdefault((d.tensor, d.changed_by), []).append(d.point)
            rows.extend(f"  {len(points)} derived in convert() from pass {i + 1} on {tensor!r} as {by} changes it: "
                        f"{', '.join(points)}" for (tensor, by), points in by_tensor.items())
            rows.extend(f"  {name} reads the calibration data again in convert()" for name in stage.needs_data)
        return "\n".join(rows)


def _source_point(tensor: str) -> str:
    return f"{tensor} (derivation source)"


def _stages(plan, config, wanted, shared: bool) -> tuple[Stage, ...] | str:
    """Group the algorithms' requests into stages; with ``shared``, requests on the tensors an
    ``affine_tensors`` algorithm changes are derived instead of starting a new pass (or the reason they cannot
    be, as a string)."""
    stages, names, requests, data, derived = [], [], [], [], []
    changed: dict[str, str] = {}  # tensor -> the algorithm whose map it undergoes, in the current stage

    def close() -> None:
        sources = []
        for tensor in dict.fromkeys(d.tensor for d in derived):
            points = {d.point for d in derived if d.tensor == tensor}
            mine = [r for r in requests if r.point in points]
            specs = affine.source_specs(spec for r in mine for spec in r.specs)
            sources.append(StatisticRequest(_source_point(tensor), tensor, specs, f"{tensor}__derivation_source",
                                            channel_axis=1, shapes=True))
        stages.append(Stage(tuple(names), (*requests, *sources), tuple(data), tuple(derived)))
        names.clear(), requests.clear(), data.clear(), derived.clear(), changed.clear()

    for algorithm, want in wanted:
        names.append(algorithm.name)
        for r in want:
            if r.tensor not in changed:
                continue
            for spec in r.specs:
                why = affine.underivable(spec, r.channel_axis)
                if why is not None:
                    return (f"{algorithm.name}'s statistic {spec.statistic_key!r} of {r.point!r} (a tensor "
                            f"{changed[r.tensor]} changes) cannot be derived: {why}")
            derived.append(Derived(r.point, r.tensor, _source_point(r.tensor), changed[r.tensor]))
        requests.extend(want)
        if algorithm.needs_data:
            data.append(algorithm.name)
        if algorithm.new_pass_after and want:
            tensors = algorithm.affine_tensors(plan, config) if shared and algorithm.affine_tensors else None
            if tensors is None or any(t in changed for t in tensors):
                close()  # a new pass on the model it returns
            else:
                changed.update(dict.fromkeys(tensors, algorithm.name))
    if names or not stages:
        close()
    return tuple(stages)


def build_schedule(plan, config) -> Schedule:
    """Ask every algorithm ``config`` runs for its statistics and group them into passes. With
    ``alignment_pass: "shared"`` (the default) channel alignment gets no pass of its own when every later
    statistic on an aligned tensor can be derived; otherwise (logged) POT's passes."""
    wanted = [(algorithm, tuple(algorithm.statistic_points(plan, config))) for algorithm in algorithms_for(config)]
    shared = getattr(config, "alignment_pass", "shared") == "shared"
    stages = _stages(plan, config, wanted, shared)
    if isinstance(stages, str):
        logger.info("%s; calibrating the aligned model in a second pass, as POT (alignment_pass: separate)", stages)
        stages = _stages(plan, config, wanted, False)
    seen = set()
    for r in (r for stage in stages for r in stage.requests):
        if r.point in seen:
            raise TorchPQTError(f"internal: two algorithms observe the statistics point {r.point!r}")
        seen.add(r.point)
    return Schedule(stages)


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
            desc: str = "calibration", passive: frozenset[str] = frozenset()) -> StatisticsStore:
    """One calibration pass of ``requests`` on ``model`` (observers left in place; the caller removes the
    probes). ``passive`` points (a stage's derived ones) get observers that compute nothing and no statistics.
    With a :class:`~torchpqt.statistics.cache.StatisticsCache`, the requests it covers for this model state are
    served from it (their observers are put in place but compute nothing) and the pass runs only when some are
    missing, recording those into the cache."""
    observed = [r for r in requests if r.point not in passive]
    state = state_hash(model) if cache is not None else None
    known = frozenset(r.point for r in observed if cache.covered(state, r)) if cache is not None else frozenset()
    instrument(model, requests, passive=known | passive, record=cache is not None)
    model.graph.lint()
    model.recompile()
    missing = [r for r in observed if r.point not in known]
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
        return collect(model, observed)
    for r in missing:
        cache.add(state, r, model.get_submodule(r.module_name))
    cache.reused += len(known)
    cache.computed += len(missing)
    return cache.entries(state, observed)


def derive(store: StatisticsStore, stage: Stage, model: fx.GraphModule, algorithm: str) -> StatisticsStore:
    """The store with the statistics of ``stage``'s points derived from ``algorithm``'s maps (which
    ``model.torchpqt_affine`` holds once it has applied)."""
    mine = [d for d in stage.derived if d.changed_by == algorithm]
    if not mine:
        return store
    transforms = getattr(model, "torchpqt_affine", {})
    requests = {r.point: r for r in stage.requests}
    entries = {}
    for d in mine:
        if d.tensor not in transforms:
            raise TorchPQTError(f"internal: {algorithm} did not report how it changed {d.tensor!r}")
        a, b = transforms[d.tensor]
        entries.update(affine.derived_entries(store, requests[d.point], d.source, a, b))
    derived = StatisticsStore(entries)
    check_covered(derived, [requests[d.point] for d in mine])
    logger.debug("%d statistics point(s) derived after %s", len(mine), algorithm)
    return store.merge(derived)


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
                instrument(model, stage.requests, passive=stage.passive)
                model.graph.lint()
                model.recompile()
                distributed.calibrate_pass(model, data, progress=progress, desc=schedule.label(i))
                part = distributed.all_gather_statistics(collect(model, stage.observed), data.group)
            else:
                part = observe(model, stage.requests, data, cache=cache, progress=progress, desc=schedule.label(i),
                               passive=stage.passive)
            store = store.merge(part)
            remove_probes(model, stage.requests)
        check_covered(store, stage.observed)
        if data is not None:
            data.progress = progress
        for name in stage.algorithms:
            algorithm = _registered(name)
            # sharded: a data-driven algorithm reads every rank's samples (gathered), see torchpqt.distributed
            model = algorithm.apply(model, model.torchpqt_plan, store, config,
                                    data=(data.gathered() if sharded else data) if algorithm.needs_data else None)
            model.to(device)  # the FakeQuantize modules and tensors an algorithm made join the model's device
            store = derive(store, stage, model, name)
    if hasattr(model, "torchpqt_affine"):
        del model.torchpqt_affine
    return model, store
