"""GNA targets: POT's GNA rules (16-bit activations, 32-bit outputs, weight widths per op), an IR whose
FakeQuantize levels say so, run on CPU (no GNA plugin exists in current OpenVINO)."""

from collections import Counter

import pytest
import torch
from torch import nn

import torchpqt

ov = pytest.importorskip("openvino")
from torchpqt.exporters import openvino as ov_export


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.sigmoid(self.conv(x)).flatten(1))


def _quantize(device):
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(1, 2, 6, 6, generator=g) for _ in range(8)]
    return torchpqt.quantize(Net().eval(), data, {"target_device": device}, progress=False), data


# GNA: the network input's q16 output FQ (Parameter, priority 1) wins over the conv input FQ (priority 1);
# GNA3 lists Convolution in input_priority_types, so there the conv input FQ (priority 2) wins.
@pytest.mark.parametrize("device, conv_w, fc_w, input_group", [
    ("GNA", (65535, "pertensor"), (255, "perchannel"), "outputs"),
    ("GNA3", (255, "pertensor"), (255, "perchannel"), "activations")])
def test_gna_placement_follows_pots_gna_rules(device, conv_w, fc_w, input_group):
    q, _ = _quantize(device)
    pts = {p.name: p for p in q.torchpqt_plan.points}
    assert (pts["conv/fq_weights_1"].spec.levels, pts["conv/fq_weights_1"].spec.granularity) == conv_w
    assert (pts["fc/fq_weights_1"].spec.levels, pts["fc/fq_weights_1"].spec.granularity) == fc_w
    by_group = Counter((p.group, p.spec.levels) for p in pts.values() if p.group != "weights")
    # network input (q16); conv output (q32_o) merged with the Sigmoid input (q32_a, higher priority):
    # activations q32; Sigmoid output q16_o feeds fc; fc output feeds the Result (q16_a).
    assert by_group == Counter([(input_group, 65536), ("outputs", 65536), ("activations", 2**32),
                                ("activations", 65536)])
    for p in pts.values():
        assert p.spec.mode == "symmetric"
        if p.group != "weights":
            assert p.spec.signed, "GNA configs give level_low < 0: always signed (spec §3.4)"


@pytest.mark.openvino
def test_gna_ir_has_16_and_32_bit_fakequantize_and_runs_on_cpu(tmp_path):
    q, data = _quantize("GNA")
    report = ov_export.export(q, data[0], tmp_path / "gna.xml", target_device="GNA")
    assert report.fq_levels == {65536: 3, 2**32: 1, 65535: 1}  # fc's 8-bit weights became int8 constants
    assert report.device == "CPU" and "GNA" in report.note
    model = ov.Core().read_model(str(report.path))
    assert model.get_rt_info(["quantization_parameters", "target_device"]).astype(str) == "GNA"
