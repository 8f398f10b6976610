"""Render a torchpqt report in a real headless Chromium, screenshot it and check the plots are there.

    python benchmarks/report_screenshot.py [--out benchmarks/figures/report.png] [--width 1280] [--height 2200]

Analyzes the digits CNN (benchmarks/layerwise_tuning.py), writes report.html, then
  * ``chromium --headless --dump-dom`` on a copy of the page with a probe script: every <img> decoded
    (``naturalWidth > 0``), counted by the browser itself;
  * ``chromium --headless --screenshot``: the PNG must show the plots: many pixels of the bar/histogram colour
    (matplotlib's C0 blue); the same page without plots, the negative control, shows none.
Needs a Chromium binary (Debian: ``apt-get install chromium``); exits 2 with a message when there is none.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
PLOT_BLUE = (31, 119, 180)  # matplotlib's C0: the bars and histograms of the report
_PROBE = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
          "document.title='decoded '+i.filter(x=>x.complete&&x.naturalWidth>0).length+' of '+i.length;});</script>")


def find_chromium() -> str | None:
    """The path of a Chromium/Chrome binary ($CHROMIUM first), or None."""
    for name in (os.environ.get("CHROMIUM"), *BROWSERS):
        if name and (path := shutil.which(name)):
            return path
    return None


def _run(browser: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def screenshot(browser: str, html: Path, png: Path, width: int = 1280, height: int = 2200) -> Path:
    """Render ``html`` at ``width`` x ``height`` into ``png``."""
    png.parent.mkdir(parents=True, exist_ok=True)
    if png.exists():
        png.unlink()
    done = _run(browser, f"--screenshot={png}", f"--window-size={width},{height}", html.resolve().as_uri())
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-500:]}")
    return png


def decoded_images(browser: str, html: Path) -> tuple[int, int]:
    """(decoded, total) <img> elements of ``html`` as the browser counts them after load."""
    page = html.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.html"
        probe.write_text(page.replace("</head>", _PROBE + "</head>", 1), encoding="utf-8")
        done = _run(browser, "--dump-dom", "--virtual-time-budget=5000", probe.as_uri())
    found = re.search(r"<title>decoded (\d+) of (\d+)</title>", done.stdout)
    if not found:
        raise RuntimeError(f"chromium did not report the images (exit {done.returncode}): {done.stderr[-500:]}")
    return int(found.group(1)), int(found.group(2))


def plot_pixels(png: Path, colour: tuple[int, int, int] = PLOT_BLUE, tolerance: int = 12) -> int:
    """How many pixels of the screenshot are within ``tolerance`` of ``colour`` on every channel."""
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(rgb - np.array(colour)).max(axis=2) <= tolerance).sum())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "figures" / "report.png"))
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=2200)
    args = ap.parse_args()
    browser = find_chromium()
    if browser is None:
        print("no Chromium binary found (tried $CHROMIUM, " + ", ".join(BROWSERS) + "); on Debian: "
              "apt-get install chromium", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT))
    import layerwise_tuning as tuning_bench
    import torch

    import torchpqt

    torch.set_num_threads(1)
    model, cal, *_ = tuning_bench.digits(300, 10)
    analysis = torchpqt.analyze(model, cal, {"preset": "performance", "stat_subset_size": 300}, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        html, _ = analysis.write_report(Path(tmp) / "with")
        bare, _ = analysis.write_report(Path(tmp) / "without", plots=False)
        decoded, total = decoded_images(browser, html)
        png = screenshot(browser, html, Path(args.out), args.width, args.height)
        control = screenshot(browser, bare, Path(tmp) / "control.png", args.width, args.height)
        blue, blue_control = plot_pixels(png), plot_pixels(control)
    print(f"{browser}: {decoded}/{total} images decoded; plot-coloured pixels {blue} (without plots: "
          f"{blue_control}); screenshot {png}")
    ok = total >= 2 and decoded == total and blue > 5000 and blue_control < 50
    print("plots present" if ok else "PLOTS MISSING")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
