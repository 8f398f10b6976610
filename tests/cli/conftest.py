"""Fixtures for the CLI tests: run the CLI in-process or as a subprocess, write configs and tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from torchpqt.cli import main
from torchpqt.cli_model import load_callable

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

TINY_MODELS = textwrap.dedent('''
    import torch
    from torch import nn

    def tiny_cnn():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()

    def broken():
        raise ValueError("the factory is broken on purpose")

    def not_a_module():
        return 42
''')


class Result:
    """Exit code and the two output streams of one CLI run."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def assert_one_line_error(self, *fragments: str) -> None:
        lines = self.err.strip().splitlines()
        assert self.code == 2, (self.code, self.err)
        assert len(lines) == 1, self.err
        assert lines[0].startswith("torchpqt: error: "), lines[0]
        assert "Traceback" not in self.err + self.out
        for fragment in fragments:
            assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run ``torchpqt`` in this process (fast); returns a Result."""

    def run(*argv: Any) -> Result:
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def run_subprocess(*argv: Any, cwd: Path) -> Result:
    """``python -m torchpqt ...`` in a fresh interpreter, stderr captured (so it is not a TTY)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "torchpqt", *map(str, argv)], cwd=cwd, env=env,
                          check=False, capture_output=True, text=True, timeout=600)
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder with ``tiny.py`` (factories), ``calib.npy`` (6 samples of 3x16x16) and nothing else."""
    (tmp_path / "tiny.py").write_text(TINY_MODELS)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "calib.npy", rng.random((6, 3, 16, 16), dtype=np.float32))
    return tmp_path


def base_config(**sections: Any) -> dict[str, Any]:
    """A valid config for ``tiny.py:tiny_cnn`` and ``calib.npy``; keyword sections replace the defaults."""
    config = {
        "model": {"model_name": "tiny", "model": "tiny.py:tiny_cnn", "example_input_shape": [1, 3, 16, 16]},
        "engine": {"type": "simplified", "data_source": "calib.npy"},
        "compression": {"target_device": "ANY", "algorithms": [
            {"name": "DefaultQuantization", "params": {"preset": "performance", "stat_subset_size": 4}}]},
    }
    config.update(sections)
    return config


@pytest.fixture
def write_config(workdir: Path) -> Callable[..., Path]:
    """Write a config (a dict, or raw text) into the work folder and return its path."""

    def write(config: dict[str, Any] | str, name: str = "config.json") -> Path:
        path = workdir / name
        path.write_text(config if isinstance(config, str) else json.dumps(config, indent=2))
        return path

    return write


@pytest.fixture
def pt2_model(workdir: Path) -> Path:
    """``tiny_cnn`` saved by torch.export.save as ``tiny.pt2`` (input 1x3x16x16)."""
    tiny_cnn = load_callable("tiny.py:tiny_cnn", workdir, "test")  # the factory the configs name
    program = torch.export.export(tiny_cnn(), (torch.zeros(1, 3, 16, 16),))
    torch.export.save(program, str(workdir / "tiny.pt2"))
    return workdir / "tiny.pt2"
