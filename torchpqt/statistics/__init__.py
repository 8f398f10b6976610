"""Activation and weight statistics: per-sample reducers, cross-sample aggregators, and the
range estimators that say which statistics each FakeQuantize needs (spec §5, §6)."""

from .aggregators import AGGREGATORS, Aggregator, make_aggregator
from .collector import TensorStatistics
from .estimators import StatSpec, range_estimator
from .reducers import minmax, reduce, weight_stat

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "StatSpec",
    "TensorStatistics",
    "make_aggregator",
    "minmax",
    "range_estimator",
    "reduce",
    "weight_stat",
]
