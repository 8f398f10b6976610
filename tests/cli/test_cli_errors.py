"""Every bad invocation: exit code 2, one line on stderr naming the problem and the fix, no traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import Result, base_config, run_subprocess


def _algo(params: dict) -> dict:
    return {"target_device": "ANY", "algorithms": [{"name": "DefaultQuantization", "params": params}]}


BAD_CONFIGS = {
    "unknown-top-level-key": ({**base_config(), "optimizer": {}}, ["'optimizer'", "model, engine, compression"]),
    "unknown-model-key": (base_config(model={"model": "tiny.py:tiny_cnn", "weigths": "w.pt"}),
                          ["'model.weigths'", "weights"]),
    "unknown-engine-key": (base_config(engine={"type": "simplified", "data_source": "calib.npy", "device": 1}),
                           ["'engine.device'"]),
    "unknown-compression-key": (base_config(compression={**_algo({}), "stat_subset_size": 3}),
                                ["compression", "stat_subset_size"]),
    "unknown-param-key": (base_config(compression=_algo({"preset": "mixed", "presett": 1})), ["presett"]),
    "param-in-wrong-place": (base_config(compression=_algo({"target_device": "CPU"})),
                             ["params.target_device", "compression"]),
    "bad-preset-value": (base_config(compression=_algo({"preset": "fast"})), ["preset", "fast"]),
    "missing-compression": ({"model": base_config()["model"], "engine": base_config()["engine"]},
                            ["'compression'"]),
    "missing-engine": ({"model": base_config()["model"], "compression": base_config()["compression"]},
                       ["'engine'"]),
    "missing-model-model": (base_config(model={"model_name": "x"}), ["'model.model'"]),
    "bad-input-shape": (base_config(model={"model": "tiny.py:tiny_cnn", "example_input_shape": "1x3"}),
                        ["model.example_input_shape", "[1, 3, 224, 224]"]),
    "shape-and-inputs": (base_config(model={"model": "tiny.py:tiny_cnn", "example_input_shape": [1, 3, 16, 16],
                                            "inputs": [{"name": "x"}]}), ["keep one"]),
    "bad-input-dtype": (base_config(model={"model": "tiny.py:tiny_cnn", "inputs": [{"dtype": "float"}]}),
                        ["model.inputs[0].dtype", "float32"]),
    "other-algorithm": (base_config(compression={"algorithms": [{"name": "AccuracyAwareQuantization"}]}),
                        ["AccuracyAwareQuantization", "DefaultQuantization"]),
    "two-algorithms": (base_config(compression={"algorithms": [{"name": "DefaultQuantization"}] * 2}),
                       ["exactly one"]),
    "accuracy-checker-engine": (base_config(engine={"config": "ac.yml"}), ["'engine.config'", "simplified"]),
    "accuracy-checker-type": (base_config(engine={"type": "accuracy_checker", "data_source": "x"}),
                              ["engine.type", "simplified"]),
    "factory-raises": (base_config(model={"model": "tiny.py:broken"}),
                       ["model.model", "ValueError", "broken on purpose"]),
    "factory-not-module": (base_config(model={"model": "tiny.py:not_a_module"}), ["int", "nn.Module"]),
    "factory-missing-callable": (base_config(model={"model": "tiny.py:nope"}), ["no callable 'nope'"]),
    "factory-missing-module": (base_config(model={"model": "no_such_pkg.models:net"}),
                               ["cannot import module 'no_such_pkg.models'"]),
    "factory-missing-file": (base_config(model={"model": "nowhere.py:net"}), ["nowhere.py", "does not exist"]),
    "pt2-missing": (base_config(model={"model": "missing.pt2"}), ["missing.pt2", "does not exist"]),
    "pt2-corrupt": (base_config(model={"model": "calib.npy.pt2"}), ["calib.npy.pt2"]),
    "weights-missing": (base_config(model={"model": "tiny.py:tiny_cnn", "weights": "w.pt"}),
                        ["model.weights", "w.pt", "does not exist"]),
    "data-missing": (base_config(engine={"type": "simplified", "data_source": "nothing.npy"}),
                     ["engine.data_source", "nothing.npy", "does not exist"]),
    "data-wrong-kind": (base_config(engine={"type": "simplified", "data_source": "tiny.py"}),
                        ["engine.data_source", "tiny.py"]),
    "data-callable-raises": (base_config(engine={"type": "simplified", "data_source": "tiny.py:broken"}),
                             ["engine.data_source", "broken on purpose"]),
    "data-callable-not-iterable": (base_config(engine={"type": "simplified", "data_source": "tiny.py:not_a_module"}),
                                   ["engine.data_source", "iterable"]),
    "data-shape-mismatch": (base_config(model={"model": "tiny.py:tiny_cnn", "example_input_shape": [1, 3, 8, 8]}),
                            ["calib.npy[0]", "[1, 3, 8, 8]"]),
    "image-options-on-arrays": (base_config(engine={"type": "simplified", "data_source": "calib.npy",
                                                    "mean": [1, 2, 3]}), ["engine.mean", "image folders"]),
    "bad-layout": (base_config(engine={"type": "simplified", "data_source": "calib.npy", "layout": "NCWH"}),
                   ["engine.layout", "NCHW"]),
}


@pytest.mark.parametrize("config,fragments", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_config_is_one_line_exit_2(cli, write_config, config, fragments):
    if "calib.npy.pt2" in str(config):
        (write_config("x").parent / "calib.npy.pt2").write_bytes(b"not a zip file")
    cli("-c", write_config(config)).assert_one_line_error(*fragments)


def test_bad_json_names_line_and_column(cli, write_config):
    path = write_config('{\n  "model": {"model": "tiny.py:tiny_cnn",}\n  "engine": {}\n}')
    cli("-c", path).assert_one_line_error(f"{path}:3:3", "invalid JSON")


def test_unterminated_block_comment(cli, write_config):
    cli("-c", write_config('{"model": {} /* oops\n}')).assert_one_line_error("unterminated /* comment", "line 1")


def test_config_is_not_an_object(cli, write_config):
    cli("-c", write_config("[1, 2]")).assert_one_line_error("must be a JSON object")


@pytest.mark.parametrize("argv,fragment", [
    ([], "either -c/--config"),
    (["-c", "config.json", "-q", "default"], "either -c/--config"),
    (["-q", "default", "--model", "tiny.py:tiny_cnn"], "--data"),
    (["-c", "missing.json"], "'missing.json' does not exist"),
    (["-c", "config.json", "--preset", "mixed"], "--preset is a quick-mode option"),
    (["-q", "accuracy_aware"], "invalid choice"),
    (["--log-level", "LOUD"], "invalid choice"),
    (["-c", "config.json", "--no-such-flag"], "unrecognized arguments"),
], ids=["no-mode", "both-modes", "quick-without-data", "missing-config", "quick-option-with-config",
        "accuracy-aware", "bad-log-level", "unknown-flag"])
def test_bad_command_line(cli, write_config, monkeypatch, argv, fragment):
    monkeypatch.chdir(write_config(base_config()).parent)
    cli(*argv).assert_one_line_error(fragment)


def test_quick_mode_missing_model(cli, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    cli("-q", "default", "--model", "absent.pt2", "--data", "calib.npy").assert_one_line_error("absent.pt2")


def test_weights_that_do_not_fit(cli, workdir, write_config):
    torch.save({"conv.weight": torch.zeros(1)}, workdir / "w.pt")
    config = base_config(model={"model": "tiny.py:tiny_cnn", "weights": "w.pt"})
    cli("-c", write_config(config)).assert_one_line_error("model.weights", "does not fit")


def test_npz_names_must_match_inputs(cli, workdir, write_config):
    np.savez(workdir / "calib.npz", image=np.zeros((2, 3, 16, 16), np.float32))
    config = base_config(engine={"type": "simplified", "data_source": "calib.npz"})
    cli("-c", write_config(config)).assert_one_line_error("['image']", "forward()")


def test_empty_folder(cli, workdir, write_config):
    (workdir / "empty").mkdir()
    config = base_config(engine={"type": "simplified", "data_source": "empty"})
    cli("-c", write_config(config)).assert_one_line_error("no .npy or image files")


def test_images_without_pillow_are_a_clear_error(cli, workdir, write_config, monkeypatch):
    (workdir / "images").mkdir()
    (workdir / "images" / "a.png").write_bytes(b"\x89PNG")
    monkeypatch.setitem(sys.modules, "PIL", None)  # as if Pillow were not installed
    config = base_config(engine={"type": "simplified", "data_source": "images"})
    cli("-c", write_config(config)).assert_one_line_error("Pillow is not installed", "pip install pillow")


def test_images_need_an_input_shape(cli, workdir, write_config):
    (workdir / "images").mkdir()
    (workdir / "images" / "a.png").write_bytes(b"\x89PNG")
    config = base_config(model={"model": "tiny.py:tiny_cnn"},
                         engine={"type": "simplified", "data_source": "images"})
    cli("-c", write_config(config)).assert_one_line_error("model.example_input_shape")


@pytest.mark.parametrize("model,fragment", [("tiny.py:broken", "broken on purpose"),
                                            ("corrupt.pt2", "torch.export.load")], ids=["factory", "pt2"])
def test_subprocess_error_has_no_traceback(write_config, model, fragment):
    path = write_config(base_config(model={"model": model}))
    (path.parent / "corrupt.pt2").write_bytes(b"not a zip file")  # torch logs a traceback on load
    run_subprocess("-c", path, cwd=path.parent).assert_one_line_error(fragment)


def test_debug_log_level_prints_the_traceback(write_config):
    path = write_config(base_config(model={"model": "tiny.py:broken"}))
    result = run_subprocess("-c", path, "--log-level", "DEBUG", cwd=path.parent)
    assert result.code == 2
    assert "Traceback" in result.err
    assert result.err.strip().splitlines()[-1].startswith("torchpqt: error: ")


def test_help_exits_0(cli):
    with pytest.raises(SystemExit) as exc:
        cli("--help")
    assert exc.value.code == 0


def test_results_are_not_written_for_a_bad_config(cli, write_config, monkeypatch):
    path = write_config(base_config(model={"model": "tiny.py:broken"}))
    monkeypatch.chdir(path.parent)
    cli("-c", path, "--output-dir", "out").assert_one_line_error("broken")
    assert not Path(path.parent / "out").exists()


def test_result_helper_can_fail():
    # the assertion helper itself must reject a traceback or a second line
    with pytest.raises(AssertionError):
        Result(2, "", "torchpqt: error: x\nTraceback").assert_one_line_error()
    with pytest.raises(AssertionError):
        Result(1, "", "torchpqt: error: x").assert_one_line_error()
