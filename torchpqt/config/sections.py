"""The config sections: range estimators (``min``/``max``), ``weights``/``activations``, ``ignored``,
and the LayerwiseTuning keys (spec §1.3, §5, §9, §11)."""

from __future__ import annotations

import logging
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torchpqt.config._base import _Config, _meta
from torchpqt.config._checks import (
    _boolean,
    _choice,
    _closest,
    _fail,
    _integer,
    _optional,
    _real,
    _section,
    _sequence,
)
from torchpqt.constants import (
    AGGREGATORS,
    DEFAULT_OUTLIER_PROB,
    GRANULARITIES,
    MODES,
    RANGE_ESTIMATOR_PRESETS,
    STATISTIC_TYPES,
)
from torchpqt.errors import ConfigError

__all__ = [
    "AGGREGATORS",
    "DEFAULT_OUTLIER_PROB",
    "STATISTIC_TYPES",
    "IgnoredConfig",
    "IgnoredOperation",
    "LayerwiseTuningConfig",
    "QuantizerConfig",
    "RangeEstimatorConfig",
    "StatisticConfig",
]

logger = logging.getLogger("torchpqt")



# ---------------------------------------------------------------- range estimators


@dataclass(frozen=True)
class StatisticConfig(_Config):
    """One side (``min`` or ``max``) of a range estimator (spec §1.3, §5). Every key is optional.

    ``type: quantile``/``abs_quantile`` without ``outlier_prob`` gets 1e-4 (POT crashed there).
    """

    type: str | None = field(default=None, metadata=_meta(_optional(_choice(*STATISTIC_TYPES))))
    outlier_prob: float | None = field(default=None, metadata=_meta(_optional(_real(0.0, 0.5, strict=True))))
    aggregator: str | None = field(default=None, metadata=_meta(_optional(_choice(*AGGREGATORS))))
    granularity: str | None = field(default=None, metadata=_meta(_optional(_choice(*GRANULARITIES))))
    clipping_value: float | None = field(default=None, metadata=_meta(_optional(_real())))

    def _check(self, path: str) -> None:
        if self.type in ("quantile", "abs_quantile") and self.outlier_prob is None:
            # POT: get_tensor_statistics reads outlier_prob unconditionally for quantile types (KeyError).
            logger.info(
                "%s.outlier_prob not given for type %r: using %g", path, self.type, DEFAULT_OUTLIER_PROB
            )
            object.__setattr__(self, "outlier_prob", DEFAULT_OUTLIER_PROB)


@dataclass(frozen=True)
class RangeEstimatorConfig(_Config):
    """A ``range_estimator`` section: a preset (``default``/``quantile``) and min/max overrides (§5.4)."""

    preset: str | None = field(default=None, metadata=_meta(_optional(_choice(*RANGE_ESTIMATOR_PRESETS))))
    min: StatisticConfig | None = field(default=None, metadata=_meta(_optional(_section(StatisticConfig))))
    max: StatisticConfig | None = field(default=None, metadata=_meta(_optional(_section(StatisticConfig))))

    def _check(self, path: str) -> None:
        low = self.min.clipping_value if self.min is not None else None
        high = self.max.clipping_value if self.max is not None else None
        if low is not None and high is not None and low >= high:
            raise ConfigError(
                f"{path}.min.clipping_value ({low}) must be below {path}.max.clipping_value ({high}): "
                "the clipped range would be empty."
            )


