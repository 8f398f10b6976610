"""ONNX export: one org.openvinotoolkit FakeQuantize per torchpqt FakeQuantize, QDQ where exact."""

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from export_models import SmallConvNet, Zoo, act_fq, weight_fq, zoo_inputs

from torchpqt.errors import ExportError
from torchpqt.quant.fake_quantize import FakeQuantize

onnx = pytest.importorskip("onnx")
ov = pytest.importorskip("openvino")
from torchpqt.exporters import onnx as onnx_export

pytestmark = pytest.mark.openvino
ZOO_FQ_CALLS = 12  # 13 calls; the two identical fq_v(v) calls are merged by the ONNX optimizer


def _fq_nodes(proto):
    return [n for n in proto.graph.node if n.op_type == "FakeQuantize"]


@pytest.fixture(scope="module")
def zoo_onnx(tmp_path_factory):
    model = Zoo()
    path = onnx_export.export(model, zoo_inputs(), tmp_path_factory.mktemp("onnx") / "zoo.onnx")
    return model, path, onnx.load(str(path))


def test_every_fake_quantize_is_one_openvino_node(zoo_onnx):
    model, _, proto = zoo_onnx
    nodes = _fq_nodes(proto)
    assert len(nodes) == ZOO_FQ_CALLS
    assert {n.domain for n in nodes} == {onnx_export.OV_DOMAIN}
    assert (onnx_export.OV_DOMAIN, 1) in {(o.domain, o.version) for o in proto.opset_import}
    assert not {"Round", "Clip", "QuantizeLinear"} & {n.op_type for n in proto.graph.node}  # not decomposed
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    for node in nodes:
        fq = model.get_submodule(onnx_export.fake_quantize_name(node))
        assert next(a.i for a in node.attribute if a.name == "levels") == fq.levels
        for name, value in zip(node.input[1:], (fq.input_low, fq.input_high, fq.output_low, fq.output_high)):
            assert np.array_equal(inits[name], value.numpy()), name  # exact, same (broadcastable) shape


def test_batch_is_dynamic(zoo_onnx):
    _, _, proto = zoo_onnx
    assert all(i.type.tensor_type.shape.dim[0].dim_param for i in proto.graph.input)


def test_openvino_frontend_reads_the_fake_quantize_nodes(zoo_onnx):
    _, path, _ = zoo_onnx
    model = ov.Core().read_model(str(path))
    assert sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops()) == ZOO_FQ_CALLS


@pytest.mark.parametrize("capture", ["torch.export", "fx-call_module"])
def test_graph_modules_export(tmp_path, capture):
    model, example = SmallConvNet(), torch.randn(2, 3, 8, 8)
    if capture == "torch.export":
        batch = torch.export.Dim("batch")
        gm = torch.export.export(model, (example,), dynamic_shapes=({0: batch},)).module()
    else:
        class Tracer(torch.fx.Tracer):
            def is_leaf_module(self, m, name):
                return isinstance(m, FakeQuantize) or super().is_leaf_module(m, name)
        gm = torch.fx.GraphModule(model, Tracer().trace(model))
        assert any(n.op == "call_module" and n.target == "fq_w1" for n in gm.graph.nodes)
    proto = onnx.load(str(onnx_export.export(gm, example, tmp_path / "gm.onnx")))
    assert len(_fq_nodes(proto)) == 7
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param


def test_fixed_batch_graph_module_falls_back_to_static(tmp_path, caplog):
    gm = torch.export.export(SmallConvNet(), (torch.randn(2, 3, 8, 8),)).module()
    with caplog.at_level(logging.WARNING, logger="torchpqt"):
        proto = onnx.load(str(onnx_export.export(gm, torch.randn(2, 3, 8, 8), tmp_path / "static.onnx")))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    assert "static" in caplog.text


