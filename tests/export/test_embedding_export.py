"""Bag-of-words text classifiers (int64 token ids → embedding → pooling → linear) quantize and export with the
default check on; the ReduceMean's input FakeQuantize sits on the Gather's output in the IR too."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import torchpqt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models

ov = pytest.importorskip("openvino")
from torchpqt.exporters import openvino as ov_export

pytestmark = pytest.mark.openvino


@pytest.mark.parametrize("name", ["bow_mean", "bow_mean_ln", "bow_sum"])
def test_bag_of_words_exports_and_matches_torch(tmp_path, name):
    model = models.build(name)
    q = torchpqt.quantize(model, models.calibration_data(name, 10), progress=False)
    example = torch.cat(models.calibration_data(name, 4, seed=1))
    report = ov_export.export(q, example, tmp_path / f"{name}.xml")  # raises if the check fails
    core = ov.Core()
    ir = core.read_model(str(report.path))
    fq_after_gather = [op for op in ir.get_ordered_ops() if op.get_type_name() == "FakeQuantize"
                       and op.input_value(0).get_node().get_type_name() == "Gather"]
    assert len(fq_after_gather) == (0 if name == "bow_sum" else 1)
    with torch.no_grad():
        ref = q(example).numpy()
    out = core.compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})([example.numpy()])[0]
    assert np.abs(out - ref).max() < 0.05  # room for a rounding tie flipped by another accumulation order
