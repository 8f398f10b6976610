"""examples/distributed_calibration.py as the README runs it: torchrun, two CPU processes (slow: two
EfficientNet-Lite0 quantizations per rank 0; the 2-rank test covers the same path on small models)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_torchrun_example_matches_one_process():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          str(REPO / "examples" / "distributed_calibration.py"), "--quick"],
                         check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "identical to one process on all photos: True" in out.stdout, out.stdout