@dataclass(frozen=True)
class QuantizerConfig(_Config):
    """A ``weights`` or ``activations`` section (spec §1.3). Every key is optional: a partial section
    is completed from the hardware rules later.

    ``level_low`` must be <= 0 and ``level_high`` > 0, because POT counts levels as
    ``|level_high| + |level_low| + 1``; with ``bits`` also given the grid must fit in ``2**bits``.
    """

    bits: int | None = field(default=None, metadata=_meta(_optional(_integer(2, 32))))
    mode: str | None = field(default=None, metadata=_meta(_optional(_choice(*MODES))))
    granularity: str | None = field(default=None, metadata=_meta(_optional(_choice(*GRANULARITIES))))
    level_low: int | None = field(default=None, metadata=_meta(_optional(_integer(-(2**32), 0))))
    level_high: int | None = field(default=None, metadata=_meta(_optional(_integer(1, 2**32))))
    range_estimator: RangeEstimatorConfig | None = field(
        default=None, metadata=_meta(_optional(_section(RangeEstimatorConfig)))
    )

    def _check(self, path: str) -> None:
        if None in (self.bits, self.level_low, self.level_high):
            return
        count = self.level_high - self.level_low + 1
        if count > 2**self.bits:
            raise ConfigError(
                f"{path}.level_low/level_high: [{self.level_low}, {self.level_high}] is {count} levels, "
                f"more than {path}.bits={self.bits} allows ({2**self.bits}); raise bits or narrow the grid."
            )


# ---------------------------------------------------------------- ignored


def _attribute_value(path: str, value: Any) -> Any:
    """Freezes a JSON attribute value (lists become tuples) so the config stays hashable."""
    if isinstance(value, (list, tuple)):
        return tuple(_attribute_value(f"{path}[{i}]", v) for i, v in enumerate(value))
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)  # numpy scalars become plain JSON numbers
    if isinstance(value, numbers.Real) and math.isfinite(value):
        return float(value)
    raise _fail(path, value, "a string, finite number, boolean or a list of those")


def _attributes(path: str, value: Any) -> tuple[tuple[str, Any], ...]:
    pairs = list(value.items()) if isinstance(value, Mapping) else value
    valid = isinstance(pairs, (list, tuple)) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str) for p in pairs
    )
    if not valid:
        raise _fail(path, value, "a JSON object of attribute name -> value")
    return tuple((name, _attribute_value(f"{path}.{name}", v)) for name, v in pairs)


def _thaw(value: Any) -> Any:
    return [_thaw(v) for v in value] if isinstance(value, tuple) else value


