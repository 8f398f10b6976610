"""torchpqt.analyze: the hypersensitive layer is found, the suggested ignored scope is accepted and helps;
the FakeQuantize on/off switch; user metrics; bad input."""

import copy
import math

import pytest
import torch
from outlier_model import OutlierCNN, samples

import torchpqt
from torchpqt.analysis import fake_quantize_enabled, sqnr_db

# Measured 2026-12-04: output SQNR on 64 unseen samples 10.5 dB with every layer quantized, 28.7 dB with
# the suggested ignored scope (+18.2 dB; the analysis estimated 27.4 dB). The test asks for a 10 dB margin.
MARGIN_DB = 10.0


@pytest.fixture(scope="module")
def outlier():
    torch.manual_seed(0)
    model = OutlierCNN().eval()
    cal = samples(48, seed=0)
    return model, cal, torchpqt.analyze(model, cal, eval_samples=24, eval_batch_size=12)


def test_sqnr_db_golden_values():
    ref = torch.tensor([3.0, 4.0])  # signal 25
    assert sqnr_db(ref, torch.tensor([3.0, 3.0])) == pytest.approx(10 * math.log10(25.0))
    assert sqnr_db([ref, ref], [ref, ref + torch.tensor([0.0, 0.5])]) == pytest.approx(10 * math.log10(50 / 0.25))
    assert sqnr_db(ref, ref) == math.inf
    assert sqnr_db(torch.zeros(2), ref) == -math.inf


def test_hypersensitive_layer_ranked_first_and_its_exclusion_helps(outlier):
    model, cal, analysis = outlier
    first = analysis.ranking[0]
    assert first.fake_quantize == "conv2/fq_input_0"
    assert first.scope == "conv2" and first.scopes == ("conv2",) and first.group == "activations"
    assert first.granularity == "pertensor"
    # alone it does far more damage than any other FakeQuantize, and removing it recovers the most
    others = analysis.ranking[1:]
    assert first.single < min(r.single for r in others) - 10.0
    assert first.leave_one_out == max(r.leave_one_out for r in analysis.ranking)
    assert first.leave_one_out > analysis.quantized + 10.0

    section = analysis.suggest_ignored_scope(max_layers=1)
    assert section == {"scope": ["conv2"]}
    cfg = torchpqt.load_config({"ignored": section})  # the exact form the config accepts
    assert cfg.ignored.scope == ("conv2",)
    names = {p.name for p in torchpqt.plan(model, cal[0], cfg).points}
    assert "conv2/fq_input_0" not in names and "conv2/fq_weights_1" not in names  # POT: the op loses both
    assert "conv1/fq_input_0" in names

    test = torch.cat(samples(64, seed=1))  # unseen samples
    plain = torchpqt.quantize(model, cal)
    fixed = torchpqt.quantize(model, cal, {"ignored": section})
    with torch.no_grad():
        ref = model(test)
        before, after = sqnr_db(ref, plain(test)), sqnr_db(ref, fixed(test))
    assert after > before + MARGIN_DB, (before, after)
    # the analysis' own estimate of that exclusion agrees with the real re-quantization within a few dB
    assert abs(analysis.estimate(section["scope"]) - after) < 4.0


def test_analysis_reuses_one_quantization_and_leaves_everything_as_it_was(outlier):
    model, cal, analysis = outlier
    before = copy.deepcopy(model.state_dict())
    qmodel = analysis.qmodel
    fqs = [m for m in qmodel.modules() if isinstance(m, torchpqt.FakeQuantize)]
    assert len(analysis.ranking) == len(fqs) and all(m.enabled for m in fqs)
    # the analysis ran on the model quantize() gives, bit for bit (one calibration, no recalibration per layer)
    again = torchpqt.quantize(model, cal)
    x = torch.cat(cal[:4])
    with torch.no_grad():
        assert torch.equal(qmodel(x), again(x))
    assert analysis.passes == 3 + 2 * len(fqs)
    # the partial reruns (only what a switch changes is recomputed) give the full forward's figures exactly
    held = [torch.cat(cal[i:i + 12]) for i in (0, 12)]
    with torch.no_grad():
        ref = [model(x) for x in held]
        for row in (analysis.ranking[0], analysis.ranking[-1]):
            with fake_quantize_enabled(qmodel, {m for m in (r.module for r in analysis.ranking)} - {row.module}):
                assert row.leave_one_out == sqnr_db(ref, [qmodel(x) for x in held])
            with fake_quantize_enabled(qmodel, []):
                off = [qmodel(x) for x in held]
            with fake_quantize_enabled(qmodel, [row.module]):
                assert row.single == sqnr_db(off, [qmodel(x) for x in held])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    # the fully quantized figure is the SQNR of qmodel's outputs on the held-out samples (the first 24)
    held = torch.cat(cal[:24])
    with torch.no_grad():
        assert analysis.quantized == pytest.approx(sqnr_db(model(held), qmodel(held)), abs=1e-4)  # other batching


