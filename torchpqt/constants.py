"""Every constant set torchpqt shares between modules, in one place (POT's names and values).

Standard library only: the config package and the hardware rules both read it.
"""

from __future__ import annotations

__all__ = [
    "AGGREGATORS",
    "DEFAULT_OUTLIER_PROB",
    "GNA_DEVICES",
    "GRANULARITIES",
    "GROUPS",
    "MODES",
    "PRESETS",
    "QUANTILE_TYPES",
    "QUANTIZER_KEYS",
    "RANGE_ESTIMATOR_PRESETS",
    "STATISTIC_KEYS",
    "STATISTIC_TYPES",
    "STAT_AGGREGATORS",
    "STAT_TYPES",
    "TARGET_DEVICES",
]

#: DefaultQuantization presets (spec §1.2).
PRESETS: tuple[str, ...] = ("performance", "mixed", "accuracy")
#: Target devices with POT hardware rules; NPU is left out (POT 2023.3 ships no npu.json).
TARGET_DEVICES: tuple[str, ...] = ("CPU", "ANY", "GPU", "GNA", "GNA3", "GNA3.5", "CPU_SPR")
#: The GNA targets: `outputs` FakeQuantize, OverflowCorrection, the CLI's preset renaming (spec §10.4, §12).
GNA_DEVICES: tuple[str, ...] = ("GNA", "GNA3", "GNA3.5")

#: FakeQuantize groups, in POT's order (``QUANTIZATION_MODES``); `outputs` exists on GNA only.
GROUPS: tuple[str, ...] = ("weights", "activations", "outputs")
MODES: tuple[str, ...] = ("symmetric", "asymmetric")
GRANULARITIES: tuple[str, ...] = ("pertensor", "perchannel")
#: The keys of a weights/activations section that select a hardware config.
#: POT: ``QUANTIZATION_PARAMETERS`` in ``fake_quantize_configuration.py``.
QUANTIZER_KEYS: tuple[str, ...] = ("bits", "mode", "granularity", "level_low", "level_high")

#: range_estimator presets (spec §5.1).
RANGE_ESTIMATOR_PRESETS: tuple[str, ...] = ("default", "quantile")
#: The keys of a range estimator's `min` / `max` (spec §5.4).
STATISTIC_KEYS: tuple[str, ...] = ("type", "aggregator", "granularity", "outlier_prob", "clipping_value")
#: Statistic types a config may name.
STATISTIC_TYPES: tuple[str, ...] = ("min", "max", "abs_max", "quantile", "abs_quantile")
#: Statistic types the reducers compute: the config's, and the per-channel mean bias correction reads.
STAT_TYPES: tuple[str, ...] = (*STATISTIC_TYPES, "mean")
QUANTILE_TYPES: tuple[str, ...] = ("quantile", "abs_quantile")
#: Cross-sample aggregators a config may name (spec §5.3).
AGGREGATORS: tuple[str, ...] = (
    "mean", "max", "min", "median", "mean_no_outliers", "median_no_outliers", "hl_estimator",
)
#: The aggregators the statistics package implements: the config's, and batch_mean (bias correction).
STAT_AGGREGATORS: tuple[str, ...] = (*AGGREGATORS, "batch_mean")
#: The quantile presets' outlier_prob, also used for `type: quantile` without one (POT crashed there).
DEFAULT_OUTLIER_PROB = 1e-4
