"""The statistics store: what calibration measured, saved, reloaded in a fresh process and merged."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import models
import numpy as np
import pytest
import torch

import torchpqt
from torchpqt.errors import TorchPQTError
from torchpqt.statistics import StatisticsStore, StatSpec, TensorStatistics
from torchpqt.statistics.aggregators import finalize

TESTS = Path(__file__).resolve().parents[1]
# per-sample aggregators (median, hl_estimator: the store keeps the reduced values), per-channel quantiles
CONFIG = {"preset": "mixed", "stat_batch_size": 2, "range_estimator": {"preset": "quantile"},
          "activations": {"range_estimator": {"max": {"aggregator": "hl_estimator"},
                                              "min": {"aggregator": "median"}}}}


def _calibrated(config=CONFIG):
    model = models.build("tiny_cnn")
    data = models.calibration_data("tiny_cnn", 6, seed=4)
    prepared = torchpqt.prepare(model, data[0], config)
    with torch.no_grad():
        for x in data:
            prepared(x)
    return prepared, data


def _state(qmodel) -> dict:
    return {k: v.detach().clone() for k, v in qmodel.state_dict().items()}


def test_saved_store_converts_to_the_same_model_in_a_fresh_process(tmp_path):
    prepared, _ = _calibrated()
    store = torchpqt.collect_statistics(prepared)
    store.save(tmp_path / "stats.pt")
    reference = torchpqt.convert(prepared)
    torch.save({"state": _state(reference), "code": reference.code}, tmp_path / "reference.pt")
    # a fresh interpreter: prepare the same model again (no calibration), convert from the loaded store
    code = textwrap.dedent(f"""
        import torch, torchpqt, models
        config = {CONFIG!r}
        model = models.build("tiny_cnn")
        example = models.calibration_data("tiny_cnn", 6, seed=4)[0]
        prepared = torchpqt.prepare(model, example, config)
        store = torchpqt.StatisticsStore.load({str(tmp_path / "stats.pt")!r})
        q = torchpqt.convert(prepared, statistics=store)
        ref = torch.load({str(tmp_path / "reference.pt")!r}, weights_only=True)
        state = q.state_dict()
        assert list(state) == list(ref["state"]), (list(state), list(ref["state"]))
        for name, value in ref["state"].items():
            assert torch.equal(state[name], value), name
        assert q.code == ref["code"]
        print("same", len(state))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("same")


def test_store_round_trips_every_state_exactly(tmp_path):
    prepared, _ = _calibrated()
    store = torchpqt.collect_statistics(prepared)
    assert store.points() == {r.point for r in prepared.torchpqt_schedule.stages[0].requests}
    assert {p.name for p in prepared.torchpqt_plan.points if p.group != "weights"} <= store.points()
    store.save(tmp_path / "s.pt")
    loaded = StatisticsStore.load(tmp_path / "s.pt")
    assert set(loaded) == set(store)
    for key, state in store.items():
        for field, value in state.items():
            other = loaded[key][field]
            assert torch.equal(other, value) if isinstance(value, torch.Tensor) else other == value, (key, field)


def test_a_store_of_two_halves_merges_into_the_store_of_the_whole():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(3, 4, 5, generator=g) * (1 + i) for i in range(6)]
    specs = [StatSpec("min", "min", "min", "pertensor"), StatSpec("max", "abs_max", "max", "perchannel"),
             StatSpec("max", "max", "median", "pertensor"), StatSpec("max", "quantile", "hl_estimator", "perchannel"),
             StatSpec("min", "min", "mean_no_outliers", "perchannel"), StatSpec("max", "abs_max", "mean", "pertensor")]

    def store(part):
        stats = TensorStatistics(specs)
        for b in part:
            stats.update(b)
        return StatisticsStore({("x", k): {**v, "rank": 3} for k, v in stats.states().items()})

    whole, merged = store(batches), store(batches[:4]).merge(store(batches[4:]))
    for spec in specs:
        if spec.aggregator == "mean":  # sums of per-batch means: equal up to the summation order
            np.testing.assert_allclose(merged.result("x", spec), whole.result("x", spec), rtol=1e-15)
        else:
            np.testing.assert_array_equal(merged.result("x", spec), whole.result("x", spec))
        assert merged[("x", spec.statistic_key)]["batches"] == 6


