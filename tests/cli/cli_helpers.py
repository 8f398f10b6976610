"""Helpers shared by the CLI tests (a uniquely named module: `conftest` names clash across folders)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

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


def run_subprocess(*argv: Any, cwd: Path) -> Result:
    """``python -m torchpqt ...`` in a fresh interpreter, stderr captured (so it is not a TTY)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "torchpqt", *map(str, argv)], cwd=cwd, env=env,
                          check=False, capture_output=True, text=True, timeout=600)
    return Result(proc.returncode, proc.stdout, proc.stderr)


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
