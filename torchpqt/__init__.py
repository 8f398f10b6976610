"""torchpqt: OpenVINO POT's DefaultQuantization for PyTorch models.

``prepare`` → calibrate → ``convert`` (or ``quantize`` in one call) gives a model with
:class:`FakeQuantize` modules of OpenVINO's semantics, exportable with ``torchpqt.exporters``.
"""

from torchpqt import distributed
from torchpqt.analysis import Analysis, analyze
from torchpqt.api import QuantizationPlan, collect_statistics, convert, plan, prepare, quantize
from torchpqt.config import DefaultQuantizationConfig, load_config
from torchpqt.errors import (
    CalibrationError,
    CaptureError,
    ConfigError,
    ExportError,
    ScopeError,
    TorchPQTError,
)
from torchpqt.inputs import ModelInputs
from torchpqt.manifest import Reproduction, reproduce
from torchpqt.qat import freeze_ranges, load, train_ranges
from torchpqt.quant.fake_quantize import FakeQuantize
from torchpqt.statistics.store import StatisticsStore

__version__ = "0.1.0"

__all__ = [
    "Analysis",
    "CalibrationError",
    "CaptureError",
    "ConfigError",
    "DefaultQuantizationConfig",
    "ExportError",
    "FakeQuantize",
    "ModelInputs",
    "QuantizationPlan",
    "Reproduction",
    "ScopeError",
    "StatisticsStore",
    "TorchPQTError",
    "__version__",
    "analyze",
    "collect_statistics",
    "convert",
    "distributed",
    "freeze_ranges",
    "load",
    "load_config",
    "plan",
    "prepare",
    "quantize",
    "reproduce",
    "train_ranges",
]
