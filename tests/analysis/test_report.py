"""report.html / report.json of an analysis: self-contained, plots decoded, the CLI's --report; the page in a
real headless Chromium (skipped where none is installed)."""

import base64
import io
import json
import re

import pytest
import torch
from outlier_model import OutlierCNN, samples

import torchpqt
from torchpqt.analysis import write_report

pytest.importorskip("matplotlib")
from PIL import Image


@pytest.fixture(scope="module")
def analysis():
    torch.manual_seed(0)
    return torchpqt.analyze(OutlierCNN().eval(), samples(24, seed=0), eval_samples=12)


def _images(page: str) -> dict[str, Image.Image]:
    found = {}
    for attrs, data in re.findall(r"<img ([^>]*?)src='data:image/png;base64,([^']+)'", page):
        alt = re.search(r"alt='([^']*)'", attrs).group(1)
        found[alt] = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    return found


def test_report_is_self_contained_with_decodable_plots(analysis, tmp_path):
    html_path, json_path = analysis.write_report(tmp_path / "out", histogram_layers=3)
    page = html_path.read_text()
    # nothing fetched from elsewhere: every src is a data URI, no link/script/stylesheet tags
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r"src='([^']*)'", page))
    assert not re.search(r"<(link|script)\b|https?://|url\(", page)
    images = _images(page)
    assert "sensitivity ranking" in images
    ranges = [k for k in images if k.startswith("range of ")]
    assert len(ranges) == 3 and ranges[0] == "range of conv2/fq_input_0"  # the worst activations first
    for img in images.values():
        colours = img.getcolors(maxcolors=1 << 20)
        assert img.width > 200 and img.height > 100 and len(colours) > 20  # a real plot, not a blank square
    # the plan: every FakeQuantize of the converted model is a row
    names = [r.fake_quantize for r in analysis.ranking]
    assert all(f"<td>{n}</td>" in page for n in names)
    data = json.loads(json_path.read_text())
    assert [r["fake_quantize"] for r in data["analysis"]["ranking"]] == names
    assert {r["fake_quantize"] for r in data["plan"]} == set(names)
    assert data["analysis"]["suggested_ignored"] == {"scope": ["conv2"]}
    assert set(data["analysis"]["timings_s"]) == {"quantize", "analysis", "total"}
    assert data["analysis"]["versions"]["torch"] == torch.__version__
    torchpqt.load_config(data["config"])  # the config as the run used it


def test_report_without_plots_and_clear_error_without_matplotlib(analysis, tmp_path, monkeypatch):
    html_path, _ = write_report(analysis, tmp_path, plots=False)
    assert "<img" not in html_path.read_text()
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(torchpqt.TorchPQTError, match=r"pip install 'torchpqt\[report\]'"):
        write_report(analysis, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow  # the CLI's --report test covers the same path with an export check
@pytest.mark.openvino
def test_report_with_export_check(analysis, tmp_path):
    pytest.importorskip("openvino")
    from torchpqt.exporters import openvino as ov_export

    check = ov_export.export(analysis.qmodel, (torch.cat(samples(1, seed=3)),), str(tmp_path / "m.xml"))
    html_path, json_path = analysis.write_report(tmp_path, export_report=check)
    exported = json.loads(json_path.read_text())["export_check"]
    assert exported["int8_share"] == check.int8_share and exported["sim_sqnr_db"] == check.sim_sqnr_db
    assert "Export check" in html_path.read_text()
