"""The report in a real headless Chromium: every plot decodes and the screenshot shows them (the same page
without plots, the negative control, does not). Skipped where no Chromium binary is installed."""

import importlib.util
from pathlib import Path

import pytest
import torch
from outlier_model import OutlierCNN, samples

import torchpqt

pytest.importorskip("matplotlib")
_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "report_screenshot.py"
_spec = importlib.util.spec_from_file_location("report_screenshot", _SCRIPT)
shot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shot)

BROWSER = shot.find_chromium()
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium binary on PATH (chromium, chromium-browser, "
                                "google-chrome, or $CHROMIUM); on Debian: apt-get install chromium")


def test_report_renders_with_its_plots_in_chromium(tmp_path):
    torch.manual_seed(0)
    analysis = torchpqt.analyze(OutlierCNN().eval(), samples(16, seed=0), eval_samples=8)
    html, _ = analysis.write_report(tmp_path / "with", histogram_layers=4)
    bare, _ = analysis.write_report(tmp_path / "without", plots=False)

    decoded, total = shot.decoded_images(BROWSER, html)
    assert total == 5 and decoded == total  # the ranking and four range plots, decoded by the browser

    png = shot.screenshot(BROWSER, html, tmp_path / "report.png", 1280, 1800)
    control = shot.screenshot(BROWSER, bare, tmp_path / "control.png", 1280, 1800)
    assert shot.plot_pixels(png) > 5000
    assert shot.plot_pixels(control) < 50
