"""Range estimators: which statistic (min/max side) each FakeQuantize needs (spec §5.1, §5.4, §5.5).

A :class:`StatSpec` names one statistic: the per-sample reduction (``type``, ``granularity``,
quantile ``q``) and the cross-sample ``aggregator``. :func:`range_estimator` builds the pair
of specs for one FakeQuantize from POT's built-in preset tables plus the user's overlay.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import RangeEstimatorConfig, StatisticConfig
from ..constants import (
    DEFAULT_OUTLIER_PROB,
    GRANULARITIES,
    GROUPS,
    MODES,
    QUANTILE_TYPES,
    RANGE_ESTIMATOR_PRESETS,
    STAT_AGGREGATORS,
    STAT_TYPES,
    STATISTIC_KEYS,
)
from ..errors import ConfigError

__all__ = ["DEFAULT_OUTLIER_PROB", "QUANTILE_TYPES", "STAT_TYPES", "StatSpec", "range_estimator", "statistic_key"]

logger = logging.getLogger("torchpqt")


@dataclass(frozen=True)
class StatSpec:
    """One side (min or max) of a FakeQuantize's range estimator.

    Attributes:
        side: ``"min"`` or ``"max"``.
        type: per-sample reduction: min, max, abs_max, quantile, abs_quantile or mean.
        aggregator: cross-sample aggregator name; ``None`` for weights (no samples).
        granularity: ``pertensor`` or ``perchannel`` (of this statistic, not of the FQ).
        outlier_prob: tail probability of quantile types; ``None`` otherwise.
        clipping_value: hard limit applied to the final range (§4.4), or ``None``.
    """

    side: str
    type: str
    aggregator: str | None
    granularity: str
    outlier_prob: float | None = None
    clipping_value: float | None = None

    def __post_init__(self) -> None:
        where = f"range_estimator.{self.side}"
        if self.side not in ("min", "max"):
            raise ConfigError(f"range_estimator side {self.side!r} is unknown; use 'min' or 'max'")
        _check_choice(f"{where}.type", self.type, STAT_TYPES)
        _check_choice(f"{where}.granularity", self.granularity, GRANULARITIES)
        if self.aggregator is not None:
            _check_choice(f"{where}.aggregator", self.aggregator, STAT_AGGREGATORS)
        if self.type in QUANTILE_TYPES:
            if self.outlier_prob is None:
                object.__setattr__(self, "outlier_prob", DEFAULT_OUTLIER_PROB)
            if not 0.0 <= float(self.outlier_prob) <= 1.0:
                raise ConfigError(
                    f"{where}.outlier_prob = {self.outlier_prob!r} is not a probability; use a value in [0, 1]"
                )

    @property
    def q(self) -> float | None:
        """Quantile level: ``outlier_prob`` on the min side, ``1 - outlier_prob`` on the max side.

        POT: algorithms/quantization/utils.py::get_tensor_statistics.
        """
        if self.type not in QUANTILE_TYPES:
            return None
        return self.outlier_prob if self.side == "min" else 1 - self.outlier_prob

    @property
    def key(self) -> str:
        """POT's statistic name, e.g. ``max_abs_max`` or ``min_quantile_0.0001``.

        POT: get_stat_name_by_config (str() of the float, as POT writes it).
        """
        parts = [self.side, self.type]
        if self.type in QUANTILE_TYPES:
            parts.append(str(self.outlier_prob))
        return "_".join(parts)

    @property
    def reducer_key(self) -> tuple[str, float | None, str]:
        """Identifies the per-sample reduction, so equal reducers on one tensor run once."""
        return (self.type, self.q, self.granularity)

    @property
    def statistic_key(self) -> str:
        """The statistics store's name of this statistic (reduction and aggregator), see :func:`statistic_key`."""
        return statistic_key(self.reducer_key, self.aggregator)


def statistic_key(reducer_key: tuple[str, float | None, str], aggregator: str | None) -> str:
    """``type/granularity[@q]->aggregator``, e.g. ``abs_max/pertensor->mean`` or
    ``quantile/perchannel@0.0001->min``: names one collected statistic of a tensor."""
    stat_type, q, granularity = reducer_key
    return f"{stat_type}/{granularity}{'' if q is None else f'@{q!r}'}->{aggregator}"


def _check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} = {value!r} is not supported; allowed values: {', '.join(allowed)}")


# POT: range_estimator.py, the DEFAULT_/QUANTILE_ACTIVATIONS_RANGE_ESTIMATOR_CONFIG tables. The
# `outputs` group (GNA) uses the same tables. (min, max) per (granularity, mode).
_Q = {"outlier_prob": DEFAULT_OUTLIER_PROB}
_ACT_TABLES: dict[str, dict[tuple[str, str], tuple[dict, dict]]] = {
    "default": {
        ("perchannel", "symmetric"): (
            {"aggregator": "min", "type": "min", "granularity": "pertensor"},
            {"aggregator": "max", "type": "abs_max"},
        ),
        ("perchannel", "asymmetric"): (
            {"aggregator": "min", "type": "min"},
            {"aggregator": "max", "type": "max"},
        ),
        ("pertensor", "symmetric"): (
            {"aggregator": "min", "type": "min"},
            {"aggregator": "mean", "type": "abs_max"},
        ),
        ("pertensor", "asymmetric"): (
            {"aggregator": "mean", "type": "min"},
            {"aggregator": "mean", "type": "max"},
        ),
    },
    "quantile": {
        ("perchannel", "symmetric"): (
            {"aggregator": "min", "type": "min", "granularity": "pertensor"},
            {"aggregator": "max", "type": "abs_quantile", **_Q},
        ),
        ("perchannel", "asymmetric"): (
            {"aggregator": "min", "type": "quantile", **_Q},
            {"aggregator": "max", "type": "quantile", **_Q},
        ),
        ("pertensor", "symmetric"): (
            {"aggregator": "min", "type": "min"},
            {"aggregator": "mean", "type": "abs_quantile", **_Q},
        ),
        ("pertensor", "asymmetric"): (
            {"aggregator": "mean", "type": "quantile", **_Q},
            {"aggregator": "mean", "type": "quantile", **_Q},
        ),
    },
}
# POT: DEFAULT_/QUANTILE_WEIGHTS_RANGE_ESTIMATOR_CONFIG: no aggregator; symmetric has no min.
_WEIGHT_TABLES: dict[str, dict[str, tuple[dict | None, dict]]] = {
    "default": {"symmetric": (None, {"type": "abs_max"}), "asymmetric": ({"type": "min"}, {"type": "max"})},
    "quantile": {
        "symmetric": (None, {"type": "abs_quantile", **_Q}),
        "asymmetric": ({"type": "quantile", **_Q}, {"type": "quantile", **_Q}),
    },
}