def _op_type(path: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(path, value, "an OpenVINO op type name such as 'Convolution' or 'Add'")
    return value


@dataclass(frozen=True)
class IgnoredOperation(_Config):
    """An ``ignored.operations`` entry: an OpenVINO op type and optional attributes that must match."""

    type: str = field(metadata=_meta(_op_type))
    attributes: tuple[tuple[str, Any], ...] = field(default=(), metadata=_meta(_attributes))

    def attributes_dict(self) -> dict[str, Any]:
        """The attributes as the JSON gave them (lists, not tuples)."""
        return {name: _thaw(value) for name, value in self.attributes}

    def to_dict(self, full: bool = False) -> dict[str, Any]:
        """``{"type": ..., "attributes": {...}}``; ``attributes`` only when non-empty or ``full``."""
        out: dict[str, Any] = {"type": self.type}
        if self.attributes or full:
            out["attributes"] = self.attributes_dict()
        return out


def _scope_entry(path: str, value: Any) -> str:
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
        value = "|".join(value)  # POT: preprocess_ignored_params joins nested-subgraph names with '|'
    if not isinstance(value, str) or not value:
        raise _fail(path, value, "a node name, 're:<regex>', or a list of names to join with '|'")
    if value.startswith("re:"):
        try:
            re.compile(value[3:])
        except re.error as err:
            raise ConfigError(f"{path}: {value!r} is not a valid regular expression ({err}).") from None
    return value


@dataclass(frozen=True)
class IgnoredConfig(_Config):
    """The ``ignored`` section (spec §9). Scope names are exact; ``re:<regex>`` is a torchpqt extension."""

    skip_model: bool = field(default=False, metadata=_meta(_boolean))
    scope: tuple[str, ...] = field(default=(), metadata=_meta(_sequence(_scope_entry, "node names")))
    operations: tuple[IgnoredOperation, ...] = field(
        default=(), metadata=_meta(_sequence(_section(IgnoredOperation), "operations"))
    )


# ---------------------------------------------------------------- layerwise tuning


def _unused(path: str, value: Any) -> Any:
    if value is not None:
        _integer(0)(path, value)
        # POT: QuantizeModelFinetuning never reads it; the CLI accepts it (configs/config.py).
        logger.info("%s=%r is accepted for POT compatibility but unused, as in POT", path, value)
    return value


TUNING_GUARDS = ("layer", "model", "both")


def _guard(path: str, value: Any) -> str | bool:
    """``tuning_guard``: ``"layer"``, ``"model"``, ``"both"`` or ``false``; ``true`` (the key's first form) is
    ``"both"``."""
    if value is True:
        return "both"
    if value is False or (isinstance(value, str) and value in TUNING_GUARDS):
        return value
    raise ConfigError(f"{path}: got {value!r}{_closest(value, TUNING_GUARDS)} Allowed: "
                      f"{', '.join(TUNING_GUARDS)}, false (true means both).")


@dataclass(frozen=True)
class LayerwiseTuningConfig(_Config):
    """LayerwiseTuning keys and POT's defaults (spec §11; QuantizeModelFinetuning.__init__). In JSON
    they sit flat in ``params``; the fq learning rates keep POT's dotted names (``weight_fq.scale_lr``)."""

    num_samples_for_tuning: int = field(default=5000, metadata=_meta(_integer(1)))
    batch_size: int = field(default=25, metadata=_meta(_integer(1)))
    optimizer: str = field(default="Adam", metadata=_meta(_choice("Adam", "SGD")))
    loss: str = field(default="l2", metadata=_meta(_choice("l2")))
    weight_decay: float = field(default=0.0, metadata=_meta(_real(0.0)))
    calibration_indices_pool: int = field(default=300, metadata=_meta(_integer(1)))
    use_ranking_subset: bool = field(default=False, metadata=_meta(_boolean))
    calculate_grads_on_loss_increase_only: bool = field(default=False, metadata=_meta(_boolean))
    tuning_iterations: int | None = field(default=None, metadata=_meta(_unused))
    random_seed: int | None = field(default=None, metadata=_meta(_unused))
    weights_lr: float = field(default=1e-5, metadata=_meta(_real(0.0)))
    bias_lr: float = field(default=1e-4, metadata=_meta(_real(0.0)))
    weight_fq_scale_lr: float = field(default=1e-6, metadata=_meta(_real(0.0), json="weight_fq.scale_lr"))
    weight_fq_min_lr: float = field(default=1e-6, metadata=_meta(_real(0.0), json="weight_fq.min_lr"))
    input_fq_scale_lr: float = field(default=1e-6, metadata=_meta(_real(0.0), json="input_fq.scale_lr"))
    input_fq_min_lr: float = field(default=1e-6, metadata=_meta(_real(0.0), json="input_fq.min_lr"))
    scale_lr: float = field(default=1e-6, metadata=_meta(_real(0.0)))
    min_lr: float = field(default=1e-6, metadata=_meta(_real(0.0)))
    use_only_fp_inputs: bool = field(default=False, metadata=_meta(_boolean))
    update_every_batch: bool = field(default=True, metadata=_meta(_boolean))
    set_quantized_values_to_weight_parameter: bool = field(default=True, metadata=_meta(_boolean))
    asymmetric: bool = field(default=False, metadata=_meta(_boolean))
    loss_logging_freq: int = field(default=10, metadata=_meta(_integer(1)))
    # torchpqt extensions (README "Layerwise tuning")
    tuning_mode: str = field(default="simultaneous", metadata=_meta(_choice("simultaneous", "sequential")))
    tuning_guard: str | bool = field(default="both", metadata=_meta(_guard))
    tuning_guard_samples: int = field(default=50, metadata=_meta(_integer(1)))