def test_merging_differently_collected_statistics_is_an_error():
    spec = StatSpec("max", "abs_max", "max", "pertensor")
    a, b = TensorStatistics([spec]), TensorStatistics([spec], inplace=True)
    a.update(torch.ones(2, 3))
    b.update(torch.ones(2, 3))

    def store(s):
        return StatisticsStore({("x", k): {**v, "rank": 2} for k, v in s.states().items()})

    with pytest.raises(TorchPQTError, match="per_batch"):
        store(a).merge(store(b))


def test_store_results_equal_the_aggregators(tmp_path):
    spec = StatSpec("max", "quantile", "median", "perchannel", outlier_prob=0.01)
    stats = TensorStatistics([spec])
    for i in range(4):
        stats.update(torch.arange(24.0).reshape(2, 3, 4) * (i - 1.5))
    (state,) = stats.states().values()
    np.testing.assert_array_equal(finalize(state), stats.result(spec))


def test_missing_statistics_and_foreign_files_are_clear_errors(tmp_path):
    prepared, _ = _calibrated({"preset": "performance"})
    store = torchpqt.collect_statistics(prepared)
    point = next(iter(store.points()))
    partial = StatisticsStore({k: v for k, v in store.items() if k[0] != point})
    with pytest.raises(TorchPQTError, match="no calibration data reached"):
        torchpqt.convert(prepared, statistics=partial)
    other, _ = _calibrated({"preset": "performance", "range_estimator": {"preset": "quantile"}})
    with pytest.raises(TorchPQTError, match="another config"):
        torchpqt.convert(other, statistics=store)
    torch.save({"weights": torch.ones(1)}, tmp_path / "w.pt")
    with pytest.raises(TorchPQTError, match="not a torchpqt statistics store"):
        StatisticsStore.load(tmp_path / "w.pt")


def test_mean_and_batch_mean_merge_bitwise_in_batch_order():
    """A merged mean continues the first part's sum with the second part's per-batch terms: the float64 adds of
    one run, for every split point; adding the two sums (an older store without the terms) is not."""
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(2, 4, 3, generator=g) * 10 ** float(torch.randint(-8, 9, (), generator=g))
               for _ in range(40)]
    specs = [StatSpec("max", "abs_max", "mean", "pertensor"), StatSpec("min", "mean", "mean", "perchannel"),
             StatSpec("max", "max", "batch_mean", "perchannel")]

    def store(part):
        stats = TensorStatistics(specs)
        for b in part:
            stats.update(b)
        return StatisticsStore({("x", k): {**v, "rank": 3} for k, v in stats.states().items()})

    whole = store(batches)
    naive_differs = False
    for cut in range(1, 40, 3):
        first, second = store(batches[:cut]), store(batches[cut:])
        merged = first.merge(second).merge(StatisticsStore())
        chained = store(batches[:cut // 2]).merge(store(batches[cut // 2:cut])).merge(second)
        old = StatisticsStore({k: {n: v for n, v in s.items() if n != "batch_values"} for k, s in first.items()})
        naive = old.merge(second)
        for spec in specs:
            np.testing.assert_array_equal(merged.result("x", spec), whole.result("x", spec))
            np.testing.assert_array_equal(chained.result("x", spec), whole.result("x", spec))
            np.testing.assert_allclose(naive.result("x", spec), whole.result("x", spec), rtol=1e-13)
            naive_differs |= not np.array_equal(naive.result("x", spec), whole.result("x", spec))
        assert "batch_values" not in naive[("x", specs[0].statistic_key)]
    assert naive_differs  # the data is one where the summation order shows
