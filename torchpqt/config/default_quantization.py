"""DefaultQuantizationConfig, the POT CLI mapping (``from_pot_cli``) and :func:`load_config`
(spec §1.1, §1.2, §12)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from torchpqt.config._base import _Config, _default, _json_name, _meta, _to_json
from torchpqt.config._checks import (
    _boolean,
    _choice,
    _closest,
    _fail,
    _integer,
    _optional,
    _real,
    _section,
    _unknown_key,
)
from torchpqt.config.sections import (
    IgnoredConfig,
    LayerwiseTuningConfig,
    QuantizerConfig,
    RangeEstimatorConfig,
)
from torchpqt.constants import GNA_DEVICES, PRESETS, TARGET_DEVICES
from torchpqt.errors import ConfigError

__all__ = ["CLI_COMPRESSION_KEYS", "PRESETS", "TARGET_DEVICES", "DefaultQuantizationConfig", "load_config"]

logger = logging.getLogger("torchpqt")

CLI_COMPRESSION_KEYS = ("target_device", "model_type", "inplace_statistics", "dump_intermediate_model")
_CLI_PRESET_ALIASES = {"symmetric": "performance", "asymmetric": "accuracy"}


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
    # torchpqt extensions (default false: POT's behaviour), see the README's differences from POT
    correct_zero_bias: bool = field(default=False, metadata=_meta(_boolean))
    fast_bias_padding_fix: bool = field(default=False, metadata=_meta(_boolean))
    # torchpqt extension: "shared" (default) derives the aligned tensors' statistics from the first pass;
    # "separate" runs POT's second calibration pass on the aligned model
    alignment_pass: str = field(default="shared", metadata=_meta(_choice("shared", "separate")))
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
        {"accuracy": "accuracy", "mixed": "accuracy"} if device in GNA_DEVICES else {"accuracy": "mixed"}
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
