"""One home for each constant set: the config, the hardware rules and the statistics read the same tuples."""

from torchpqt import config, constants, hardware, statistics
from torchpqt.algorithms import overflow_correction
from torchpqt.statistics import estimators


def test_every_module_reads_the_constants():
    assert config.PRESETS is constants.PRESETS and hardware.PRESETS is constants.PRESETS
    assert config.TARGET_DEVICES is constants.TARGET_DEVICES
    assert set(hardware.TARGET_DEVICES) == set(constants.TARGET_DEVICES)  # every device has its rule file
    assert hardware.GROUPS is constants.GROUPS
    assert hardware.USER_KEYS is constants.QUANTIZER_KEYS
    assert config.AGGREGATORS is constants.AGGREGATORS and config.STATISTIC_TYPES is constants.STATISTIC_TYPES
    assert statistics.AGGREGATORS == (*constants.AGGREGATORS, "batch_mean")
    assert estimators.STAT_TYPES is constants.STAT_TYPES and estimators.QUANTILE_TYPES is constants.QUANTILE_TYPES
    assert config.DEFAULT_OUTLIER_PROB == estimators.DEFAULT_OUTLIER_PROB == constants.DEFAULT_OUTLIER_PROB
    assert overflow_correction.DEVICES is constants.GNA_DEVICES