def range_estimator(
    group: str, mode: str, granularity: str, user: RangeEstimatorConfig | Mapping[str, Any] | None = None
) -> tuple[StatSpec | None, StatSpec]:
    """Resolve the (min, max) statistics of one FakeQuantize (spec §5.1 tables, §5.4 overlay).

    Args:
        group: ``weights``, ``activations`` or ``outputs``.
        mode: the FQ's final ``symmetric``/``asymmetric`` mode.
        granularity: the FQ's final ``pertensor``/``perchannel`` granularity.
        user: the :class:`~torchpqt.config.RangeEstimatorConfig` (validated already), or a POT-JSON
            ``range_estimator`` dict (``{"preset": ..., "min": {...}, "max": {...}}``), checked here; the
            caller picks the section-level one or the global one (they are not merged).

    Returns:
        ``(min_spec, max_spec)``; ``min_spec`` is ``None`` for symmetric weights unless the user
        gives a ``min`` section.

    Raises:
        ConfigError: unknown preset, key or value, or a user ``min``/``max`` without a ``type``.
    """
    _check_choice("group", group, GROUPS)
    _check_choice(f"{group}.mode", mode, MODES)
    _check_choice(f"{group}.granularity", granularity, GRANULARITIES)
    if isinstance(user, RangeEstimatorConfig):
        preset = user.preset or "default"
        base_min, base_max = _base(group, mode, granularity, preset)
        min_cfg = _typed_overlay(base_min, user.min)
        max_cfg = _typed_overlay(base_max, user.max)
    else:
        user = dict(user or {})
        preset = user.get("preset") or "default"
        _check_choice(f"{group}.range_estimator.preset", preset, RANGE_ESTIMATOR_PRESETS)
        base_min, base_max = _base(group, mode, granularity, preset)
        min_cfg = _overlay(group, "min", base_min, user.get("min"))
        max_cfg = _overlay(group, "max", base_max, user.get("max"))
    assert max_cfg is not None  # every table has a max entry
    min_spec = None if min_cfg is None else _to_spec(group, "min", min_cfg, granularity)
    return min_spec, _to_spec(group, "max", max_cfg, granularity)


def _base(group: str, mode: str, granularity: str, preset: str) -> tuple[dict | None, dict]:
    if group == "weights":
        return _WEIGHT_TABLES[preset][mode]
    return _ACT_TABLES[preset][(granularity, mode)]


def _typed_overlay(base: dict | None, user: StatisticConfig | None) -> dict | None:
    """_overlay for a validated StatisticConfig: its given keys replace the preset's."""
    if user is None:
        return None if base is None else dict(base)
    given = {k: getattr(user, k) for k in STATISTIC_KEYS if getattr(user, k) is not None}
    return {**(base or {}), **given}


def _overlay(group: str, side: str, base: dict | None, user: Mapping[str, Any] | None) -> dict | None:
    """POT: get_range_estimator_config: the user's keys replace the preset's, key by key."""
    if user is None:
        return None if base is None else dict(base)
    if not isinstance(user, Mapping):
        raise ConfigError(f"{group}.range_estimator.{side} must be a dict, got {type(user).__name__}")
    unknown = sorted(set(user) - set(STATISTIC_KEYS))
    if unknown:
        raise ConfigError(
            f"{group}.range_estimator.{side} has unknown key(s) {unknown}; allowed: {', '.join(STATISTIC_KEYS)}"
        )
    return {**(base or {}), **{k: v for k, v in user.items() if v is not None}}


def _to_spec(group: str, side: str, cfg: dict, granularity: str) -> StatSpec:
    if "type" not in cfg:
        raise ConfigError(
            f"{group}.range_estimator.{side} has no 'type' (the preset has no {side} statistic here); "
            f'add e.g. "type": "{side}"'
        )
    aggregator = cfg.get("aggregator")
    if group == "weights" and aggregator is not None:
        # A weight is one sample: POT's API ignores the key and its CLI rejects it.
        logger.warning("weights.range_estimator.%s.aggregator = %r is ignored for weights", side, aggregator)
        aggregator = None
    return StatSpec(
        side=side,
        type=cfg["type"],
        aggregator=aggregator,
        # POT: a statistic without its own granularity gets the FQ's.
        granularity=cfg.get("granularity", granularity),
        outlier_prob=cfg.get("outlier_prob"),
        clipping_value=cfg.get("clipping_value"),
    )
