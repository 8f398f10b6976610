"""Sharded calibration on 2 CPU ranks (gloo, torch.multiprocessing spawn): every rank's FakeQuantize
parameters (and weights, biases) equal, bitwise, one process's run on the shards' concatenation in rank order
(tests/dist_cases.py has the cases: a CNN and a BERT, median / hl_estimator / mean aggregators,
stat_subset_size smaller than the total, prepare + own loop + convert, channel alignment in one pass (derived
statistics) and with its second pass and BiasCorrection's gathered data reads; slow: shuffle_data, stat_batch_size 2, LayerwiseTuning); a rank without data makes every rank raise."""

from __future__ import annotations

import os

import dist_cases
import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")


def _launch(tmp_path, names: list[str], errors: bool = True) -> None:
    init = tmp_path / "init"
    try:
        mp.spawn(dist_cases.worker, args=(2, str(init), str(tmp_path), names, errors), nprocs=2, join=True)
    except Exception as exc:  # noqa: BLE001 - any spawn failure: show the ranks' tracebacks
        crashes = [p.read_text() for p in sorted(tmp_path.glob("crash.*.txt"))]
        crashes += [f"{p.name}:\n{p.read_text()}" for p in sorted(tmp_path.glob("fault.*.txt")) if p.stat().st_size]
        # no crash file: the rank died before its handler ran (a signal); say how
        raise AssertionError("a rank crashed:\n" + ("\n".join(crashes) or f"{type(exc).__name__}: {exc}")) from None


def _check(tmp_path, names: list[str]) -> None:
    torch.set_num_threads(1)
    try:
        for name in names:
            first, second = dist_cases.shards(name)
            expected = dist_cases.run_case(name, first + second, distributed=False)
            alone = dist_cases.run_case(name, first, distributed=False)
            for rank in (0, 1):
                got = torch.load(tmp_path / f"{name}.{rank}.pt")
                assert got.keys() == expected.keys(), name
                for key, value in expected.items():
                    assert torch.equal(got[key], value), f"{name}: rank {rank}: {key}"
            # the test can fail: rank 0's shard alone gives other ranges
            assert any(not torch.equal(alone[k], expected[k]) for k in expected if "fq" in k or "input" in k), name
    finally:
        torch.set_num_threads(os.cpu_count() or 1)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ranks")
    _launch(tmp, list(dist_cases.CASES))
    return tmp


@pytest.mark.parametrize("name", list(dist_cases.CASES))
def test_every_rank_equals_one_process_on_the_concatenation(two_ranks, name):
    _check(two_ranks, [name])


@pytest.mark.parametrize("kind", ["empty-rank", "loop-empty-rank"])
def test_a_rank_without_data_fails_on_every_rank(two_ranks, kind):
    messages = [(two_ranks / f"{kind}.{rank}.txt").read_text() for rank in (0, 1)]
    for message in messages:
        assert "rank(s) [1] of 2" in message, message


@pytest.mark.slow
def test_more_configs_on_two_ranks(tmp_path):
    """The default config, a mean aggregator at stat_batch_size 2, shuffle_data, a BERT in a user loop,
    LayerwiseTuning's gathered data."""
    names = list(dist_cases.SLOW_CASES)
    _launch(tmp_path, names, errors=False)
    _check(tmp_path, names)
