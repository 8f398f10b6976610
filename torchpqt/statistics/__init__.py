"""Activation and weight statistics: per-sample reducers, cross-sample aggregators, the range estimators
that say which statistics each FakeQuantize needs (spec §5, §6), and the store that holds what a
calibration pass collected."""

from .aggregators import AGGREGATORS, Aggregator, finalize, make_aggregator, merge
from .collector import TensorStatistics
from .estimators import StatSpec, range_estimator, statistic_key
from .reducers import minmax, reduce, weight_stat
from .store import StatisticsStore

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "StatSpec",
    "StatisticsStore",
    "TensorStatistics",
    "finalize",
    "make_aggregator",
    "merge",
    "minmax",
    "range_estimator",
    "reduce",
    "statistic_key",
    "weight_stat",
]
