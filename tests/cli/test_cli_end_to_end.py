"""The CLI from config to a compiled OpenVINO IR, on tiny models saved to disk."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import EXAMPLES, base_config, run_subprocess

from torchpqt.cli.model import load_callable

ov = pytest.importorskip("openvino")
pytestmark = pytest.mark.openvino
CONFIGS = EXAMPLES / "configs"


def _compile(xml: Path):
    core = ov.Core()
    model = core.read_model(str(xml))
    return model, core.compile_model(model, "CPU")


def _op_types(model) -> list[str]:
    return [op.get_type_name() for op in model.get_ops()]


def _int8_constants(model) -> int:
    return sum(op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8 for op in model.get_ops())


def _report(xml: Path) -> dict:
    return json.loads((xml.parent / "report.json").read_text())


def test_template_runs_as_shipped(tmp_path):
    result = run_subprocess("-c", CONFIGS / "default_quantization_template.json", "--output-dir", "out",
                            cwd=tmp_path)
    assert result.code == 0, result.err
    xmls = list((tmp_path / "out").glob("small_cnn_DefaultQuantization/*/optimized/small_cnn.xml"))
    assert len(xmls) == 1, list((tmp_path / "out").rglob("*"))
    xml = xmls[0]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}", xml.parent.parent.name)
    assert xml.with_suffix(".bin").is_file() and (xml.parent.parent / "log.txt").is_file()
    model, compiled = _compile(xml)
    assert "FakeQuantize" in _op_types(model) and _int8_constants(model) > 0
    calibration_data = load_callable("data.py:calibration_data", EXAMPLES, "test")
    output = compiled(calibration_data(1)[0].numpy())[0]
    assert output.shape == (1, 10) and np.isfinite(output).all()
    report = _report(xml)
    assert report["config"]["model"]["model"] == "../models.py:small_cnn"
    assert report["fake_quantize"] and all(r["levels"] in (255, 256) for r in report["fake_quantize"].values())
    assert set(report["timings_s"]) == {"calibration", "export", "total"}
    assert report["export_check"]
    assert result.err == ""  # no progress bar when stderr is not a terminal; torch's logs go to stdout


def test_pt2_model_npy_data_direct_dump(workdir, pt2_model, write_config):
    path = write_config(base_config(model={"model_name": "tiny", "model": pt2_model.name}))  # shape from .pt2
    result = run_subprocess("-c", path, "-d", "--output-dir", "out", cwd=workdir)
    assert result.code == 0, result.err
    out = workdir / "out"
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "manifest.json", "report.json", "tiny.bin", "tiny.xml"]
    _, compiled = _compile(out / "tiny.xml")
    sample = np.load(workdir / "calib.npy")[:1]
    reference = torch.export.load(str(pt2_model)).module()(torch.from_numpy(sample)).detach().numpy()
    np.testing.assert_allclose(compiled(sample)[0], reference, atol=0.1)  # int8 vs float: loose on purpose
    assert "INFO" in (out / "log.txt").read_text()


def _run(cli, tmp_path: Path, name: str, *argv, progress: bool = False) -> Path:
    result = cli(*argv, "-d", "--output-dir", tmp_path / name)
    assert result.code == 0, result.err
    assert ("%|" in result.err) == progress  # tqdm's bar, only with --progress-bar (stderr is no TTY here)
    return next((tmp_path / name).glob("*.xml"))


def test_quick_mode(cli, tmp_path):
    xml = _run(cli, tmp_path, "quick", "-q", "default", "--model", EXAMPLES / "models.py:small_cnn",
               "--data", EXAMPLES / "data.py:calibration_data", "--input-shape", 1, 3, 32, 32, "--name", "cnn",
               "--preset", "mixed", "--progress-bar", progress=True)
    assert xml.name == "cnn.xml"
    report = _report(xml)
    assert report["config"]["compression"]["algorithms"][0]["params"] == {"preset": "mixed",
                                                                          "stat_subset_size": 300}
    assert report["quantization_config"]["preset"] == "mixed"
    _compile(xml)


def test_spec_file_quantizes_like_the_template(cli, tmp_path):
    spec = _report(_run(cli, tmp_path, "spec", "-c", CONFIGS / "default_quantization_spec.json"))
    template = _report(_run(cli, tmp_path, "template", "-c", CONFIGS / "default_quantization_template.json"))
    assert spec["fake_quantize"] == template["fake_quantize"]


def test_keep_uncompressed_weights(cli, workdir, write_config, tmp_path):
    path = write_config(base_config())
    compressed, _ = _compile(_run(cli, tmp_path, "int8", "-c", path))
    uncompressed, _ = _compile(_run(cli, tmp_path, "float", "-c", path, "--keep-uncompressed-weights"))
    assert _int8_constants(compressed) > 0
    assert _int8_constants(uncompressed) == 0


def test_dump_intermediate_model(cli, write_config, tmp_path):
    config = base_config()
    config["compression"]["dump_intermediate_model"] = True
    xml = _run(cli, tmp_path, "dump", "-c", write_config(config))
    assert _report(xml)["torch_model"] == "tiny_fq.pt2"
    fq_model = torch.export.load(str(xml.parent / "tiny_fq.pt2")).module()
    assert fq_model(torch.zeros(1, 3, 16, 16)).shape == (1, 2)


def test_two_inputs_from_npz(cli, workdir, write_config, tmp_path):
    rng = np.random.default_rng(1)
    np.savez(workdir / "pairs.npz", x=rng.standard_normal((5, 8), np.float32),
             y=rng.standard_normal((5, 4), np.float32))
    config = base_config(model={"model": str(EXAMPLES / "models.py") + ":two_input_mlp"},
                         engine={"type": "simplified", "data_source": "pairs.npz"})
    model, compiled = _compile(_run(cli, tmp_path, "npz", "-c", write_config(config)))
    assert [p.get_partial_shape()[1].get_length() for p in model.get_parameters()] == [8, 4]
    x, y = np.load(workdir / "pairs.npz")["x"][:1], np.load(workdir / "pairs.npz")["y"][:1]
    float_model = load_callable("models.py:two_input_mlp", EXAMPLES, "test")()
    reference = float_model(torch.from_numpy(x), torch.from_numpy(y)).detach().numpy()
    np.testing.assert_allclose(compiled([x, y])[0], reference, atol=0.1)


def test_layerwise_tuning_through_the_config_reports_per_layer_losses(workdir, write_config):
    params = {"preset": "performance", "stat_subset_size": 6, "use_layerwise_tuning": True,
              "num_samples_for_tuning": 8, "batch_size": 4, "tuning_mode": "sequential", "weights_lr": 1e-4}
    config = base_config(compression={"target_device": "ANY", "algorithms": [
        {"name": "DefaultQuantization", "params": params}]})
    result = run_subprocess("-c", write_config(config), "-d", "--output-dir", "out", cwd=workdir)
    assert result.code == 0, result.err
    report = _report(workdir / "out" / "tiny.xml")
    tuning = report["layerwise_tuning"]
    assert tuning and all(set(v) == {"loss_before", "loss_after", "restored"} for v in tuning.values())
    assert all(v["loss_after"] <= v["loss_before"] for v in tuning.values())  # the guard's promise
    model = report["layerwise_tuning_model"]  # the whole-model guard (tuning_guard "both", the default)
    assert set(model) == {"output_loss_before", "output_loss_after", "restored"}
    assert model["output_loss_after"] <= model["output_loss_before"]
    assert report["quantization_config"]["tuning_mode"] == "sequential"
