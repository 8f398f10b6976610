"""Layerwise tuning (spec §11 plus torchpqt's sequential mode and per-layer guard)."""

import logging
import weakref

import numpy as np
import pytest
import torch
from torch import fx, nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import torchpqt
from tests.models import calibration_data, tiny_cnn
from torchpqt.algorithms.layerwise_tuning import tune
from torchpqt.calibration import CalibrationData
from torchpqt.errors import ConfigError, TorchPQTError
from torchpqt.quant.fake_quantize import FakeQuantize

FAST = {"num_samples_for_tuning": 60, "batch_size": 10}
LRS = {"weights_lr": 1e-4, "bias_lr": 1e-3}  # POT's defaults move a tiny CNN too little to measure in 6 steps
NO_RANGES = {k: 0.0 for k in ("weight_fq.scale_lr", "weight_fq.min_lr", "input_fq.scale_lr", "input_fq.min_lr",
                              "scale_lr", "min_lr")}


def _tuned(model, data, **params):
    return torchpqt.quantize(model, data, {"use_layerwise_tuning": True, **params}, progress=False)


class _Record(fx.Interpreter):
    """Outputs of the conv / linear nodes; FakeQuantize and observers pass through with ``bypass``."""

    def __init__(self, gm, bypass):
        super().__init__(gm)
        self.bypass, self.out = bypass, {}

    def run_node(self, n):
        value = super().run_node(n)
        if n.op == "call_function" and any(k in str(n.target) for k in ("conv2d", "linear")):
            self.out[n.name] = value.detach()
        return value

    def call_module(self, target, args, kwargs):
        if self.bypass:
            return args[0]
        return super().call_module(target, args, kwargs)


def _layer_outputs(gm, x, bypass=False):
    rec = _Record(gm, bypass)
    with torch.no_grad():
        rec.run(x)
    return rec.out


def _summed_layer_mse(qm, fp_graph, samples):
    total = 0.0
    for x in samples:
        fp, q = _layer_outputs(fp_graph, x, bypass=True), _layer_outputs(qm, x)
        total += sum(float((q[k] - fp[k]).pow(2).mean()) for k in fp if k != "conv2d")  # conv2d: the stem
    return total


# --- a known optimum --------------------------------------------------------------------------------


