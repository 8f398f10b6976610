"""The pipeline: POT's order of steps (spec §2), warnings logged once per call, and the multi-pass contract of
prepare()/convert(), exercised with small algorithms registered the way a new one is."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from torch import nn

import torchpqt
from torchpqt._once import log_once
from torchpqt.algorithms import pipeline
from torchpqt.algorithms.base import Algorithm
from torchpqt.config import load_config
from torchpqt.errors import TorchPQTError
from torchpqt.observer import StatisticRequest
from torchpqt.statistics import StatSpec

OUT_MAX = StatSpec("max", "abs_max", "max", "pertensor")


def _names(params) -> list[str]:
    return [a.name for a in pipeline.algorithms_for(load_config(params))]


def test_pots_order_of_steps():
    assert _names({}) == ["ActivationChannelAlignment", "MinMaxQuantization", "FastBiasCorrection"]
    assert _names({"use_fast_bias": False, "target_device": "GNA", "use_layerwise_tuning": True}) == [
        "ActivationChannelAlignment", "MinMaxQuantization", "BiasCorrection", "OverflowCorrection",
        "LayerwiseTuning"]


def _model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    g = torch.Generator().manual_seed(1)
    return model, [torch.randn(1, 3, 8, 8, generator=g) for _ in range(5)]


def _announcing(message: str) -> Algorithm:
    """A step that logs ``message`` once per call while planning (as a step's per-point warning would)."""

    def statistic_points(plan, config):
        for _ in plan.points:  # one call per point: log_once keeps one line per public call
            log_once(("test", "announcing"), logging.WARNING, message)
        return ()

    return Algorithm("Announcing", enabled=lambda config: True, statistic_points=statistic_points,
                     apply=lambda model, plan, statistics, config, *, data=None: model)


def test_a_steps_warning_is_logged_once_per_call_not_once_per_process(caplog, monkeypatch):
    message = "test step: a warning that repeats per FakeQuantize"
    monkeypatch.setattr(pipeline, "PIPELINE", (_announcing(message), *pipeline.PIPELINE))
    model, data = _model_and_data()
    with caplog.at_level(logging.WARNING, logger="torchpqt"):
        torchpqt.quantize(model, data, {}, progress=False)
        torchpqt.quantize(model, data, {}, progress=False)
    assert [r.getMessage() for r in caplog.records if r.getMessage() == message] == [message, message]


def test_pass_counts_are_pots():
    model, data = _model_and_data()  # conv -> ReLU -> conv: channel alignment does not fire
    for params in ({}, {"target_device": "GNA"}):
        schedule = torchpqt.prepare(model, data[0], params).torchpqt_schedule
        assert schedule.passes == 1 and schedule.data_needs() == [], params
        assert schedule.label(0) == "calibration"
    schedule = torchpqt.prepare(model, data[0], {"use_fast_bias": False}).torchpqt_schedule
    assert schedule.passes == 1
    assert schedule.data_needs() == ["BiasCorrection (runs the calibration data again)"]
    schedule = torchpqt.prepare(model, data[0], {"use_layerwise_tuning": True}).torchpqt_schedule
    assert schedule.passes == 1
    assert schedule.data_needs() == ["LayerwiseTuning (runs the calibration data again)"]


# --- algorithms registered the way a new one is -------------------------------------------------------


def _first_conv(plan):
    return next(p for p in plan.points if p.group == "weights").site.edges[0].consumer


def _doubling(seen: list) -> Algorithm:
    """Doubles the first conv's weights and bias (a float-model change, like channel alignment), after a
    pass that measures the conv's output."""

    def statistic_points(plan, config):
        conv = _first_conv(plan)
        return (StatisticRequest("test/conv output", conv.name, (OUT_MAX,), "test_conv_output"),)

    def apply(model, plan, statistics, config, *, data=None):
        seen.append(float(statistics.result("test/conv output", OUT_MAX)))
        conv = _first_conv(plan)
        with torch.no_grad():
            for arg in conv.args[1:3]:
                model.get_parameter(arg.target).mul_(2.0)
        return model

    return Algorithm("Doubling", enabled=lambda config: True, statistic_points=statistic_points, apply=apply,
                     new_pass_after=True)


@pytest.fixture
def two_passes(monkeypatch):
    seen: list[float] = []
    monkeypatch.setattr(pipeline, "PIPELINE", (_doubling(seen), *pipeline.PIPELINE))
    return seen


def _calibrated(model, data, params):
    prepared = torchpqt.prepare(model, data[0], params)
    with torch.no_grad():
        for x in data:
            prepared(x)
    return prepared


def _fq(qmodel, suffix):
    return next(m for n, m in qmodel.named_modules() if n.endswith(suffix) and isinstance(m, torchpqt.FakeQuantize))


def test_a_step_that_changes_the_float_model_gets_its_own_pass(two_passes, monkeypatch):
    model, data = _model_and_data()
    prepared = _calibrated(model, data, {})
    schedule = prepared.torchpqt_schedule
    assert schedule.passes == 2
    assert [s.algorithms for s in schedule.stages] == [
        ("Doubling",), ("ActivationChannelAlignment", "MinMaxQuantization", "FastBiasCorrection")]
    with pytest.raises(TorchPQTError, match=r"calibration pass 2/2.*convert\(prepared, calibration_data\)"):
        torchpqt.convert(prepared)
    manual = torchpqt.convert(prepared, data)
    oneshot = torchpqt.quantize(model, data, {}, progress=False)
    with torch.no_grad():
        conv_max = max(float(model[0](x).abs().max()) for x in data)
    assert two_passes == [conv_max, conv_max]  # the first pass measured the FP32 model (both runs)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(manual(x), oneshot(x))  # prepare + loop + convert(data) == quantize
    for q in (manual, oneshot):
        assert not any(n.startswith("test_conv_output") for n, _ in q.named_modules())
    monkeypatch.undo()  # the pipeline as shipped
    plain = torchpqt.quantize(model, data, {}, progress=False)
    # the second pass measured the doubled model: ReLU(2 y) = 2 ReLU(y), so the conv2 input range doubles
    torch.testing.assert_close(_fq(manual, "2__fq_input_0").input_high, 2 * _fq(plain, "2__fq_input_0").input_high,
                               rtol=1e-6, atol=0)


def test_a_step_that_reads_the_data_again_gets_it(monkeypatch):
    samples = []

    def apply(model, plan, statistics, config, *, data=None):
        samples.append(sum(args[0].shape[0] for args, _ in data.batches()))
        return model

    reader = Algorithm("Reader", enabled=lambda config: True, statistic_points=lambda plan, config: (),
                       apply=apply, needs_data=True)
    monkeypatch.setattr(pipeline, "PIPELINE", (*pipeline.PIPELINE, reader))
    model, data = _model_and_data()
    prepared = _calibrated(model, data, {"stat_subset_size": 3})
    assert prepared.torchpqt_schedule.data_needs() == ["Reader (runs the calibration data again)"]
    with pytest.raises(TorchPQTError, match="Reader"):
        torchpqt.convert(prepared)
    torchpqt.convert(prepared, data)
    torchpqt.quantize(model, data, {"stat_subset_size": 3}, progress=False)
    assert samples == [3, 3]  # POT's sampler again: stat_subset_size samples
    with pytest.raises(TorchPQTError, match="iterator"):
        torchpqt.quantize(model, iter(data), {}, progress=False)


def test_the_plan_is_immutable():
    model, data = _model_and_data()
    plan = torchpqt.plan(model, data[0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.points[0].module_name = "x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.points = ()
