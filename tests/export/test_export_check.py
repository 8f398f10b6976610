"""The export check judges whether the IR computes the torch model's function, layer by layer.

Good IRs of the model kinds the old end-to-end check rejected pass with the default check; real export
bugs injected into an IR (or the ONNX graph, or the torch side) raise ExportError.
"""

import copy

import numpy as np
import pytest
import torch
from check_models import quantized

from torchpqt.errors import ExportError

ov = pytest.importorskip("openvino")
from torchpqt.exporters import onnx as onnx_export
from torchpqt.exporters import openvino as ov_export

pytestmark = pytest.mark.openvino


def _assert_agrees(report, min_int8_sqnr):
    tol = report.tolerances
    assert report.simulated, "this OpenVINO must run FakeQuantize in f32 for the check"
    assert report.fake_quantize and not report.failures(), str(report)
    assert all(s.max_level_difference <= tol.max_level_difference for s in report.fake_quantize), str(report)
    assert report.max_flip_fraction <= 1e-3 and report.max_input_deviation < 0.02, str(report)
    assert report.output_deviation < 1e-5, str(report)
    assert report.int8_sqnr_db >= min_int8_sqnr and report.int8_share == 1.0, str(report)
    assert report.top1_agreement == 1.0, str(report)


@pytest.mark.parametrize("name, min_int8_sqnr", [("mobilenet_v2", 35.0), ("concat", 40.0)])
def test_good_irs_pass_the_default_check(tmp_path, name, min_int8_sqnr):
    q, x = quantized(name)
    report = ov_export.export(q, x, tmp_path / f"{name}.xml")
    _assert_agrees(report, min_int8_sqnr)
    text = str(report)
    assert "layer by layer" in text and "activation FakeQuantize: max input deviation" in text
    assert "int8 run vs torch: SQNR" in text


def test_saturation_fixed_weights_compress_to_torchs_levels(tmp_path):
    """POT's saturation fix puts the largest weight of every channel of the first conv on a rounding tie;
    the IR's int8 codes must be torch's levels there too (OpenVINO's own folding takes the other level
    on about a third of the channels)."""
    q, x = quantized("concat")
    fq = q.conv0__fq_weights_1
    weight = q.conv0__fq_weights_1_scaled_weight
    assert not torch.equal(fq.input_high, fq.output_high)  # the saturation fix is on
    with torch.no_grad():
        step = (fq.output_high - fq.output_low) / (fq.levels - 1)
        expected = torch.round((fq(weight) - fq.output_low) / step) - (fq.levels - 1) // 2
    report = ov_export.export(q, x, tmp_path / "concat.xml", check=False)
    model = ov.Core().read_model(str(report.path))
    conv = next(op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"
                and op.input_value(0).get_partial_shape()[1].get_length() == 3)
    multiply = conv.input_value(1).get_node()
    codes = multiply.input_value(0).get_node().input_value(0).get_node().get_data()
    assert codes.dtype == np.int8
    np.testing.assert_array_equal(codes, expected.numpy())


# ----------------------------------------------------------------------------- negative controls


@pytest.fixture(scope="module")
def good_ir(tmp_path_factory):
    q, x = quantized("mobilenet_v2")
    report = ov_export.export(q, x, tmp_path_factory.mktemp("ir") / "good.xml", check=False)
    return q, x, report.path


def _tampered(src, dst, edit):
    model = ov.Core().read_model(str(src))
    edit(model)
    ov.save_model(model, str(dst), compress_to_fp16=False)
    return dst


def _op(model, type_name, name=None, where=lambda op: True):
    return next(op for op in model.get_ordered_ops() if op.get_type_name() == type_name
                and (name is None or op.get_friendly_name() == name) and where(op))


def _set_const(op, index, fn):
    data = op.input_value(index).get_node().get_data()
    op.input(index).replace_source_output(ov.opset13.constant(np.ascontiguousarray(fn(data))).output(0))


def _wider_range(model):  # both input_high and output_high 3 % too wide
    fq = _op(model, "FakeQuantize", "blocks_1_dw_0__fq_input_0")
    _set_const(fq, 2, lambda a: a * 1.03)
    _set_const(fq, 4, lambda a: a * 1.03)


def _wrong_output_range(model):  # only output_high: levels agree, the values handed on do not
    _set_const(_op(model, "FakeQuantize", "blocks_2_pj_0__fq_input_0"), 4, lambda a: a * 1.05)


def _dropped_fake_quantize(model):
    fq = _op(model, "FakeQuantize", "blocks_1_pj_0__fq_input_0")
    fq.output(0).replace(fq.input_value(0))


def _bias_add(model, cout):
    """The bias Add after the first Convolution with ``cout`` output channels."""
    conv = _op(model, "Convolution", where=lambda op: op.get_output_partial_shape(0)[1].get_length() == cout)
    return next(t.get_node() for t in conv.output(0).get_target_inputs() if t.get_node().get_type_name() == "Add")


def _dropped_bias(model):  # a bias lost on the way (e.g. a BatchNorm folded without its shift)
    add = _bias_add(model, 96)
    _set_const(add, 1, np.zeros_like)