def test_bias_tuning_removes_the_output_bias_error_of_quantized_weights():
    """One linear layer, 4-bit weights, inputs with mean 2: Q(W) shifts the output mean by (W - Q(W)) E[x].
    With only the bias trained, MSE's optimum is b* = b + mean(W x - Q(W) Q_in(x)) over the pool (the whole
    batch every step: SGD with lr 1 halves the distance to b* per step, so 40 steps reach it to float32)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 4)).eval()
    data = [torch.randn(1, 16) * 0.5 + 2.0 for _ in range(100)]
    plain = torchpqt.quantize(model, data, {"weights": {"bits": 4}}, progress=False)
    params = {"weights": {"bits": 4}, "optimizer": "SGD", "bias_lr": 1.0, "weights_lr": 0.0, **NO_RANGES,
              "batch_size": 100, "num_samples_for_tuning": 4000, "tuning_guard": False}
    tuned = _tuned(model, data, **params)
    x = torch.cat(data)
    with torch.no_grad():
        error = model(x) - plain(x)  # the output error MinMax leaves; its mean is what the bias can remove
        b_star = model[0].bias + error.mean(0)
        b_tuned = tuned(torch.zeros(1, 16))  # Q_in(0) = 0 (zero is on every grid), so this is the bias
    assert float(error.mean(0).abs().max()) > 0.05  # the error is there to remove
    assert torch.allclose(b_tuned[0], b_star, atol=1e-4), (b_tuned, b_star)
    with torch.no_grad():
        assert float((model(x) - tuned(x)).mean(0).abs().max()) < 1e-4


# --- the guard ----------------------------------------------------------------------------------------


def test_guard_restores_every_layer_a_huge_learning_rate_made_worse(caplog):
    model, data = tiny_cnn(), calibration_data("tiny_cnn", 24)
    plain = torchpqt.quantize(model, data, progress=False)
    with caplog.at_level(logging.INFO, logger="torchpqt"):
        tuned = _tuned(model, data, **FAST, **NO_RANGES, weights_lr=10.0, bias_lr=0.0)
    layers = {k: v for k, v in tuned.torchpqt_tuning.items() if k.startswith(("conv2d", "linear"))}
    assert layers and all(v["restored"] for v in layers.values()), layers
    assert all(f"{name}: held-out loss rose" in caplog.text for name in layers)
    x = torch.cat(calibration_data("tiny_cnn", 8, seed=5))
    with torch.no_grad():
        assert torch.equal(tuned(x), plain(x))  # every weight back, bit for bit


def test_guard_off_keeps_the_damage():
    model, data = tiny_cnn(), calibration_data("tiny_cnn", 24)
    plain = torchpqt.quantize(model, data, progress=False)
    tuned = _tuned(model, data, **FAST, **NO_RANGES, weights_lr=10.0, bias_lr=0.0, tuning_guard=False)
    x = torch.cat(calibration_data("tiny_cnn", 8, seed=5))
    with torch.no_grad():
        assert float((tuned(x) - plain(x)).abs().max()) > 0.1


# --- determinism, both modes ----------------------------------------------------------------------------


def test_same_seed_gives_bitwise_identical_models():
    model, data = tiny_cnn(), calibration_data("tiny_cnn", 24)
    a = _tuned(model, data, **FAST, **LRS, seed=3).state_dict()
    b = _tuned(model, data, **FAST, **LRS, seed=3).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("mode", ["simultaneous", "sequential"])
def test_both_modes_reduce_the_summed_layer_mse_on_held_out_samples(mode):
    model, data = tiny_cnn(), calibration_data("tiny_cnn", 40)
    fp_graph = torchpqt.prepare(model, data[0])  # the captured FP32 graph: observers pass through
    held_out = calibration_data("tiny_cnn", 8, seed=7)
    plain = torchpqt.quantize(model, data, progress=False)
    tuned = _tuned(model, data, **FAST, **LRS, tuning_mode=mode)
    before, after = _summed_layer_mse(plain, fp_graph, held_out), _summed_layer_mse(tuned, fp_graph, held_out)
    assert after < before * 0.995, (before, after)


def test_tuned_model_keeps_placement_and_frozen_ranges():
    model, data = tiny_cnn(), calibration_data("tiny_cnn", 24)
    plain = torchpqt.quantize(model, data, progress=False)
    tuned = _tuned(model, data, **FAST, **LRS, **{"weight_fq.scale_lr": 1e-3, "input_fq.scale_lr": 1e-3})
    names = lambda m: [n for n, s in m.named_modules() if isinstance(s, FakeQuantize)]
    assert names(tuned) == names(plain)
    assert not any(fq.ranges_trainable for fq in tuned.modules() if isinstance(fq, FakeQuantize))
    # like every converted model, its live weights and biases are ordinary trainable parameters (QAT)
    assert all(p.requires_grad for p in tuned.parameters())
    changed = [n for n in names(plain) if not torch.equal(getattr(tuned, n).input_high, getattr(plain, n).input_high)]
    assert changed  # the ranges were trained
    first = tuned.torchpqt_plan.points
    assert any(p.output_scale != 1.0 for p in first)  # the saturation-fixed stem stays out:
    assert "conv2d" not in tuned.torchpqt_tuning
    assert torch.equal(tuned.stem_0__fq_weights_1.input_high, plain.stem_0__fq_weights_1.input_high)


def test_ignored_scope_stays_out():
    model, data = tiny_cnn(), calibration_data("tiny_cnn", 24)
    assert "fc" in torchpqt.plan(model, data[0]).scopes  # the classifier
    tuned = _tuned(model, data, **FAST, **LRS, ignored={"scope": ["fc"]})
    assert "linear" not in tuned.torchpqt_tuning and "conv2d_6" in tuned.torchpqt_tuning


# --- the two-step API, errors, config -----------------------------------------------------------------


def test_prepare_convert_needs_the_data_again():
    model, data = tiny_cnn(), calibration_data("tiny_cnn", 24)
    prepared = torchpqt.prepare(model, data[0], {"use_layerwise_tuning": True, **FAST})
    assert any("LayerwiseTuning" in n for n in prepared.torchpqt_schedule.data_needs())
    with torch.no_grad():
        for x in data:
            prepared(x)
    with pytest.raises(TorchPQTError, match="LayerwiseTuning"):
        torchpqt.convert(prepared)
    q = torchpqt.convert(prepared, data, progress=False)
    assert q.torchpqt_tuning and q.torchpqt_config["params"]["use_layerwise_tuning"]


def test_config_keys():
    with pytest.raises(ConfigError, match="tuning_mode"):
        torchpqt.DefaultQuantizationConfig.from_dict({"tuning_mode": "blockwise"})
    with pytest.raises(ConfigError, match="Unknown key"):
        torchpqt.DefaultQuantizationConfig.from_dict({"tuning_modes": "sequential"})
    c = torchpqt.DefaultQuantizationConfig.from_dict({"use_layerwise_tuning": True, "tuning_mode": "sequential"})
    assert c.layerwise_tuning.tuning_mode == "sequential" and c.layerwise_tuning.tuning_guard == "both"
    guard = lambda v: torchpqt.DefaultQuantizationConfig.from_dict(
        {"use_layerwise_tuning": True, "tuning_guard": v}).layerwise_tuning.tuning_guard
    assert [guard(v) for v in (True, False, "layer", "model", "both")] == ["both", False, "layer", "model", "both"]
    with pytest.raises(ConfigError, match="tuning_guard: got 'modle'; did you mean 'model'"):
        guard("modle")
    with pytest.raises(ConfigError, match="tuning_guard: got 1 Allowed: layer, model, both, false"):
        guard(1)


# --- export ---------------------------------------------------------------------------------------------


@pytest.mark.openvino
def test_tuned_model_exports_and_the_ir_matches_torch(tmp_path):
    ov = pytest.importorskip("openvino")
    from torchpqt.exporters import openvino as ov_export

    model, data = tiny_cnn(), calibration_data("tiny_cnn", 24)
    tuned = _tuned(model, data, **FAST, **LRS, **{"weight_fq.scale_lr": 1e-3, "input_fq.scale_lr": 1e-3})
    example = torch.cat(calibration_data("tiny_cnn", 4, seed=9))
    report = ov_export.export(tuned, example, tmp_path / "tuned.xml")  # raises if the check fails
    compiled = ov.Core().compile_model(str(report.path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled([example.numpy()])[0]
    with torch.no_grad():
        ref = tuned(example).numpy()
    sqnr = 10 * np.log10((ref ** 2).mean() / ((out - ref) ** 2).mean())
    assert sqnr > 30, sqnr


def test_every_pot_key_runs_together():
    """The non-default branches of §11 in one run: ranking subset (a pool smaller than the data), FP inputs,
    one batch reused, gradients only when the loss rose, no requantized weights, asymmetric ranges, SGD."""
    model, data = tiny_cnn(), calibration_data("tiny_cnn", 24)
    params = {**FAST, **LRS, "calibration_indices_pool": 12, "use_ranking_subset": True, "use_only_fp_inputs": True,
              "update_every_batch": False, "calculate_grads_on_loss_increase_only": True,
              "set_quantized_values_to_weight_parameter": False, "asymmetric": True, "optimizer": "SGD",
              "weight_decay": 1e-4, "loss_logging_freq": 2, "tuning_guard_samples": 8}
    tuned = _tuned(model, data, **params)
    assert tuned.torchpqt_tuning
    assert all(r["loss_after"] <= r["loss_before"] for r in tuned.torchpqt_tuning.values())
    assert not any(fq.ranges_trainable for fq in tuned.modules() if isinstance(fq, FakeQuantize))


# --- the whole-model guard ------------------------------------------------------------------------------


def _output_loss(model, qm, samples):
    x = torch.cat(samples)
    with torch.no_grad():
        ref = model(x)
        return float((qm(x) - ref).pow(2).mean() / ref.pow(2).mean())


def test_model_guard_restores_every_unit_when_the_network_output_gets_worse(caplog):
    """Layer guard off, a huge weight learning rate: only the whole-model guard stands between the user and
    the damage (test_guard_off_keeps_the_damage shows it is there)."""
    model, data = tiny_cnn(), calibration_data("tiny_cnn", 24)
    plain = torchpqt.quantize(model, data, progress=False)
    with caplog.at_level(logging.INFO, logger="torchpqt"):
        tuned = _tuned(model, data, **FAST, **NO_RANGES, weights_lr=10.0, bias_lr=0.0, tuning_guard="model")
    verdict = tuned.torchpqt_tuning_model
    assert verdict["restored"] and verdict["output_loss_after"] == verdict["output_loss_before"] > 0
    assert "network-output loss (MSE / FP32 mean square) rose" in caplog.text
    assert "held-out loss rose" not in caplog.text  # the layer guard was off
    assert all(r["restored"] and r["loss_after"] == r["loss_before"] for r in tuned.torchpqt_tuning.values())
    held_out = calibration_data("tiny_cnn", 8, seed=5)
    assert _output_loss(model, tuned, held_out) <= _output_loss(model, plain, held_out)
    with torch.no_grad():
        assert torch.equal(tuned(torch.cat(held_out)), plain(torch.cat(held_out)))


def test_model_guard_keeps_a_tuning_that_helps():
    model, data = tiny_cnn(), calibration_data("tiny_cnn", 40)
    plain = torchpqt.quantize(model, data, progress=False)
    tuned = _tuned(model, data, **FAST, **LRS, tuning_guard="model")
    verdict = tuned.torchpqt_tuning_model
    assert not verdict["restored"] and verdict["output_loss_after"] < verdict["output_loss_before"], verdict
    assert not any(r["restored"] for r in tuned.torchpqt_tuning.values())  # the layer guard was off
    held_out = calibration_data("tiny_cnn", 16, seed=7)
    assert _output_loss(model, tuned, held_out) < _output_loss(model, plain, held_out)


# --- memory ---------------------------------------------------------------------------------------------


class _LiveTensors(TorchDispatchMode):
    """Tensor accounting: the bytes of every storage an op produced while it is referenced by a live tensor
    (views counted once), and the peak of that sum."""

    def __init__(self):
        super().__init__()
        self.refs, self.size, self.now, self.peak = {}, {}, 0, 0

    def _release(self, key, ident):
        ids = self.refs.get(key)
        if ids is not None and ident in ids:
            ids.discard(ident)
            if not ids:
                del self.refs[key]
                self.now -= self.size.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                ids = self.refs.setdefault(key, set())
                if not storage.nbytes() or id(t) in ids:
                    continue
                if not ids:
                    self.size[key] = storage.nbytes()
                    self.now += storage.nbytes()
                ids.add(id(t))
                weakref.finalize(t, self._release, key, id(t))
        self.peak = max(self.peak, self.now)
        return out


class _Wide(nn.Module):
    """Activations (32 channels at 16x16: 32 KiB a sample) big next to its weights and inputs (3 KiB)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = (nn.Conv2d(c, 32, 3, padding=1) for c in (3, 32, 32))
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        x = torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))
        return self.fc(x.mean((2, 3)))


