"""Quantization math and the FakeQuantize module (OpenVINO opset1 semantics)."""

from torchpqt.quant.fake_quantize import FakeQuantize, fake_quantize
from torchpqt.quant.spec import QuantSpec

__all__ = ["FakeQuantize", "QuantSpec", "fake_quantize"]