class DataDependent(torch.nn.Module):
    """Python control flow on a tensor value: torch.export refuses it, TorchScript tracing does not."""

    def __init__(self):
        super().__init__()
        self.fq = act_fq(-2.0, 2.0)
        self.weight = torch.nn.Parameter(torch.randn(4, 3, 3, 3))
        self.fq_w = weight_fq(self.weight, 0)

    def forward(self, x):
        if float(x.sum()) > -1e9:
            x = x * 1.0
        return F.conv2d(self.fq(x), self.fq_w(self.weight))


@pytest.mark.filterwarnings("error::torch.jit.TracerWarning")
def test_torchscript_fallback_keeps_the_op(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="torchpqt"):
        path = onnx_export.export(DataDependent(), torch.randn(2, 3, 8, 8), tmp_path / "ts.onnx")
    assert "TorchScript" in caplog.text
    # torch's TracerWarning (the float() of a tensor in forward) is one log line of ours, not a warning
    assert "froze 1 Python value(s)" in caplog.text and "test_onnx.py" in caplog.text
    nodes = _fq_nodes(onnx.load(str(path)))
    assert [n.domain for n in nodes] == [onnx_export.OV_DOMAIN] * 2
    assert sorted(next(a.i for a in n.attribute if a.name == "levels") for n in nodes) == [255, 256]


def test_qdq_where_exact_matches_fake_quantize(tmp_path):
    model, x = SmallConvNet(), torch.randn(2, 3, 16, 16)
    fq_path = onnx_export.export(model, x, tmp_path / "fq.onnx")
    qdq_path = onnx_export.export(model, x, tmp_path / "qdq.onnx", format="qdq")
    proto = onnx.load(str(qdq_path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") == ops.count("DequantizeLinear") == 7 and "FakeQuantize" not in ops
    assert onnx_export.OV_DOMAIN not in {o.domain for o in proto.opset_import}
    onnx.checker.check_model(proto)
    core = ov.Core()
    outs = [core.compile_model(str(p), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x.numpy())[0]
            for p in (fq_path, qdq_path)]
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=1e-5)


class SaturationFixed(torch.nn.Module):
    def __init__(self, levels=255):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 3, 3, 3))
        m = self.weight.detach().abs().amax((1, 2, 3), keepdim=True)
        self.fq_in = act_fq(0.0, 4.0)
        self.fq_w = FakeQuantize(levels, -m, m, -2 * m, 2 * m) if levels == 255 else FakeQuantize(levels, -m, m)

    def forward(self, x):
        return F.conv2d(self.fq_in(x), self.fq_w(self.weight))


@pytest.mark.parametrize("levels,why", [(255, "output range differs"), (16, "levels=16")])
def test_qdq_refuses_inexact_and_names_the_module(tmp_path, levels, why):
    with pytest.raises(ExportError, match=f"'fq_w'.*{why}"):
        onnx_export.export(SaturationFixed(levels), torch.rand(1, 3, 8, 8), tmp_path / "x.onnx", format="qdq")


def test_qdq_refuses_255_levels_on_activations():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    ranges = [onnx.numpy_helper.from_array(np.array(v, np.float32), n)
              for n, v in (("fq.input_low", -1.0), ("fq.input_high", 1.0))]
    node = onnx.helper.make_node("FakeQuantize", ["x", "fq.input_low", "fq.input_high", "fq.input_low",
                                                  "fq.input_high"], ["y"], domain=onnx_export.OV_DOMAIN, levels=255)
    proto = onnx.helper.make_model(onnx.helper.make_graph([node], "g", [x], [y], ranges))
    with pytest.raises(ExportError, match="'fq'.*-128"):
        onnx_export._to_qdq(proto)


def test_unknown_format_and_bad_inputs_raise():
    with pytest.raises(ExportError, match="format"):
        onnx_export.export(SmallConvNet(), torch.randn(1, 3, 8, 8), "unused.onnx", format="int8")
    with pytest.raises(ExportError, match="example_inputs"):
        onnx_export.export(SmallConvNet(), 3, "unused.onnx")
