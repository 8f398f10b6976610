"""Output layout, report content, the torch dump."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import torch

from torchpqt.cli.output import fake_quantize_ranges, make_layout, save_torch_model, write_report
from torchpqt.quant.fake_quantize import FakeQuantize


def test_timestamped_layout_like_pot(tmp_path):
    layout = make_layout(tmp_path, "net", direct_dump=False, now=datetime(2024, 1, 2, 3, 4, 5))
    assert layout.log_dir == tmp_path / "net_DefaultQuantization" / "2024-01-02_03-04-05"
    assert layout.xml == layout.log_dir / "optimized" / "net.xml"


def test_direct_dump_layout(tmp_path):
    layout = make_layout(tmp_path, "net", direct_dump=True)
    assert layout.log_dir == tmp_path and layout.xml == tmp_path / "net.xml"


def test_fake_quantize_ranges_per_module_name():
    model = torch.nn.Sequential(torch.nn.Identity(), FakeQuantize(256, -1.0, 3.0))
    model.add_module("w", FakeQuantize(255, torch.tensor([[-1.0], [-2.0]]), torch.tensor([[1.0], [2.0]])))
    ranges = fake_quantize_ranges(model)
    assert ranges["1"] == {"levels": 256, "input_low": -1.0, "input_high": 3.0, "output_low": -1.0,
                           "output_high": 3.0}
    assert ranges["w"]["input_low"] == [-1.0, -2.0] and ranges["w"]["levels"] == 255


@dataclasses.dataclass
class _Check:
    max_abs_diff: float
    shapes: tuple


def test_report_serializes_dataclasses_tensors_and_paths(tmp_path):
    write_report(tmp_path / "report.json", check=_Check(0.5, (1, 2)), where=Path("a/b"), t=torch.tensor(2.0))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == {"check": {"max_abs_diff": 0.5, "shapes": [1, 2]}, "where": "a/b", "t": 2.0}


def test_dump_of_the_fake_quantized_model_reloads(tmp_path):
    model = torch.nn.Sequential(FakeQuantize(256, -1.0, 1.0), torch.nn.Linear(3, 2))
    x = torch.linspace(-2, 2, 6).reshape(2, 3)
    path = save_torch_model(model, (x,), tmp_path, "net")
    assert path.name == "net_fq.pt2"  # torch.export captures FakeQuantize: no pickle needed
    reloaded = torch.export.load(str(path)).module() if path.suffix == ".pt2" else torch.load(path, weights_only=False)
    torch.testing.assert_close(reloaded(x), model(x))


def test_cli_import_stays_light():
    code = "import sys, torchpqt.cli; print(sorted(m for m in ('onnx', 'openvino') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
