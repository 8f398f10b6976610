"""Packaging promises: a light `import torchpqt`, the exporters subpackage, the public names."""

import subprocess
import sys
from pathlib import Path

import pytest

import torchpqt


def test_import_torchpqt_does_not_import_onnx_or_openvino():
    code = ("import sys, torchpqt; torchpqt.quantize; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'openvino', 'onnxscript')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_exporters_install_as_a_subpackage():
    code = "import torchpqt.exporters.onnx, torchpqt.exporters.openvino; import importlib.util as u; " \
           "print(u.find_spec('exporters') is None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "True", "no bare `exporters` package may land on the user's path"


def test_public_api():
    for name in ("prepare", "convert", "quantize", "plan", "FakeQuantize", "DefaultQuantizationConfig",
                 "CalibrationError", "ConfigError", "CaptureError", "ScopeError", "ExportError", "TorchPQTError"):
        assert name in torchpqt.__all__ and hasattr(torchpqt, name), name


def test_public_api_of_the_pipeline():
    for name in ("collect_statistics", "StatisticsStore", "ModelInputs", "distributed"):
        assert name in torchpqt.__all__ and hasattr(torchpqt, name), name


def test_gitignore_matches_no_tracked_file():
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=root, input=files,
                             capture_output=True, text=True, check=False).stdout
    assert ignored.split() == []
