"""Regression tests for what benchmarks/architectures.py found, each on a tiny torch model of that kind:
quantize with the default config, export with the check on (it raises ExportError when the IR does not compute
the torch model's function), and the property the fix is about."""

import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import torchpqt
from torchpqt.errors import ExportError
from torchpqt.quant.fake_quantize import FakeQuantize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models

ov = pytest.importorskip("openvino")
from torchpqt.exporters import openvino as ov_export

pytestmark = pytest.mark.openvino

CPU = {"name": "DefaultQuantization", "params": {"target_device": "CPU"}}


def _quantize(model, data, config=CPU):
    torch.manual_seed(0)
    return torchpqt.quantize(model.eval(), data, config, progress=False)


def _fqs(q) -> dict[str, FakeQuantize]:
    return {n: m for n, m in q.named_modules() if isinstance(m, FakeQuantize)}


def _data(shape, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, *shape, generator=g) for _ in range(n)]


class VarArgs(nn.Module):
    """forward(*inputs): a wrapper the way users write them around a library model."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, *inputs):
        x, y = inputs
        return self.b(torch.relu(self.a(x)) + y)


def test_forward_with_varargs_is_captured_with_dynamic_shapes():
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(1, 5, 8, generator=g), torch.randn(1, 5, 8, generator=g)) for _ in range(4)]
    q = _quantize(VarArgs(), data)
    assert {"a__fq_input_0", "a__fq_weights_1", "b__fq_weights_1"} <= set(_fqs(q))
    x, y = torch.randn(3, 7, 8), torch.randn(3, 7, 8)  # another batch and sequence length
    with torch.no_grad():
        assert q(x, y).shape == (3, 7, 4)


class PositionBias(nn.Module):
    """A T5-style bias computed from the sequence length alone: log(arange(L)) is -inf at 0 and is masked out
    by a where; the bias is added to the data."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x):
        length = x.shape[1]
        pos = torch.arange(length, dtype=torch.float32, device=x.device)
        scaled = torch.log(pos) / np.log(16.0)
        bias = torch.where(pos > 0, scaled, torch.zeros_like(scaled))
        return self.b(self.a(x) * (1.0 + bias[None, :, None]))


def test_shape_computation_gets_no_fake_quantize(tmp_path):
    data = _data((6, 8))
    q = _quantize(PositionBias(), data)  # a FakeQuantize on log()'s output saw -inf: CalibrationError
    skipped = {s for s, why in q.torchpqt_plan.skipped.items() if why.startswith("shape computation")}
    assert any(s.endswith(("log", "div")) for s in skipped), q.torchpqt_plan
    for name, fq in _fqs(q).items():
        assert torch.isfinite(fq.input_low).all() and torch.isfinite(fq.input_high).all(), name
    ov_export.export(q, data[0], tmp_path / "m.xml")


class MaskedAttention(nn.Module):
    """Single-head attention whose padding mask is (1 - mask) * finfo(float32).min added to the scores (what
    transformers' BERT does): with model_type unset, POT puts an activation FakeQuantize on that mask."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(4))

    def forward(self, x, mask):
        scores = self.q(x) @ self.k(x).transpose(1, 2) / 8 ** 0.5
        fill = torch.where(mask[:, None, :].bool(), 0.0, torch.finfo(torch.float32).min)
        return self.o(torch.softmax(scores + fill, -1) @ self.v(x))


def test_attention_mask_fill_gets_no_fake_quantize_and_exports(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = []
    for i in range(6):
        mask = torch.ones(1, 6, dtype=torch.long)
        mask[:, 6 - i % 3:] = 0
        data.append((torch.randn(1, 6, 8, generator=g), mask))
    q = _quantize(MaskedAttention(), data)
    dropped = [s for s, why in q.torchpqt_plan.skipped.items() if "overflows float32" in why]
    assert len(dropped) == 1, q.torchpqt_plan
    assert dropped[0] not in {p.name for p in q.torchpqt_plan.points}
    report = ov_export.export(q, data[1], tmp_path / "m.xml")  # was: every level downstream off (NaN IR)
    assert report.sim_sqnr_db > 60


class VectorWeight(nn.Module):
    """A MatMul with a 1-D constant (h @ v): its weights FakeQuantize is per channel over a 1-D tensor."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.v = nn.Parameter(torch.randn(8))

    def forward(self, x):
        return torch.relu(self.fc(x)) @ self.v


def test_one_dimensional_weight_fake_quantize_keeps_its_rank(tmp_path):
    data = _data((5, 8))
    model = VectorWeight()
    q = _quantize(model, data)
    fq = _fqs(q)["matmul__fq_weights_1"]
    assert fq.input_low.shape == (8,)  # was (8, 1): the output broadcast to [B, 5, 8]
    with torch.no_grad():
        assert q(data[0]).shape == model(data[0]).shape == (1, 5)
    ov_export.export(q, data[0], tmp_path / "m.xml")


