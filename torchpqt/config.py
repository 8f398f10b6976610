"""The DefaultQuantization configuration: frozen dataclasses, validated at construction, that read
and write POT 2023.3's JSON (spec §1, §9, §11, §12).

Every value is checked when an object is built (from JSON, by hand, or through ``replace``); a bad
value raises :class:`~torchpqt.errors.ConfigError` naming the full key path (for example
``params.activations.range_estimator.max.aggregator``), what was given and what is allowed.
Sections (``weights``, ``activations``, ``range_estimator``, ``ignored``) keep only the keys the
user gave; the hardware rules complete them later. This module uses the standard library only.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import logging
import math
import numbers
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from torchpqt.errors import ConfigError

__all__ = [
    "AGGREGATORS",
    "CLI_COMPRESSION_KEYS",
    "DEFAULT_OUTLIER_PROB",
    "PRESETS",
    "STATISTIC_TYPES",
    "TARGET_DEVICES",
    "DefaultQuantizationConfig",
    "IgnoredConfig",
    "IgnoredOperation",
    "LayerwiseTuningConfig",
    "QuantizerConfig",
    "RangeEstimatorConfig",
    "StatisticConfig",
    "load_config",
]

logger = logging.getLogger("torchpqt")

PRESETS = ("performance", "mixed", "accuracy")
TARGET_DEVICES = ("CPU", "ANY", "GPU", "GNA", "GNA3", "GNA3.5", "CPU_SPR")
STATISTIC_TYPES = ("min", "max", "abs_max", "quantile", "abs_quantile")
AGGREGATORS = ("mean", "max", "min", "median", "mean_no_outliers", "median_no_outliers", "hl_estimator")
DEFAULT_OUTLIER_PROB = 1e-4  # the value of POT's quantile presets (range_estimator.py)
CLI_COMPRESSION_KEYS = ("target_device", "model_type", "inplace_statistics", "dump_intermediate_model")
_GNA_DEVICES = ("GNA", "GNA3", "GNA3.5")
_CLI_PRESET_ALIASES = {"symmetric": "performance", "asymmetric": "accuracy"}
# Keys written one level too high are a common slip; say where they belong.
_SECTION_KEYS = {
    "a 'weights' or 'activations' section": ("bits", "mode", "granularity", "level_low", "level_high"),
    "a range_estimator's 'min' or 'max'": ("type", "outlier_prob", "aggregator", "clipping_value"),
    "the 'ignored' section": ("skip_model", "scope", "operations"),
}
_MISPLACED = {key: f"; it belongs inside {where}." for where, keys in _SECTION_KEYS.items() for key in keys}

# The key path of the object being parsed, so that __post_init__ can name `params.weights.bits`
# rather than `QuantizerConfig.bits` when the object comes from JSON.
_PATH: contextvars.ContextVar[str | None] = contextvars.ContextVar("torchpqt_config_path", default=None)

Check = Callable[[str, Any], Any]  # (key path, value) -> normalized value, or raises ConfigError


# ---------------------------------------------------------------- value checks


def _closest(word: Any, options: Any) -> str:
    options = [str(o) for o in options]
    same_case = [o for o in options if o.lower() == str(word).lower()]
    match = same_case or difflib.get_close_matches(str(word), options, n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _fail(path: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{path}: expected {expected}, got {value!r}")


def _unknown_key(path: str, key: Any, known: Any) -> ConfigError:
    where = f"{path}.{key}" if path else str(key)
    hint = _closest(key, known) or _MISPLACED.get(str(key), "")
    listing = (
        f" Valid keys there: {', '.join(sorted(known))}."
        if len(known) <= 12
        else " The README's Configuration reference lists every key."
    )
    return ConfigError(f"Unknown key {where}{hint or '.'}{listing}")


def _integer(low: int | None = None, high: int | None = None) -> Check:
    span = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"

    def check(path: str, value: Any) -> int:
        # Booleans are ints in Python; `bits: true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise _fail(path, value, span)
        if (low is not None and value < low) or (high is not None and value > high):
            raise _fail(path, value, span)
        return int(value)

    return check


def _real(low: float | None = None, high: float | None = None, *, strict: bool = False) -> Check:
    """A finite number in [low, high], or in (low, high) when strict."""
    op = ("<", ">") if strict else ("<=", ">=")
    bounds = [f"{op[1]} {low}" if low is not None else "", f"{op[0]} {high}" if high is not None else ""]
    span = "a finite number " + " and ".join(b for b in bounds if b)

    def check(path: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise _fail(path, value, span.strip())
        below = low is not None and (value <= low if strict else value < low)
        above = high is not None and (value >= high if strict else value > high)
        if below or above:
            raise _fail(path, value, span)
        return float(value)

    return check


def _boolean(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, value, "true or false")
    return value


def _choice(*allowed: str) -> Check:
    def check(path: str, value: Any) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise ConfigError(
                f"{path}: got {value!r}{_closest(value, allowed)} Allowed: {', '.join(allowed)}."
            )
        return value

    return check


def _optional(check: Check) -> Check:
    return lambda path, value: None if value is None else check(path, value)


def _section(cls: type) -> Check:
    def check(path: str, value: Any) -> Any:
        return value if isinstance(value, cls) else cls._parse(value, path)

    return check


def _meta(check: Check, *, json: str | None = None, flat: bool = False) -> dict[str, Any]:
    """Field metadata: the value check, the JSON key when it is not the field name (POT's dotted
    lr names), and ``flat`` for a sub-config whose keys sit directly in the parent's JSON."""
    return {"check": check, "json": json, "flat": flat}


