"""torchpqt: OpenVINO POT's DefaultQuantization for PyTorch models.

``prepare`` → calibrate → ``convert`` (or ``quantize`` in one call) gives a model with
:class:`FakeQuantize` modules of OpenVINO's semantics, exportable with ``torchpqt.exporters``.
"""

from torchpqt.api import QuantizationPlan, convert, plan, prepare, quantize
from torchpqt.config import DefaultQuantizationConfig, load_config
from torchpqt.errors import (
    CalibrationError,
    CaptureError,
    ConfigError,
    ExportError,
    ScopeError,
    TorchPQTError,
)
from torchpqt.quant.fake_quantize import FakeQuantize

__version__ = "0.1.0"

__all__ = [
    "CalibrationError",
    "CaptureError",
    "ConfigError",
    "DefaultQuantizationConfig",
    "ExportError",
    "FakeQuantize",
    "QuantizationPlan",
    "ScopeError",
    "TorchPQTError",
    "__version__",
    "convert",
    "load_config",
    "plan",
    "prepare",
    "quantize",
]
