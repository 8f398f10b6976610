"""When accuracy drops: per-FakeQuantize sensitivity (:func:`analyze`), a suggested ``ignored.scope`` and a
report with plots (:func:`write_report`)."""

from torchpqt.analysis.report import write_report
from torchpqt.analysis.sensitivity import Analysis, SensitivityRow, analyze, fake_quantize_enabled, sqnr_db

__all__ = ["Analysis", "SensitivityRow", "analyze", "fake_quantize_enabled", "sqnr_db", "write_report"]
