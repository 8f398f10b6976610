"""examples/qat.py end to end in its --quick form (slow: tests/qat/test_qat.py covers each step)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.openvino
def test_qat_example_quick_writes_metrics(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("openvino")
    subprocess.run([sys.executable, "examples/qat.py", "--quick", "--output-dir", str(tmp_path)], cwd=ROOT,
                   check=True, timeout=600, capture_output=True)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) >= {"fp32", "ptq", "qat"}
    for name in ("fp32", "ptq", "qat"):
        assert 0 <= metrics[name]["ir"] <= 100
    assert metrics["qat"]["ir"] >= metrics["ptq"]["ir"]
    assert metrics["qat"]["ir_vs_torch_argmax_agreement"] >= 99
