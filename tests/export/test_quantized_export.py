"""torchpqt.quantize() output → OpenVINO IR: the CNN and the small transformer of the capture tests export,
run within one quantization step of the torch fake-quant model, and the CNN's convolutions run int8."""

import models
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchpqt

ov = pytest.importorskip("openvino")
from torchpqt.exporters import openvino as ov_export

pytestmark = pytest.mark.openvino


class DigitsCNN(nn.Module):
    """conv-bn-relu, maxpool, depthwise conv with a residual add, global pooling, linear (8x8 digits)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.fc = nn.Linear(32, 10)
        self.bn1.running_mean.uniform_(-0.3, 0.3)
        self.bn1.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.dw(x)) + x
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


Encoder = models.MaskedEncoder


def test_digits_cnn_ir_matches_torch_and_runs_int8(tmp_path):
    sklearn = pytest.importorskip("sklearn.datasets")
    images = torch.tensor(sklearn.load_digits().images[:64], dtype=torch.float32)[:, None] / 16.0
    model = DigitsCNN().eval()
    q = torchpqt.quantize(model, [images[i:i + 1] for i in range(48)], {"stat_subset_size": 48}, progress=False)
    report = ov_export.export(q, images[48:56], tmp_path / "digits.xml")
    assert report.max_diff_steps <= 1.0, str(report)
    assert report.int8_share == 1.0, str(report)
    assert len(report.op_precisions) == 4  # conv1, conv2, depthwise, fc


@pytest.mark.parametrize("model_type", [None, "transformer"])
def test_small_transformer_ir_matches_torch(tmp_path, model_type):
    g = torch.Generator().manual_seed(0)
    data = [(torch.randint(0, 50, (1, 6), generator=g), torch.ones(1, 6, dtype=torch.long)) for _ in range(8)]
    model = Encoder().eval()
    q = torchpqt.quantize(model, data, {"preset": "mixed", "model_type": model_type}, progress=False)
    example = (torch.randint(0, 50, (2, 6), generator=g), torch.ones(2, 6, dtype=torch.long))
    report = ov_export.export(q, example, tmp_path / "encoder.xml")
    assert report.max_diff_steps <= 1.0, str(report)
    core = ov.Core()
    ir = core.read_model(str(report.path))
    fqs = [op for op in ir.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    assert len(fqs) >= sum(p.group == "activations" for p in q.torchpqt_plan.points)
    with torch.no_grad():
        ref = q(*example).numpy()
    out = core.compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})([t.numpy() for t in example])[0]
    assert np.abs(out - ref).max() < 0.05