def _json_name(f: dataclasses.Field) -> str:
    return f.metadata.get("json") or f.name


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _to_json(value: Any) -> Any:
    if isinstance(value, _Config):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    return value


# ---------------------------------------------------------------- shared machinery


class _Config:
    """Validation at construction and JSON in/out, shared by every config dataclass."""

    def __post_init__(self) -> None:
        path = _PATH.get() or type(self).__name__
        for f in fields(self):  # type: ignore[arg-type]
            value = f.metadata["check"](f"{path}.{_json_name(f)}", getattr(self, f.name))
            object.__setattr__(self, f.name, value)
        self._check(path)

    def _check(self, path: str) -> None:
        """Rules across fields; each field on its own is already valid here."""

    @classmethod
    def _json_keys(cls) -> dict[str, str]:
        """JSON key -> field name, leaving out fields whose keys sit flat in this object."""
        return {_json_name(f): f.name for f in fields(cls) if not f.metadata.get("flat")}  # type: ignore[arg-type]

    @classmethod
    def _parse(cls, raw: Any, path: str) -> Any:
        if not isinstance(raw, Mapping):
            raise _fail(path, raw, "a JSON object (dict)")
        kwargs = cls._kwargs(raw, path)
        token = _PATH.set(path)
        try:
            return cls(**kwargs)
        finally:
            _PATH.reset(token)

    @classmethod
    def _kwargs(cls, raw: Mapping[str, Any], path: str, extra_keys: tuple[str, ...] = ()) -> dict[str, Any]:
        """Maps JSON keys to constructor arguments; unknown or missing keys are errors."""
        names = cls._json_keys()
        for key in raw:
            if key not in names:
                raise _unknown_key(path, key, [*names, *extra_keys])
        for f in fields(cls):  # type: ignore[arg-type]
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required and _json_name(f) not in raw:
                raise ConfigError(f"{path}.{_json_name(f)}: required key is missing.")
        return {names[k]: v for k, v in raw.items()}

    def to_dict(self, full: bool = False) -> dict[str, Any]:
        """The POT JSON of this object: the keys that were given (differ from the default), or all."""
        return {
            _json_name(f): _to_json(getattr(self, f.name))
            for f in fields(self)  # type: ignore[arg-type]
            if full or getattr(self, f.name) != _default(f)
        }


# ---------------------------------------------------------------- range estimators


