"""Capture: what OpenVINO's converter made of a torch model (BatchNorm folded, attention spelled out)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchpqt.errors import CaptureError
from torchpqt.graph.capture import capture
from torchpqt.graph.ops import packet_name


class ConvBnRelu(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)
        self.bn1d = nn.BatchNorm1d(4)
        for bn in (self.bn, self.bn1d):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.5, 0.5)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)))
        return self.bn1d(self.fc(y.mean((2, 3))))


def _targets(gm):
    return [packet_name(n) for n in gm.graph.nodes if n.op == "call_function"]


def test_batch_norm_folded_and_fp32_output_unchanged():
    model = ConvBnRelu().eval()
    x = torch.randn(4, 3, 8, 8)
    gm = capture(model, x)
    assert "batch_norm" not in _targets(gm)
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)


def test_capture_keeps_the_user_model_untouched_and_batch_dynamic():
    model = ConvBnRelu().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gm = capture(model, torch.randn(1, 3, 8, 8))
    assert model.training, "capture must not switch the user's model to eval"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert gm(torch.randn(5, 3, 8, 8)).shape == (5, 4)


def test_share_tensors_captures_the_models_own_weights_and_leaves_it_in_train_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Dropout(0.5)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    gm = capture(model, x, share_tensors=True)
    user = {t.untyped_storage().data_ptr() for t in model.parameters()}
    assert user <= {t.untyped_storage().data_ptr() for t in gm.parameters()}  # no copy of the weights
    assert all(m.training for m in model.modules()), "the copy's modules took eval mode, not the user's"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    torch.testing.assert_close(gm(x), model.eval()(x))  # captured in eval mode: dropout off
    assert not {t.untyped_storage().data_ptr() for t in capture(model, x).parameters()} & user  # default: copies


def test_attention_is_spelled_out_as_matmul_softmax_matmul():
    class Attn(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    q, k, v = (torch.randn(2, 2, 5, 4) for _ in range(3))
    gm = capture(Attn(), (q, k, v))
    names = _targets(gm)
    assert "scaled_dot_product_attention" not in names
    assert names.count("matmul") == 2 and "softmax" in names
    torch.testing.assert_close(gm(q, k, v), Attn()(q, k, v), rtol=1e-5, atol=1e-6)


def test_untraceable_model_names_the_failing_line():
    class DataDependent(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent Python control flow
                return x * 2
            return x

    with pytest.raises(CaptureError) as err:
        capture(DataDependent(), torch.randn(2, 3))
    msg = str(err.value)
    assert "DataDependent" in msg and "test_capture.py" in msg and "fix:" in msg


class Scales(nn.Module):
    """Per-channel and scalar multiplies next to convs / linears / an activation matmul (converter fusions)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.scale = nn.Parameter(torch.rand(1, 4, 1, 1) + 0.5)
        self.gain = nn.Parameter(torch.randn(1, 4, 1, 1))
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = F.relu(self.conv1(x)) * self.scale
        y = F.relu(self.conv2(y) * self.gain).mean((2, 3))
        z = self.fc(y) / 2.0
        att = torch.matmul(z[:, :, None], z[:, None, :]) * 0.5
        return (1.0 - att).sum(-1)


def test_constant_fusions_keep_fp32_output_and_remove_the_multiplies():
    model = Scales().eval()
    x = torch.randn(2, 3, 6, 6)
    gm = capture(model, x)
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)
    names = _targets(gm)
    assert "div" not in names, "x / 2 after the linear is folded into it"
    matmul = next(n for n in gm.graph.nodes if n.op == "call_function" and packet_name(n) == "matmul")
    assert packet_name(matmul.args[1]) == "mul", "the scalar moved onto the matmul's second input"
    assert names.count("mul") == 1


def test_inputs_that_do_not_fit_forward_get_a_hint_about_labels():
    model = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    with pytest.raises(CaptureError, match="transform_fn"):
        capture(model, (torch.randn(2, 3, 8, 8), torch.zeros(2)))  # an (inputs, label) pair
