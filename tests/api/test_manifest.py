"""Run manifests beside the IR, and reproduce() checking a re-run bit for bit."""

import json
import random

import pytest
import torch
from torch import nn

import torchpqt
from torchpqt import TorchPQTError
from torchpqt.manifest import fake_quantize_hash, state_dict_hash
from torchpqt.statistics.cache import model_hash

pytest.importorskip("openvino")

from torchpqt.exporters import openvino as ov_export

CONFIG = {"stat_subset_size": 6, "stat_batch_size": 2, "shuffle_data": True, "seed": 3}


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()


def _data(n=10):
    g = torch.Generator().manual_seed(1)
    return [torch.rand(1, 3, 12, 12, generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    model, data = _model(), _data()
    qm = torchpqt.quantize(model, data, CONFIG)
    xml = tmp_path_factory.mktemp("ir") / "m.xml"
    report = ov_export.export(qm, data[0], xml, check=False)
    return model, data, qm, report


def test_the_manifest_beside_the_ir_records_the_run(run):
    model, _, qm, report = run
    assert report.manifest == report.path.parent / "manifest.json"
    m = json.loads(report.manifest.read_text())
    assert m["ir"] == "m.xml"
    assert m["config"]["params"]["stat_subset_size"] == 6 and m["config"]["params"]["preset"] == "performance"
    assert m["config"] == qm.torchpqt_config  # the full params, as the IR's rt_info
    assert {"torchpqt", "torch", "openvino", "onnx"} <= set(m["versions"]) and m["versions"]["torch"]
    # POT's sampler: random.seed(seed); random.sample(range(len(dataset)), stat_subset_size)
    assert m["calibration"]["indices"] == random.Random(3).sample(range(10), 6)
    assert m["calibration"]["batch_size"] == 2 and m["calibration"]["samples"] == 6
    assert m["calibration"]["batches"] == 3
    assert m["model_hash"] == model_hash(model) and m["statistics_hash"] == qm.torchpqt_run["statistics_hash"]
    assert m["fake_quantize_hash"] == fake_quantize_hash(qm) and m["state_dict_hash"] == state_dict_hash(qm)
    assert len(json.dumps(qm.torchpqt_run)) < 2000  # the converted model carries a small record


def test_reproduce_matches_bit_for_bit(run):
    model, data, qm, report = run
    result = torchpqt.reproduce(report.manifest, model, data)
    assert result.matches, str(result)
    assert str(result).startswith("reproduced bit for bit")
    assert {"statistics", "FakeQuantize parameters", "state_dict", "calibration sample indices"} <= \
        {what for what, *_ in result.checks}
    sa, sb = result.qmodel.state_dict(), qm.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_reproduce_names_what_differs(run):
    model, data, _, report = run
    picked = random.Random(3).sample(range(10), 6)
    other = list(data)
    other[picked[0]] = other[picked[0]] * 1.5
    result = torchpqt.reproduce(report.manifest, model, other)
    assert not result.matches
    assert "calibration samples' tensors" in result.mismatches and "statistics" in result.mismatches
    assert "calibration sample indices" not in result.mismatches and "model parameters" not in result.mismatches
    assert "NOT reproduced" in str(result)
    changed = _model()
    with torch.no_grad():
        changed[0].weight[0, 0, 0, 0] += 0.5
    result = torchpqt.reproduce(json.loads(report.manifest.read_text()), changed, data)
    assert "model parameters" in result.mismatches and "FakeQuantize parameters" in result.mismatches


def test_a_bad_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(TorchPQTError, match="does not exist"):
        torchpqt.reproduce(tmp_path / "nope.json", _model(), _data())
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(TorchPQTError, match="not readable JSON"):
        torchpqt.reproduce(tmp_path / "x.json", _model(), _data())
    with pytest.raises(TorchPQTError, match="not a torchpqt run manifest"):
        torchpqt.reproduce({"config": {}}, _model(), _data())
