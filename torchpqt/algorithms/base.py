"""The algorithm contract: what one step of DefaultQuantization declares and does.

An algorithm is an :class:`Algorithm` record, usually the ``ALGORITHM`` of its own module:

* ``enabled(config)``: whether the config runs it (POT's ``DefaultQuantization.__init__`` rules);
* ``statistic_points(plan, config)``: the tensors it wants observed, as
  :class:`~torchpqt.observer.StatisticRequest` (called once, by ``prepare()``);
* ``apply(model, plan, statistics, config, *, data)``: the step itself. ``model`` is the working copy
  ``convert()`` made (a GraphModule); ``statistics`` is the :class:`~torchpqt.statistics.StatisticsStore`
  holding every request so far, the only place statistics are read from; ``data`` is the calibration data
  (:class:`~torchpqt.calibration.CalibrationData`) when ``needs_data`` is set, else None. It returns the
  model (changed in place or a new one); an algorithm that changes the plan sets ``model.torchpqt_plan``
  to a new plan. After MinMaxQuantization, ``model.torchpqt_fq_params`` holds every FakeQuantize's float64
  parameters (:class:`~torchpqt.quant.params.FQParams`, by point name); an algorithm that changes a range
  updates that entry and the FakeQuantize module together.
* ``needs_data``: ``apply`` runs the calibration data again (BiasCorrection's layer-by-layer inference,
  LayerwiseTuning), so ``convert()`` needs ``calibration_data``. ``data.subset(n)`` gives POT's sampler for a
  step's own subset; ``data.progress`` is the run's ``progress`` setting for the step's own bar.
* ``new_pass_after``: the statistics of the algorithms after it must be collected on the model it
  returns (ActivationChannelAlignment changes the float weights): the pipeline starts a new calibration
  pass after it, when it requested statistics. Without statistics it must leave the float model as it is.
* ``affine_tensors(plan, config)`` (optional, with ``new_pass_after``): the tensors (fx node names) whose values
  ``apply`` changes, each by a per-channel increasing affine map along axis 1 (``y' = a * y + b``, ``a > 0``),
  every other tensor keeping its value. ``apply`` then sets ``model.torchpqt_affine = {tensor: (a, b)}``. With
  ``alignment_pass: "shared"`` the later algorithms' statistics are then collected in the same pass, and those on
  these tensors derived from it (:mod:`torchpqt.statistics.affine`) instead of a new pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import fx

from torchpqt.observer import StatisticRequest

__all__ = ["Algorithm", "Apply", "StatisticPoints"]

StatisticPoints = Callable[[Any, Any], tuple[StatisticRequest, ...]]  # (plan, config) -> requests
Apply = Callable[..., fx.GraphModule]  # (model, plan, statistics, config, *, data) -> model


@dataclass(frozen=True)
class Algorithm:
    """One step of the pipeline; see the module docstring for the contract of each field."""

    name: str
    enabled: Callable[[Any], bool]
    statistic_points: StatisticPoints
    apply: Apply
    needs_data: bool = False
    new_pass_after: bool = False
    affine_tensors: Callable[[Any, Any], tuple[str, ...]] | None = None