@dataclass(frozen=True)
class StatisticConfig(_Config):
    """One side (``min`` or ``max``) of a range estimator (spec §1.3, §5). Every key is optional.

    ``type: quantile``/``abs_quantile`` without ``outlier_prob`` gets 1e-4 (POT crashed there).
    """

    type: str | None = field(default=None, metadata=_meta(_optional(_choice(*STATISTIC_TYPES))))
    outlier_prob: float | None = field(default=None, metadata=_meta(_optional(_real(0.0, 0.5, strict=True))))
    aggregator: str | None = field(default=None, metadata=_meta(_optional(_choice(*AGGREGATORS))))
    granularity: str | None = field(
        default=None, metadata=_meta(_optional(_choice("pertensor", "perchannel")))
    )
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

    preset: str | None = field(default=None, metadata=_meta(_optional(_choice("default", "quantile"))))
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
    mode: str | None = field(default=None, metadata=_meta(_optional(_choice("symmetric", "asymmetric"))))
    granularity: str | None = field(
        default=None, metadata=_meta(_optional(_choice("pertensor", "perchannel")))
    )
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


def _sequence(item: Check, what: str) -> Check:
    def check(path: str, value: Any) -> tuple:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
            raise _fail(path, value, f"a list of {what} (write [{value!r}] for a single entry)")
        return tuple(item(f"{path}[{i}]", v) for i, v in enumerate(value))

    return check


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


# ---------------------------------------------------------------- DefaultQuantization


def _preset(path: str, value: Any) -> str:
    if value is None or value == "":
        return "performance"  # POT: an absent or empty preset means performance
    if isinstance(value, str) and value in _CLI_PRESET_ALIASES:
        raise ConfigError(
            f"{path}: {value!r} is a POT CLI alias; in a params dict write "
            f"{_CLI_PRESET_ALIASES[value]!r} (DefaultQuantizationConfig.from_pot_cli maps it)."
        )
    return _choice(*PRESETS)(path, value)


def _target_device(path: str, value: Any) -> str:
    if value == "NPU":
        raise ConfigError(
            f"{path}: 'NPU' is not supported: POT 2023.3 shipped no NPU hardware rules (npu.json is "
            "missing, so POT failed with FileNotFoundError). Use 'CPU' or 'ANY'."
        )
    return _choice(*TARGET_DEVICES)(path, value)


def _model_type(path: str, value: Any) -> str | None:
    if value is None or value in ("None", ""):
        return None  # POT: Config._configure_algo_params maps the string "None" to None
    return _choice("transformer")(path, value)


