"""Typed errors. Every error torchpqt raises on purpose derives from :class:`TorchPQTError`."""

__all__ = ["CalibrationError", "CaptureError", "CliError", "ConfigError", "ExportError", "ScopeError",
           "TorchPQTError"]


class TorchPQTError(Exception):
    """Base class of all torchpqt errors."""


class ConfigError(TorchPQTError, ValueError):
    """A configuration key or value is wrong; the message names the key path and the allowed values."""


class CaptureError(TorchPQTError):
    """The model could not be captured into a graph; the message names the module and the fix."""


class CliError(ConfigError):
    """A bad command line or CLI config file; the message names the problem and the fix."""


class ScopeError(ConfigError):
    """An ``ignored`` rule matches nothing in the model; the message lists close matches."""


class ExportError(TorchPQTError):
    """The quantized model cannot be exported as asked; the message names the FakeQuantize and why."""


class CalibrationError(TorchPQTError):
    """A calibration sample cannot be used (NaN/Inf, a shape the model cannot take) or made a statistic
    non-finite; the message names the sample or the FakeQuantize point and the fix."""