class ChannelsLastDepthwise(nn.Module):
    """Linear over NHWC, permute to NCHW, depthwise conv (per-channel activations on CPU), pointwise conv."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.pw(torch.relu(self.dw(self.fc(x).permute(0, 3, 1, 2))))


def test_per_channel_fake_quantize_stays_below_a_permute(tmp_path):
    data = _data((6, 6, 8))
    q = _quantize(ChannelsLastDepthwise(), data)
    fqs = _fqs(q)
    assert "dw__fq_input_0" in fqs, sorted(fqs)  # was permute__fq_input_0, per channel over H
    assert fqs["dw__fq_input_0"].input_low.shape == (1, 8, 1, 1)
    ov_export.export(q, data[0], tmp_path / "m.xml")


def test_images_are_captured_with_a_dynamic_batch_only():
    data = _data((8, 8, 8))
    q = _quantize(ChannelsLastDepthwise(), data)
    shape = next(n for n in q.graph.nodes if n.op == "placeholder").meta["val"].shape
    assert not isinstance(shape[0], int) and tuple(shape[1:]) == (8, 8, 8)  # symbolic batch, static H, W, C
    with torch.no_grad():
        assert q(torch.randn(3, 8, 8, 8)).shape == (3, 4, 8, 8)


class Recurrent(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.rnn = getattr(nn, kind)(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_recurrent_layers_stay_float_and_export(tmp_path, kind):
    data = _data((7, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.export's "tensor attributes _flat_weights" warning is filtered
        q = _quantize(Recurrent(kind), data)
    fqs = _fqs(q)
    assert len(fqs) == 2 and "fc__fq_weights_1" in fqs, sorted(fqs)  # the recurrent op is one float op
    ov_export.export(q, data[0], tmp_path / "m.xml")


class DepthwiseAfterTranspose(nn.Module):
    """(B, L, C) -> transpose -> depthwise Conv1d: OpenVINO's CPU plugin moves the per-channel FakeQuantize of
    the conv's input through the Transpose onto axis 2 and then refuses it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 16)
        self.conv = nn.Conv1d(16, 16, 3, padding=1, groups=16)

    def forward(self, x):
        return self.conv(self.fc(x).transpose(1, 2))


def test_an_ir_the_plugin_cannot_compile_raises_export_error(tmp_path):
    data = _data((6, 8))
    q = _quantize(DepthwiseAfterTranspose(), data)
    with pytest.raises(ExportError, match="(?s)cannot compile.*conv__fq_input_0.*ignored.scope"):
        ov_export.export(q, data[0], tmp_path / "m.xml")
    ov.Core().compile_model(str(tmp_path / "m.xml"), "CPU")  # the int8 deployment itself compiles
    config = {"name": "DefaultQuantization", "params": {"target_device": "CPU", "ignored": {"scope": ["conv"]}}}
    ov_export.export(_quantize(DepthwiseAfterTranspose(), data, config), data[0], tmp_path / "ok.xml")


@pytest.mark.slow  # covered without transformers by test_attention_mask_fill_gets_no_fake_quantize_and_exports
def test_bert_without_model_type_exports_with_the_check_on(tmp_path, caplog):
    """transformers' BertModel, model_type unset: the attention mask's FakeQuantize (range ±3.4e38) made the IR
    compute NaN and the check find every level of the next FakeQuantize off; now it is left out."""
    pytest.importorskip("transformers")
    data = models.calibration_data("tiny_bert", 8)
    q = _quantize(models.build("tiny_bert"), data, {"name": "DefaultQuantization",
                                                     "params": {"target_device": "CPU", "preset": "performance"}})
    assert any("overflows float32" in why for why in q.torchpqt_plan.skipped.values())
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy in the check, onnx's reference ops
        report = ov_export.export(q, data[1], tmp_path / "bert.xml")
    assert report.sim_sqnr_db > 60 and report.int8_sqnr_db > 40
    foreign = [r for r in caplog.records if not r.name.startswith("torchpqt")]
    assert foreign == [], [r.getMessage() for r in foreign]  # onnxscript's "Evaluation failed" is filtered


class _GroupedConv1d(nn.Module):
    """wav2vec2's positional conv in small: OpenVINO's int8 grouped Conv1d (kernel 16, groups 4) is off on CPU."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(32, 32, 3, padding=1)
        self.g = nn.Conv1d(32, 32, 16, padding=8, groups=4)
        self.b = nn.Conv1d(32, 8, 1)

    def forward(self, x):
        return self.b(torch.relu(self.g(torch.relu(self.a(x)))))


def test_an_int8_run_far_below_the_simulated_ir_is_a_warning(tmp_path, caplog):
    torch.manual_seed(0)
    qmodel = torchpqt.quantize(_GroupedConv1d().eval(), [torch.randn(1, 32, 50) for _ in range(16)], progress=False)
    with caplog.at_level(logging.WARNING, logger="torchpqt"):
        report = ov_export.export(qmodel, torch.randn(4, 32, 50), tmp_path / "m.xml")
    warned = [r for r in caplog.records if "int8 kernel issue" in r.getMessage()]
    if report.int8_sqnr_db >= 12:  # this OpenVINO's kernel is right: nothing to warn about
        assert not warned
        pytest.skip(f"int8 grouped Conv1d agrees with torch here ({report.int8_sqnr_db:.1f} dB)")
    assert report.sim_sqnr_db > 30 and len(warned) == 1