@dataclass(frozen=True)
class DefaultQuantizationConfig(_Config):
    """Every parameter DefaultQuantization reads (spec §1.2, §1.3, §11), with POT's API defaults
    except ``target_device`` (CPU here; POT's API crashed without it).

    Build it with :meth:`from_dict` (POT API JSON), :meth:`from_pot_cli` (POT CLI file) or
    :func:`load_config`; derive variants with :meth:`replace`, which validates again.
    """

    preset: str = field(default="performance", metadata=_meta(_preset))
    stat_subset_size: int | None = field(default=None, metadata=_meta(_optional(_integer(1))))
    stat_batch_size: int = field(default=1, metadata=_meta(_integer(1)))
    shuffle_data: bool = field(default=False, metadata=_meta(_boolean))
    # numpy's seed range: layerwise tuning seeds numpy with it
    seed: int = field(default=0, metadata=_meta(_integer(0, 2**32 - 1)))
    target_device: str = field(default="CPU", metadata=_meta(_target_device))
    model_type: str | None = field(default=None, metadata=_meta(_model_type))
    # POT: the API read config['inplace_statistics'] from an addict Dict: absent -> empty Dict -> falsy
    inplace_statistics: bool = field(default=False, metadata=_meta(_boolean))
    dump_intermediate_model: bool = field(default=False, metadata=_meta(_boolean))
    use_fast_bias: bool = field(default=True, metadata=_meta(_boolean))
    use_layerwise_tuning: bool = field(default=False, metadata=_meta(_boolean))
    saturation_fix: str = field(default="first_layer", metadata=_meta(_choice("first_layer", "all", "no")))
    threshold: float | None = field(default=None, metadata=_meta(_optional(_real(0.0, strict=True))))
    apply_for_all_nodes: bool = field(default=False, metadata=_meta(_boolean))
    ignored: IgnoredConfig = field(default_factory=IgnoredConfig, metadata=_meta(_section(IgnoredConfig)))
    weights: QuantizerConfig = field(
        default_factory=QuantizerConfig, metadata=_meta(_section(QuantizerConfig))
    )
    activations: QuantizerConfig = field(
        default_factory=QuantizerConfig, metadata=_meta(_section(QuantizerConfig))
    )
    range_estimator: RangeEstimatorConfig | None = field(
        default=None, metadata=_meta(_optional(_section(RangeEstimatorConfig)))
    )
    layerwise_tuning: LayerwiseTuningConfig = field(
        default_factory=LayerwiseTuningConfig,
        metadata=_meta(_section(LayerwiseTuningConfig), flat=True),
    )

    @property
    def resolved_threshold(self) -> float:
        """``threshold``, or its default: 2.0 for fast bias correction, 1000.0 for bias correction."""
        if self.threshold is not None:
            return self.threshold
        return 2.0 if self.use_fast_bias else 1000.0  # POT: FastBiasCorrection / BiasCorrection defaults

    def _check(self, path: str) -> None:
        # POT's CLI (Config.validate_algo_config) allows `aggregator` only under activations.
        no_weights = "weight statistics are reduced once over the constant, there is nothing to aggregate"
        no_global = "the global range_estimator also serves weights; set it in activations.range_estimator"
        estimators = (
            ("weights.range_estimator", self.weights.range_estimator, no_weights),
            ("range_estimator", self.range_estimator, no_global),
        )
        for where, estimator, why in estimators:
            for side in ("min", "max"):
                stat = getattr(estimator, side, None)
                if stat is not None and stat.aggregator is not None:
                    raise ConfigError(
                        f"{path}.{where}.{side}.aggregator: not allowed here ({why}; POT's CLI rejects it too)."
                    )
        if not self.use_layerwise_tuning and self.layerwise_tuning != LayerwiseTuningConfig():
            logger.info("%s: layerwise tuning keys are set but use_layerwise_tuning is false", path)

    @classmethod
    def _kwargs(cls, raw: Mapping[str, Any], path: str, extra_keys: tuple[str, ...] = ()) -> dict[str, Any]:
        tuning_keys = tuple(LayerwiseTuningConfig._json_keys())
        own = {k: v for k, v in raw.items() if k not in tuning_keys}
        kwargs = super()._kwargs(own, path, extra_keys=tuning_keys)
        tuning = {k: v for k, v in raw.items() if k in tuning_keys}
        kwargs["layerwise_tuning"] = LayerwiseTuningConfig._parse(tuning, path)
        return kwargs

    def to_dict(self, full: bool = False) -> dict[str, Any]:
        """The ``params`` dict: only the keys that differ from the defaults (so a minimal JSON
        round-trips exactly), or every key with ``full=True``. Tuning keys sit flat, as in POT."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("flat"):
                out.update(value.to_dict(full=full))
            elif full or value != _default(f):
                out[_json_name(f)] = _to_json(value)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DefaultQuantizationConfig:
        """Builds the config from POT API JSON.

        Args:
            d: ``{"name": "DefaultQuantization", "params": {...}}`` or the ``params`` dict alone.

        Raises:
            ConfigError: a key is unknown or a value is invalid; the message names the key path.
        """
        if not isinstance(d, Mapping):
            raise _fail("config", d, "a dict: {'name': 'DefaultQuantization', 'params': {...}} or the params")
        if "params" not in d and "name" not in d:
            return cls._parse(d, "params")
        for key in d:
            if key not in ("name", "params"):
                raise _unknown_key("", key, ("name", "params"))
        name = d.get("name", "DefaultQuantization")
        if name != "DefaultQuantization":
            raise ConfigError(f"name: torchpqt implements only 'DefaultQuantization', got {name!r}.")
        return cls._parse(d.get("params", {}), "params")

    @classmethod
    def from_pot_cli(
        cls, compression: Mapping[str, Any], params: Mapping[str, Any]
    ) -> DefaultQuantizationConfig:
        """Builds the config as POT's CLI did (``Config._configure_algo_params``, spec §1.1, §12).

        ``target_device`` (default ANY), ``model_type``, ``inplace_statistics`` (default True) and
        ``dump_intermediate_model`` come from ``compression`` and are errors inside ``params``. The
        preset aliases symmetric/asymmetric apply, then the per-device renaming (CPU, ANY, GPU,
        CPU_SPR: accuracy -> mixed; GNA, GNA3, GNA3.5: mixed -> accuracy).

        Args:
            compression: the file's ``compression`` section (its ``algorithms`` key is not read).
            params: the ``params`` of the DefaultQuantization entry of ``compression.algorithms``.

        Raises:
            ConfigError: a key is misplaced or unknown, or a value is invalid.
        """
        for where, section in (("compression", compression), ("params", params)):
            if not isinstance(section, Mapping):
                raise _fail(where, section, "a JSON object (dict)")
        for key in compression:
            if key not in (*CLI_COMPRESSION_KEYS, "algorithms"):
                raise _unknown_key("compression", key, (*CLI_COMPRESSION_KEYS, "algorithms"))
        for key in CLI_COMPRESSION_KEYS:
            if key in params:
                raise ConfigError(
                    f"params.{key}: in a CLI config this key belongs in the 'compression' section, not in "
                    f"the algorithm's params (POT rejects it there as an unknown parameter); move it to "
                    f"compression.{key}."
                )
        merged = {**params, **_cli_compression(compression)}
        merged["preset"] = _cli_preset(params.get("preset", "performance"), merged["target_device"])
        return cls._parse(merged, "params")

    def replace(self, **changes: Any) -> DefaultQuantizationConfig:
        """A copy with ``changes`` (field names) applied, validated again.

        Raises:
            ConfigError: an unknown field name or an invalid value.
        """
        names = [f.name for f in fields(self)]
        for name in changes:
            if name not in names:
                raise ConfigError(f"replace(): unknown field {name!r}{_closest(name, names)}")
        return dataclasses.replace(self, **changes)


def _cli_compression(compression: Mapping[str, Any]) -> dict[str, Any]:
    """The four params POT's CLI takes from ``compression``, with the CLI defaults, checked there."""
    # POT: Config._configure_algo_params (defaults ANY, None, True, False; model_type "None" -> None)
    defaults = {"target_device": "ANY", "model_type": None, "inplace_statistics": True}
    checks = {"target_device": _target_device, "model_type": _model_type, "inplace_statistics": _boolean}
    checks["dump_intermediate_model"] = _boolean
    return {
        key: check(f"compression.{key}", compression.get(key, defaults.get(key, False)))
        for key, check in checks.items()
    }


