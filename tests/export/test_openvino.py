"""OpenVINO IR export: parity with torch, exact ranges read back from the IR, int8 execution."""

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from export_models import SmallConvNet, Zoo, act_fq, zoo_inputs

from torchpqt.errors import ExportError
from torchpqt.quant.fake_quantize import FakeQuantize

ov = pytest.importorskip("openvino")
from torchpqt.exporters import openvino as ov_export

pytestmark = pytest.mark.openvino
WEIGHTS = ("conv", "dw", "convt", "conv1d", "conv3d", "linear", "matmul")


@pytest.fixture(scope="module")
def zoo():
    model = Zoo()
    model.torchpqt_config = {"preset": "performance", "stat_subset_size": 300}
    return model


@pytest.fixture(scope="module")
def zoo_ir(zoo, tmp_path_factory):
    return ov_export.export(zoo, zoo_inputs(), tmp_path_factory.mktemp("ir") / "zoo.xml")


@pytest.fixture(scope="module")
def zoo_ir_fq_weights(zoo, tmp_path_factory):
    return ov_export.export(zoo, zoo_inputs(), tmp_path_factory.mktemp("ir") / "zoo.xml",
                            compress_weights=False, check=False)


def _const(output):
    node = output.get_node()
    return node.get_data() if node.get_type_name() == "Constant" else None


def test_every_op_type_matches_torch_within_one_step(zoo, zoo_ir):
    assert zoo_ir.max_diff_steps is not None and zoo_ir.max_diff_steps <= 1.0
    compiled = ov.Core().compile_model(str(zoo_ir.path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    inputs = zoo_inputs(batch=3, seed=5)  # another batch size: the batch is dynamic
    result = compiled([x.numpy() for x in inputs])
    with torch.no_grad():
        expected = zoo(*inputs)
    for name, out, ref in zip(("conv2d", "depthwise", "conv_transpose", "conv1d", "conv3d", "linear", "matmul"),
                              compiled.outputs, expected):
        diff = np.abs(result[out] - ref.numpy()).max()
        assert diff <= zoo_ir.step, f"{name}: {diff}"


def test_fake_quantize_ranges_read_back_exactly(zoo, zoo_ir_fq_weights):
    model = ov.Core().read_model(str(zoo_ir_fq_weights.path))
    ir = [[_const(op.input_value(i)) for i in range(1, 5)] + [op.get_attributes()["levels"]]
          for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    assert len(ir) == 12
    for name, fq in zoo.named_modules():
        if not isinstance(fq, FakeQuantize):
            continue
        ours = [t.numpy() for t in (fq.input_low, fq.input_high, fq.output_low, fq.output_high)]

        def same(a, b):  # equal values on the same axis (a [4,1,1,1] never equals a [1,4,1,1])
            try:
                shape = np.broadcast_shapes(a.shape, b.shape)
            except ValueError:
                return False
            return np.array_equal(np.broadcast_to(a, shape), np.broadcast_to(b, shape))

        # the converter moves MatMul's weight transpose through the FakeQuantize (as POT, spec §4.5)
        flipped = [a.T for a in ours] if ours[0].ndim == 2 else ours
        assert any(r[4] == fq.levels and (all(same(a, b) for a, b in zip(r[:4], ours))
                                          or all(same(a, b) for a, b in zip(r[:4], flipped))) for r in ir), name


def _compressed_weights(model):
    """(int8 codes, zero point or None, scale) of every Const(i8) -> Convert -> [Subtract] -> Multiply."""
    found = []
    for mul in model.get_ordered_ops():
        if mul.get_type_name() != "Multiply":
            continue
        src, zero_point = mul.input_value(0).get_node(), None
        if src.get_type_name() == "Subtract":
            zero_point = src.input_value(1)
            src = src.input_value(0).get_node()
        codes = _const(src.input_value(0)) if src.get_type_name() == "Convert" else None
        if codes is not None and codes.dtype == np.int8:
            found.append((codes, zero_point, _const(mul.input_value(1))))
    return found


def test_compressed_weights_are_int8_with_torchpqt_scales(zoo, zoo_ir):
    model = ov.Core().read_model(str(zoo_ir.path))
    found = _compressed_weights(model)
    assert len(found) == len(WEIGHTS)
    for key in WEIGHTS:
        weight, fq = getattr(zoo, f"w_{key}").detach(), getattr(zoo, f"fq_{key}")
        step = (fq.output_high - fq.output_low) / (fq.levels - 1)
        levels = torch.round((fq(weight) - fq.output_low) / step) - (fq.levels - 1) // 2
        for codes, zero_point, scale in found:
            if codes.shape == tuple(weight.shape):
                ref_levels, ref_scale = levels.numpy(), step.numpy()
            elif weight.dim() == 2 and codes.shape == tuple(weight.T.shape):  # the converter folds MatMul's transpose in
                ref_levels, ref_scale = levels.T.numpy(), step.T.numpy()
            else:
                continue
            if np.array_equal(codes, ref_levels):
                assert zero_point is None  # symmetric weights: no Subtract, as POT (spec §4.8)
                assert np.array_equal(scale, np.broadcast_to(ref_scale, scale.shape)), key
                break
        else:
            pytest.fail(f"no int8 constant holds the levels of w_{key}")
    assert sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops()) == 5  # activations


def test_rt_info_records_version_and_config(zoo, zoo_ir):
    params = ET.parse(zoo_ir.path).getroot().find("rt_info/quantization_parameters")
    assert params.find("version").get("value").startswith("torchpqt ")
    assert json.loads(params.find("config").get("value")) == zoo.torchpqt_config
    assert params.find("compress_weights").get("value") == "True"


def test_small_conv_net_runs_int8_on_cpu(tmp_path):
    report = ov_export.export(SmallConvNet(), torch.randn(2, 3, 16, 16), tmp_path / "net.xml")
    assert report.int8_share == 1.0 and len(report.op_precisions) == 3
    assert {p for _, _, p in report.op_precisions} <= {"u8", "i8"}
    assert report.max_diff_steps <= 1.0
    text = str(report)
    assert "int8 weighted ops: 3/3" in text and "steps of" in text


def test_graph_module_and_static_batch(tmp_path):
    model, example = SmallConvNet(), torch.randn(2, 3, 16, 16)
    batch = torch.export.Dim("batch")
    gm = torch.export.export(model, (example,), dynamic_shapes=({0: batch},)).module()
    report = ov_export.export(gm, example, tmp_path / "gm.xml", dynamic_batch=False)
    assert report.max_diff_steps <= 1.0
    assert ov.Core().read_model(str(report.path)).inputs[0].get_partial_shape().is_static


class Noisy(torch.nn.Module):
    """Draws random numbers: OpenVINO's generator differs from torch's, so the check must fail."""

    def __init__(self):
        super().__init__()
        self.fq = act_fq(0.0, 4.0)

    def forward(self, x):
        return self.fq(x) + torch.rand_like(x) * 4


def test_check_fails_with_the_numbers(tmp_path):
    with pytest.raises(ExportError, match=r"(?s)does not compute.*outputs off by .* of their range"):
        ov_export.export(Noisy(), torch.rand(2, 3, 8, 8), tmp_path / "noisy.xml")
    assert (tmp_path / "noisy.xml").exists()  # written for inspection


def test_path_must_be_xml(tmp_path):
    with pytest.raises(ExportError, match=r"\.xml"):
        ov_export.export(SmallConvNet(), torch.randn(1, 3, 8, 8), tmp_path / "model.onnx")