def test_suggestion_by_target_and_by_count(outlier):
    _, _, analysis = outlier
    assert analysis.suggested_scopes(target=analysis.quantized - 1.0) == []  # already there
    scopes = analysis.suggested_scopes(target=analysis.ranking[0].leave_one_out - 1.0)
    assert scopes[0] == "conv2"
    assert analysis.estimate(scopes) >= analysis.ranking[0].leave_one_out - 1.0
    three = analysis.suggested_scopes(max_layers=3)
    assert len(three) == 3 and len(set(three)) == 3 and three[0] == "conv2"
    full = analysis.suggested_config(max_layers=2)
    assert torchpqt.load_config(full).ignored.scope == tuple(three[:2])
    with pytest.raises(torchpqt.ConfigError, match="max_layers"):
        analysis.suggest_ignored_scope(max_layers=0)


def test_existing_ignored_scope_is_kept():
    model, cal = OutlierCNN().eval(), samples(16, seed=0)
    a = torchpqt.analyze(model, cal, {"ignored": {"scope": ["conv3"]}}, eval_samples=8)
    assert not any("conv3" in r.scopes for r in a.ranking)
    section = a.suggest_ignored_scope(max_layers=1)
    assert section["scope"] == ["conv3", "conv2"]
    torchpqt.load_config({"ignored": section})


def test_user_metric_replaces_sqnr(outlier):
    model, cal, _ = outlier
    seen = []

    def agreement(fp32, q):  # an accuracy-style metric: share of argmax agreement with FP32
        seen.append((fp32.shape, q.shape))
        return float((fp32.argmax(1) == q.argmax(1)).float().mean())

    a = torchpqt.analyze(model, cal[:16], metric=agreement, eval_samples=16, eval_batch_size=5)
    assert a.metric_name == "agreement"
    assert all(s == (torch.Size([16, 4]), torch.Size([16, 4])) for s in seen)  # 4 batches joined
    assert all(0.0 <= r.single <= 1.0 and 0.0 <= r.leave_one_out <= 1.0 for r in a.ranking)
    assert a.ranking[0].fake_quantize == "conv2/fq_input_0"

    with pytest.raises(torchpqt.TorchPQTError, match="not a number"):
        torchpqt.analyze(model, cal[:8], metric=lambda a, b: "good", eval_samples=4)


def test_bad_arguments():
    model, cal = OutlierCNN().eval(), samples(4, seed=0)
    with pytest.raises(torchpqt.ConfigError, match="eval_samples"):
        torchpqt.analyze(model, cal, eval_samples=0)


# ---------------------------------------------------------------------------------- the on/off switch
def test_disabled_fake_quantize_passes_input_through_and_changes_no_state():
    fq = torchpqt.FakeQuantize(256, -1.0, 1.0)
    x = torch.linspace(-3, 3, 101)
    quantized = fq(x)
    state = {k: v.clone() for k, v in fq.state_dict().items()}
    fq.enabled = False
    assert fq(x) is x
    assert fq.state_dict().keys() == state.keys() and all(torch.equal(fq.state_dict()[k], v) for k, v in state.items())
    fq.enabled = True
    assert torch.equal(fq(x), quantized)


def test_bypass_maps_input_range_onto_output_range():
    # a saturation-fixed weight: stored halved, output range doubled; disabled it must give the whole weight
    w = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    hi = w.abs().amax(1, keepdim=True)
    fq = torchpqt.FakeQuantize(255, -hi / 2, hi / 2, -hi, hi)
    fq.enabled = False
    assert torch.equal(fq(w / 2), w)
    # an asymmetric map: bypass is the quantizer's limit without rounding and clamping
    fq = torchpqt.FakeQuantize(256, 0.0, 2.0, -1.0, 3.0)
    fq.enabled = False
    assert torch.allclose(fq(torch.tensor([0.0, 1.0, 2.0, 5.0])), torch.tensor([-1.0, 1.0, 3.0, 9.0]))


def test_disabled_fake_quantize_refuses_export_and_context_restores():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torchpqt.FakeQuantize(256, -1.0, 1.0))
    with fake_quantize_enabled(model, []):
        assert not model[1].enabled
        with pytest.raises(torchpqt.ExportError, match="disabled"):
            torch.export.export(model, (torch.randn(2, 3),))
    assert model[1].enabled
    torch.export.export(model, (torch.randn(2, 3),))
    with pytest.raises(torchpqt.TorchPQTError, match="not FakeQuantize"), fake_quantize_enabled(model, ["0"]):
        pass
    with pytest.raises(RuntimeError), fake_quantize_enabled(model, []):
        raise RuntimeError
    assert model[1].enabled