def _one_channel_bias(model):  # the busiest channel's bias (of 96) off by 3 steps of the FakeQuantize below
    fq = _op(model, "FakeQuantize", "blocks_1_dw_0__fq_input_0")
    high = fq.input_value(2).get_node().get_data().ravel()
    channel, step = int(high.argmax()), float(high.max()) / 255

    def shift(b):
        b = b.copy()
        b.flat[channel] += 3 * step
        return b
    _set_const(_bias_add(model, 96), 1, shift)


def _classifier_bias(model):  # the last layer: no FakeQuantize below it, the outputs catch it
    add = next(op for op in model.get_ordered_ops() if op.get_type_name() == "Add"
               and any(t.get_node().get_type_name() == "Result" for t in op.output(0).get_target_inputs()))
    _set_const(add, 1, lambda b: b + 0.05 * np.abs(b).max())


def _nan_bias(model):  # a NaN in a constant
    def poison(b):
        b = b.copy()
        b.flat[0] = np.nan
        return b
    _set_const(_bias_add(model, 96), 1, poison)


def _transposed_weight(model):  # the 16x16 pointwise conv of the first block with its weight transposed
    conv = _op(model, "Convolution", where=lambda op: op.get_input_partial_shape(1).to_shape() == [16, 16, 1, 1])
    convert = conv.input_value(1).get_node().input_value(0).get_node()
    _set_const(convert, 0, lambda w: w.transpose(1, 0, 2, 3))


def test_check_of_the_untouched_ir_passes(good_ir, tmp_path):
    q, x, path = good_ir
    same = _tampered(path, tmp_path / "same.xml", lambda model: None)  # read and saved again, unchanged
    report = ov_export.check(same, q, x)
    assert report.path == same and not report.failures() and report.flips < 50


@pytest.mark.parametrize("edit, message", [
    (_wider_range, r"'blocks_1_dw_0__fq_input_0': input off by"),
    (_wrong_output_range, r"input off by"),
    (_dropped_fake_quantize, r"FakeQuantize 'blocks_1_pj_0__fq_input_0' is not in the IR"),
    (_dropped_bias, r"input off by"),
    (_one_channel_bias, r"'blocks_1_dw_0__fq_input_0': input off by"),
    (_classifier_bias, r"outputs off by"),
    (_nan_bias, r"'blocks_1_dw_0__fq_input_0': input off by inf steps"),
    (_transposed_weight, r"'blocks_0_dw_0__fq_input_0': input off by"),
], ids=lambda v: v.__name__.strip("_") if callable(v) else "")
def test_tampered_ir_raises(good_ir, tmp_path, edit, message):
    q, x, path = good_ir
    bad = _tampered(path, tmp_path / "bad.xml", edit)
    with pytest.raises(ExportError, match=f"(?s)does not compute.*{message}"):
        ov_export.check(bad, q, x)


def test_torch_model_changed_after_export_raises(good_ir):
    q, x, path = good_ir
    changed = copy.deepcopy(q)
    fq = changed.blocks_2_dw_0__fq_input_0
    fq.input_high.mul_(0.97)
    fq.output_high.mul_(0.97)
    with pytest.raises(ExportError, match="'blocks_2_dw_0__fq_input_0': input off by"):
        ov_export.check(path, changed, x)


def test_fake_quantize_dropped_from_the_onnx_graph_raises(tmp_path, monkeypatch):
    q, x = quantized("concat")
    export_proto = onnx_export.export_proto

    def dropping(*args, **kwargs):  # an exporter that loses one FakeQuantize node
        proto = export_proto(*args, **kwargs)
        graph = proto.graph
        fq = next(n for n in graph.node if n.op_type == "FakeQuantize" and "cat__fq_input_1" in
                  onnx_export.fake_quantize_name(n))
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == fq.output[0]:
                    node.input[i] = fq.input[0]
        graph.node.remove(fq)
        return proto

    monkeypatch.setattr(ov_export.onnx_export, "export_proto", dropping)
    with pytest.raises(ExportError, match="FakeQuantize 'cat__fq_input_1' of the torch model is not in the exported graph"):
        ov_export.export(q, x, tmp_path / "dropped.xml")


class ZeroChannel(torch.nn.Module):
    """A conv whose second output channel is all zeros (pruned): its weight range is empty."""

    def __init__(self):
        super().__init__()
        w = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0))
        w[1] = 0
        self.weight = torch.nn.Parameter(w)
        m = w.abs().amax((1, 2, 3), keepdim=True)
        from torchpqt.quant.fake_quantize import FakeQuantize
        self.fq_x, self.fq_w = FakeQuantize(256, -2.0, 2.0 * 127 / 128), FakeQuantize(255, -m, m)

    def forward(self, x):
        return torch.nn.functional.conv2d(self.fq_x(x), self.fq_w(self.weight))


def test_weight_channel_with_an_empty_range_keeps_its_zeros(tmp_path):
    model, x = ZeroChannel(), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    report = ov_export.export(model, x, tmp_path / "zero.xml", check=False)
    out = ov.Core().compile_model(str(report.path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x.numpy())[0]
    assert np.isfinite(out).all() and np.abs(out[:, 1]).max() == 0
