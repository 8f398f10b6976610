"""The DefaultQuantization configuration: frozen dataclasses, validated at construction, that read
and write POT 2023.3's JSON (spec §1, §9, §11, §12).

Every value is checked when an object is built (from JSON, by hand, or through ``replace``); a bad
value raises :class:`~torchpqt.errors.ConfigError` naming the full key path (for example
``params.activations.range_estimator.max.aggregator``), what was given and what is allowed.
Sections (``weights``, ``activations``, ``range_estimator``, ``ignored``) keep only the keys the
user gave; the hardware rules complete them later. This package uses the standard library only.

Modules: ``sections`` (range estimators, weights/activations, ignored, layerwise tuning),
``default_quantization`` (:class:`DefaultQuantizationConfig`, the POT CLI mapping, :func:`load_config`);
``_checks`` (value checks) and ``_base`` (validation and JSON in/out) are private.
"""

from torchpqt.config.default_quantization import (
    CLI_COMPRESSION_KEYS,
    PRESETS,
    TARGET_DEVICES,
    DefaultQuantizationConfig,
    load_config,
)
from torchpqt.config.sections import (
    AGGREGATORS,
    DEFAULT_OUTLIER_PROB,
    STATISTIC_TYPES,
    IgnoredConfig,
    IgnoredOperation,
    LayerwiseTuningConfig,
    QuantizerConfig,
    RangeEstimatorConfig,
    StatisticConfig,
)

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
