"""Exporters of fake-quantized torch models (installed as ``torchpqt.exporters``).

* :mod:`torchpqt.exporters.onnx`: ONNX with ``org.openvinotoolkit::FakeQuantize`` nodes, or QDQ.
* :mod:`torchpqt.exporters.openvino`: OpenVINO IR (.xml/.bin) with FakeQuantize nodes and
  int8-compressed weights, checked against the torch model on CPU.

Each submodule imports onnx / openvino itself, so ``import torchpqt`` stays light.
"""

__all__ = ["onnx", "openvino"]
