"""prepare() + the user's loop + convert(prepared, data) against quantize(), on a model where channel alignment
fires (align_chain: one pass by default, POT's two with ``alignment_pass: separate``) and with BiasCorrection
(convert reads the data again), and the errors when a needed pass is skipped."""

from __future__ import annotations

import models
import pytest
import torch

import torchpqt
from torchpqt.errors import TorchPQTError

SEPARATE = {"stat_subset_size": 10, "alignment_pass": "separate"}
CONFIGS = [SEPARATE, {**SEPARATE, "use_fast_bias": False}]
SHARED = [{"stat_subset_size": 10}, {"stat_subset_size": 10, "use_fast_bias": False}]


def _data():
    return models.build("align_chain"), models.calibration_data("align_chain", 12)


def _state(q) -> dict:
    """Every tensor of the converted model (weights, biases, FakeQuantize parameters) by the op it feeds."""
    out = {}
    for node in q.graph.nodes:
        if node.op == "get_attr":
            users = ",".join(sorted(u.name for u in node.users))
            out[f"{users}:{len(out)}"] = q.get_parameter(node.target) if node.target in dict(q.named_parameters()) \
                else q.get_buffer(node.target)
    for name, module in q.named_modules():
        if isinstance(module, torchpqt.FakeQuantize):
            for attr in ("input_low", "input_high", "output_low", "output_high"):
                out[f"{name}.{attr}"] = getattr(module, attr)
    return out


@pytest.mark.parametrize("config", CONFIGS + SHARED,
                         ids=["separate-fast_bias", "separate-bias_correction", "fast_bias", "bias_correction"])
def test_prepare_loop_convert_is_bitwise_quantize(config):
    model, data = _data()
    prepared = torchpqt.prepare(model, data[0], config)
    schedule = prepared.torchpqt_schedule
    if config.get("alignment_pass") == "separate":
        assert schedule.passes == 2  # POT: alignment quantiles on the FP32 model, then everything else
        assert [s.algorithms[0] for s in schedule.stages] == ["ActivationChannelAlignment", "MinMaxQuantization"]
        assert schedule.derived_points() == []
    else:  # everything in the loop; the aligned tensors' statistics derived in convert()
        assert schedule.passes == 1 and len(schedule.stages) == 1
        assert schedule.stages[0].algorithms[:2] == ("ActivationChannelAlignment", "MinMaxQuantization")
        assert {"expand.0/fq_input_0", "tail/fq_input_0"} <= set(schedule.derived_points())
    with torch.no_grad():
        for x in data[:10]:  # the loop sees stat_subset_size samples, as quantize() does
            prepared(x)
    manual = torchpqt.convert(prepared, data, progress=False)
    oneshot = torchpqt.quantize(model, data, config, progress=False)
    a, b = _state(manual), _state(oneshot)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    x = torch.cat(data)
    assert torch.equal(manual(x), oneshot(x))
    # alignment ran: the producer's weight range is no longer the FP32 one, and the aligned consumer has the
    # saturation fix (stored W/2, output range twice the input range)
    fp32_max = model.mid.weight.detach().abs().amax((1, 2, 3))
    assert not torch.allclose(manual.get_submodule("mid__fq_weights_1").input_high.flatten(), fp32_max, rtol=1e-3)
    expand = manual.get_submodule("expand_0__fq_weights_1")
    torch.testing.assert_close(expand.output_high, 2 * expand.input_high)


@pytest.mark.parametrize("config", CONFIGS, ids=["fast_bias", "bias_correction"])
def test_convert_without_the_data_names_the_pass_to_run(config):
    model, data = _data()
    prepared = torchpqt.prepare(model, data[0], config)
    with torch.no_grad():
        for x in data[:10]:
            prepared(x)
    with pytest.raises(TorchPQTError, match=r"calibration pass 2/2 .*MinMaxQuantization.*convert\(prepared, "
                                            r"calibration_data\)"):
        torchpqt.convert(prepared)
    if not config.get("use_fast_bias", True):
        with pytest.raises(TorchPQTError, match="BiasCorrection"):
            torchpqt.convert(prepared)


def test_one_pass_alignment_converts_without_the_data():
    model, data = _data()
    prepared = torchpqt.prepare(model, data[0], SHARED[0])
    schedule = prepared.torchpqt_schedule
    assert schedule.passes == 1 and schedule.data_needs() == [] and schedule.label(0) == "calibration"
    assert "derived in convert() from pass 1" in str(schedule) and "tail/fq_input_0" in str(schedule)
    with torch.no_grad():
        for x in data[:10]:
            prepared(x)
    a, b = _state(torchpqt.convert(prepared)), _state(torchpqt.quantize(model, data, SHARED[0], progress=False))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # BiasCorrection still reads the data, and says so
    prepared = torchpqt.prepare(model, data[0], SHARED[1])
    assert prepared.torchpqt_schedule.data_needs() == ["BiasCorrection (runs the calibration data again)"]


def test_convert_before_the_loop_is_an_error():
    model, data = _data()
    prepared = torchpqt.prepare(model, data[0], CONFIGS[0])
    with pytest.raises(TorchPQTError, match="no calibration data reached"):
        torchpqt.convert(prepared, data)


def test_bias_correction_without_alignment_needs_the_data_too():
    model = models.build("tiny_cnn")
    data = models.calibration_data("tiny_cnn", 5)
    prepared = torchpqt.prepare(model, data[0], {"use_fast_bias": False})
    assert prepared.torchpqt_schedule.passes == 1
    with torch.no_grad():
        for x in data:
            prepared(x)
    with pytest.raises(TorchPQTError, match=r"BiasCorrection \(runs the calibration data again\)"):
        torchpqt.convert(prepared)
    a = _state(torchpqt.convert(prepared, data, progress=False))
    b = _state(torchpqt.quantize(model, data, {"use_fast_bias": False}, progress=False))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Bars:
    """Records the tqdm bars opened (label, hidden)."""

    def __init__(self):
        self.opened = []
        recorder = self

        class Bar:
            def __init__(self, iterable=None, *, desc=None, disable=False, **kwargs):
                recorder.opened.append((desc, disable))
                self.iterable = iterable

            def __iter__(self):
                return iter(self.iterable)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def update(self, n=1):
                pass

        self.Bar = Bar


def test_one_labelled_bar_per_pass_hidden_off_a_terminal(monkeypatch):
    from torchpqt import calibration
    from torchpqt.algorithms import bias_correction

    model, data = _data()
    config = CONFIGS[1]
    assert [torchpqt.prepare(model, data[0], config).torchpqt_schedule.label(i) for i in (0, 1)] == [
        "channel alignment 1/2", "statistics 2/2"]
    for progress, hidden in ((True, False), (None, True)):  # None: stderr is not a terminal under pytest
        bars = _Bars()
        monkeypatch.setattr(calibration, "tqdm", bars.Bar)
        monkeypatch.setattr(bias_correction, "tqdm", bars.Bar)
        torchpqt.quantize(model, data, config, progress=progress)
        assert bars.opened == [("channel alignment 1/2", hidden), ("statistics 2/2", hidden),
                               ("bias correction", hidden)]
    bars = _Bars()  # one pass by default
    monkeypatch.setattr(calibration, "tqdm", bars.Bar)
    monkeypatch.setattr(bias_correction, "tqdm", bars.Bar)
    torchpqt.quantize(model, data, SHARED[1], progress=True)
    assert bars.opened == [("calibration", False), ("bias correction", False)]