class _Fresh(torch.utils.data.Dataset):
    """Every read makes its samples anew (as a dataset decoding files does)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i >= self.n:
            raise IndexError(i)
        return torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(i))


def test_memory_stays_one_batch_of_activations_whatever_the_number_of_samples():
    """Peak live tensor bytes during tuning with 16 and with 256 calibration samples (pool 8, 4 held out, batches
    of 4): the same. Holding every calibration sample (the first design) added 240 samples' 3 KiB; holding
    activations for all samples would be ~10x the peak."""
    torch.manual_seed(0)
    model = _Wide().eval()
    params = {"use_layerwise_tuning": True, "batch_size": 4, "num_samples_for_tuning": 8,
              "calibration_indices_pool": 8, "tuning_guard_samples": 4}
    config = torchpqt.DefaultQuantizationConfig.from_dict(params)
    peaks = {}
    for n in (16, 256):
        qm = torchpqt.quantize(model, [_Fresh(16)[i] for i in range(16)], progress=False)
        with _LiveTensors() as live:
            tune(qm, qm.torchpqt_plan, CalibrationData(_Fresh(n), config), config)
        assert len(qm.torchpqt_tuning) >= 3  # it tuned (c2, c3, fc at least)
        peaks[n] = live.peak
    sample = 3 * 16 * 16 * 4
    assert peaks[256] <= peaks[16] + 2 * sample, peaks
    all_activations = 256 * 3 * 32 * 16 * 16 * 4  # three conv outputs of every sample
    assert peaks[256] < all_activations / 5, (peaks, all_activations)
