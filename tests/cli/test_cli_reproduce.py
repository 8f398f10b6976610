"""The CLI's statistics cache flag, run manifest, int8 lint in report.json and `torchpqt reproduce`."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("openvino")
pytestmark = pytest.mark.openvino


def test_cache_manifest_lint_and_reproduce(cli, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    quick = ["-q", "default", "--model", "tiny.py:tiny_cnn", "--data", "calib.npy", "--input-shape", 1, 3, 16, 16,
             "-d", "--statistics-cache", "stats.pt"]
    first = cli(*quick, "--output-dir", "a")
    assert first.code == 0, first.err
    assert (workdir / "stats.pt").is_file() and "does not exist yet" in first.out
    manifest = workdir / "a" / "manifest.json"
    m = json.loads(manifest.read_text())
    assert m["ir"].endswith(".xml") and (workdir / "a" / m["ir"]).is_file()
    assert m["calibration"]["samples"] == 6 and m["calibration"]["indices"] == list(range(6))
    report = json.loads((workdir / "a" / "report.json").read_text())
    assert report["int8_lint"]["int8_share"] == 1.0 and report["int8_lint"]["not_int8"] == []
    assert "int8 lint" in first.out

    second = cli(*quick, "--preset", "mixed", "--output-dir", "b")
    assert second.code == 0, second.err
    assert "0 calibrated" in second.out  # every statistic from the cache

    ok = cli("reproduce", manifest, "--model", "tiny.py:tiny_cnn", "--data", "calib.npy", "--input-shape",
             1, 3, 16, 16)
    assert ok.code == 0, ok.out + ok.err
    assert "reproduced bit for bit" in ok.out

    calib = np.load(workdir / "calib.npy")
    calib[2] *= 2
    np.save(workdir / "other.npy", calib)
    bad = cli("reproduce", manifest, "--model", "tiny.py:tiny_cnn", "--data", "other.npy", "--input-shape",
              1, 3, 16, 16)
    assert bad.code == 3 and "NOT reproduced" in bad.out and "statistics" in bad.out


def test_reproduce_without_a_manifest_is_a_one_line_error(cli, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    cli("reproduce", "missing.json", "--model", "tiny.py:tiny_cnn", "--data", "calib.npy").assert_one_line_error(
        "missing.json does not exist")
