"""Fixtures for the CLI tests: run the CLI in-process, write configs and tiny models."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_helpers import TINY_MODELS, Result

from torchpqt.cli import main
from torchpqt.cli.model import load_callable


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run ``torchpqt`` in this process (fast); returns a Result."""

    def run(*argv: Any) -> Result:
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder with ``tiny.py`` (factories), ``calib.npy`` (6 samples of 3x16x16) and nothing else."""
    (tmp_path / "tiny.py").write_text(TINY_MODELS)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "calib.npy", rng.random((6, 3, 16, 16), dtype=np.float32))
    return tmp_path


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
