"""The DefaultQuantization steps later releases add: registered in the pipeline at their place in POT's order,
they log that they are not implemented yet (once per ``prepare()``) and leave the model as it is."""

from __future__ import annotations

import logging

from torchpqt._once import log_once
from torchpqt.algorithms.base import Algorithm

__all__ = ["LAYERWISE_TUNING", "pending"]


def pending(name: str, enabled, message: str | None) -> Algorithm:
    """A placeholder step: ``message`` (if any) is logged as a warning when ``prepare()`` plans the pipeline."""

    def statistic_points(plan, config) -> tuple:
        if message is not None:
            log_once(("pending", name), logging.WARNING, message)
        return ()

    def apply(model, plan, statistics, config, *, data=None):
        return model

    return Algorithm(name, enabled=enabled, statistic_points=statistic_points, apply=apply)


LAYERWISE_TUNING = pending(
    "LayerwiseTuning", lambda config: config.use_layerwise_tuning,
    "use_layerwise_tuning: layerwise tuning is not implemented yet; running MinMaxQuantization only")