def _cli_preset(preset: Any, device: str) -> Any:
    """POT CLI preset mapping: aliases first, then the per-device renaming."""
    if not isinstance(preset, str):
        return preset  # left to the preset check, which names the key
    aliased = _CLI_PRESET_ALIASES.get(preset, preset)
    # POT: Config._configure_algo_params; devices without an entry (CPU_SPR) rename accuracy -> mixed.
    rename = (
        {"accuracy": "accuracy", "mixed": "accuracy"} if device in _GNA_DEVICES else {"accuracy": "mixed"}
    )
    renamed = rename.get(aliased, aliased)
    if renamed != preset:
        logger.info("CLI preset %r becomes %r for target_device %s (POT CLI rule)", preset, renamed, device)
    return renamed


def load_config(obj: Any = None) -> DefaultQuantizationConfig:
    """Turns what a user passes as ``config`` into a :class:`DefaultQuantizationConfig`.

    Args:
        obj: None (all defaults), a :class:`DefaultQuantizationConfig` (returned as is), or a dict:
            ``{"name": "DefaultQuantization", "params": {...}}`` or the params alone.

    Raises:
        ConfigError: ``obj`` is of another type, or the dict is invalid.
    """
    if obj is None:
        return DefaultQuantizationConfig()
    if isinstance(obj, DefaultQuantizationConfig):
        return obj
    if isinstance(obj, Mapping):
        return DefaultQuantizationConfig.from_dict(obj)
    raise _fail("config", obj, "None, a dict of POT params or a torchpqt.DefaultQuantizationConfig")
