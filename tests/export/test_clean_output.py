"""A normal run shows the user torchpqt's own log lines only: nothing from torch, onnxscript or OpenVINO.

The pytest configuration hides some third-party warnings inside the test process, so the run goes to a fresh
interpreter, with Python's default warning filters, exactly as a user starts it.
"""

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxscript")
from export_models import SmallConvNet
from stderr_filter import foreign_lines
from torchpqt.exporters import onnx as onnx_export

REPO = Path(__file__).resolve().parents[2]


def test_foreign_lines_finds_third_party_output():
    stderr = ("INFO torchpqt: wrote x\n  FakeQuantize levels: 256x5\n"
              "W1204 02:50:30.322000 1 _registration.py:107] torchvision is not installed. Skipping a\n"
              "/x/copyreg.py:105: FutureWarning: `isinstance(treespec, LeafSpec)` is deprecated\n"
              "  return cls.__new__(cls, *args)\nWARNING torch.export: something\n")
    assert foreign_lines(stderr) == stderr.splitlines()[2:]


@pytest.mark.openvino
def test_quickstart_prints_only_torchpqt_lines(tmp_path):
    pytest.importorskip("openvino")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, str(REPO / "examples" / "quickstart.py"), "--quick", "--output-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "efficientnet_lite0_int8.xml").is_file()
    assert "INFO torchpqt: wrote OpenVINO IR" in proc.stderr
    assert foreign_lines(proc.stderr) == [], proc.stderr


def test_onnx_export_silences_only_its_own_call(caplog):
    """The filters live for the export call only (afterwards torch's loggers are the user's again), and what
    they drop goes to torchpqt's debug log."""
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    before = list(registry.filters)
    with caplog.at_level(logging.DEBUG):
        onnx_export.export_proto(SmallConvNet().eval(), torch.randn(1, 3, 16, 16))
    assert registry.filters == before
    if importlib.util.find_spec("torchvision") is None:
        dropped = [r for r in caplog.records if "torchvision is not installed" in r.getMessage()]
        assert dropped and all(r.name == "torchpqt" and r.levelno == logging.DEBUG for r in dropped)
    record = registry.makeRecord(registry.name, logging.WARNING, __file__, 0,
                                 "torchvision is not installed. Skipping %s", ("torchvision::nms",), None)
    assert registry.filter(record), "the registry logger still drops records after the export"
