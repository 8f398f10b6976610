"""The int8 lint of an exported IR: which activation FakeQuantize the CPU plugin cannot run in int8."""

import pytest
import torch
import torch.nn.functional as F

ov = pytest.importorskip("openvino")

from torchpqt.exporters import openvino as ov_export
from torchpqt.exporters._lint import cpu_isa_name, lint_compiled

from tests.export.export_models import act_fq, weight_fq


class TwoConvs(torch.nn.Module):
    """FakeQuantize -> conv -> relu -> FakeQuantize -> conv: every FakeQuantize feeds an int8 convolution."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(8, 4, 3, 3, generator=g) * 0.3)
        self.w2 = torch.nn.Parameter(torch.randn(8, 8, 3, 3, generator=g) * 0.3)
        self.fq_w1, self.fq_w2 = weight_fq(self.w1, 0), weight_fq(self.w2, 0)
        self.fq_x, self.fq_y = act_fq(0.0, 4.0), act_fq(-4.0, 4.0)

    def head(self, x):
        return F.relu(F.conv2d(self.fq_x(x), self.fq_w1(self.w1)))

    def forward(self, x):
        return F.conv2d(self.fq_y(self.head(x)), self.fq_w2(self.w2))


class SinBetween(TwoConvs):
    """As TwoConvs, with a FakeQuantize before sin (no int8 kernel): that one stays f32 fake quantization."""

    def __init__(self):
        super().__init__()
        self.fq_sin = act_fq(-4.0, 4.0)

    def forward(self, x):
        y = torch.sin(self.fq_sin(self.head(x)))
        return F.conv2d(self.fq_y(y), self.fq_w2(self.w2))


def _x():
    return torch.rand(2, 4, 12, 12, generator=torch.Generator().manual_seed(1)) * 4


def test_every_fake_quantize_feeds_an_int8_kernel_and_saturation_follows_the_cpu(tmp_path):
    ov_export.export(TwoConvs().eval(), _x(), tmp_path / "m.xml", check=False)
    lint = ov_export.lint(tmp_path / "m.xml")
    assert sorted(f.name for f in lint.fake_quantize) == ["fq_x", "fq_y"]
    assert lint.unfused == [] and lint.int8_share == 1.0 and lint.f32_weighted_ops == []
    assert "2/2 activation FakeQuantize feed int8 kernels" in str(lint)
    saved = ov.Core().read_model(str(tmp_path / "m.xml"))
    compiled = ov.Core().compile_model(saved, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    ops = ov_export._weighted_op_precisions(compiled)
    avx2 = lint_compiled(saved, compiled, ops, flags={"sse4_2", "avx2"})
    vnni = lint_compiled(saved, compiled, ops, flags={"sse4_2", "avx2", "avx512_vnni"})
    assert avx2.saturates is True and avx2.faster is False and "saturate" in str(avx2)
    assert vnni.saturates is False and vnni.faster is True and "saturate" not in str(vnni)
    assert cpu_isa_name({"avx2"}) == "AVX2 (no VNNI)" and cpu_isa_name({"avx512_vnni", "amx_int8"}) == \
        "AVX512-VNNI + AMX"


def test_a_fake_quantize_before_an_op_without_int8_kernel_is_listed(tmp_path):
    report = ov_export.export(SinBetween().eval(), _x(), tmp_path / "m.xml")
    lint = report.lint
    assert [f.name for f in lint.unfused] == ["fq_sin"]
    assert lint.unfused[0].precision == "f32"
    assert {f.name for f in lint.fake_quantize} == {"fq_x", "fq_y", "fq_sin"}
    text = str(lint)
    assert "2/3 activation FakeQuantize" in text and "not int8: fq_sin" in text and "not int8: fq_sin" in str(report)
    again = ov_export.lint(tmp_path / "m.xml")  # the same from the file alone
    assert [f.name for f in again.unfused] == ["fq_sin"]
