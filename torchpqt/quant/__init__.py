"""Quantization math and the FakeQuantize module (OpenVINO opset1 semantics).

The functional form lives in :mod:`torchpqt.quant.fake_quantize` (``fake_quantize``); it is not
re-exported here so that the name keeps meaning the submodule.
"""

from torchpqt.quant.fake_quantize import FakeQuantize
from torchpqt.quant.spec import QuantSpec
from torchpqt.quant.trainable import freeze_ranges, train_ranges, trainable_ranges

__all__ = ["FakeQuantize", "QuantSpec", "freeze_ranges", "train_ranges", "trainable_ranges"]
