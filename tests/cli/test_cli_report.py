"""The CLI's --report: the sensitivity analysis, report.html next to report.json."""

import json

import pytest
from cli_helpers import base_config

pytest.importorskip("matplotlib")
pytest.importorskip("openvino")


@pytest.mark.openvino
def test_cli_report_flag(cli, workdir, write_config, tmp_path):
    result = cli("-c", write_config(base_config()), "-d", "--output-dir", tmp_path / "out", "--report")
    assert result.code == 0, result.err
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["export_check"] and report["fake_quantize"]  # the CLI's usual sections stay
    assert {r["module"] for r in report["analysis"]["ranking"]} == set(report["fake_quantize"])
    assert "analysis" in report["timings_s"]
    page = (out / "report.html").read_text()
    assert "Export check" in page and "sensitivity ranking" in page
