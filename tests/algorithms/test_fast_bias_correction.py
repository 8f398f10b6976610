"""FastBiasCorrection (spec §10.1) on hand-made layers whose answer the spec gives, and on the spec's golden
end-to-end recipe (§13.3, recorded from POT 2023.3)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from bias_recipes import GOLDEN, captured, channel_means, layers, min_max_only, spec_tiny_cnn
from torch import nn

import torchpqt
from torchpqt.algorithms import fast_bias_correction as fbc
from torchpqt.algorithms.layers import folded_fake_quantize, quantized_weight


def _grid(w: torch.Tensor, step: float = 0.1) -> torch.Tensor:
    """A stand-in for Q(W): W rounded to a coarse grid."""
    return torch.round(w / step) * step


def _conv(bias, kernel=3, padding=0, c_in=3, c_out=4, groups=1):
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, kernel, padding=padding, groups=groups, bias=bias is not None)
    if bias is not None:
        with torch.no_grad():
            conv.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    _, (layer,) = captured(nn.Sequential(conv).eval(), torch.randn(1, c_in, 6, 6))
    return conv, layer


def test_conv_without_padding_gets_b_plus_weight_error_times_input_mean():
    conv, layer = _conv([1.0, -2.0, 0.5, 3.0])
    w, b = conv.weight.detach(), conv.bias.detach()
    q = _grid(w)
    m_in = np.array([0.3, -1.2, 2.0])
    m_out = (b + torch.einsum("oikl,i->o", w.double(), torch.tensor(m_in))).numpy()  # FP32 mean, no border
    u = fbc.fast_bias_correction(layer, q, m_in, m_out, (1, 3, 6, 6))
    expected = b.double() + torch.einsum("oikl,i->o", (w - q).double(), torch.tensor(m_in))
    assert u.applied and u.reason == ""
    np.testing.assert_allclose(u.new_bias.numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)


def test_matmul_uses_the_last_axis_as_channel():
    torch.manual_seed(1)
    fc = nn.Linear(8, 5)
    with torch.no_grad():
        fc.bias.copy_(torch.linspace(1.0, 2.0, 5))
    _, (layer,) = captured(nn.Sequential(fc).eval(), torch.randn(1, 7, 8))
    assert layer.type == "MatMul" and layer.channel_axis == -1
    w, b = fc.weight.detach(), fc.bias.detach()
    q = _grid(w)
    m_in = np.linspace(-1, 1, 8)
    m_out = (b.double() + w.double() @ torch.tensor(m_in)).numpy()
    u = fbc.fast_bias_correction(layer, q, m_in, m_out, (4, 7, 8))
    np.testing.assert_allclose(u.new_bias.numpy(), (b.double() + (w - q).double() @ torch.tensor(m_in)).numpy(),
                               rtol=1e-6, atol=1e-7)


def test_one_zero_bias_element_skips_the_layer():
    conv, layer = _conv([1.0, 0.0, 0.5, 3.0])
    w = conv.weight.detach()
    m_in, m_out = np.ones(3), np.ones(4)
    u = fbc.fast_bias_correction(layer, _grid(w), m_in, m_out, (1, 3, 6, 6))
    assert not u.applied and u.magnitude == float("inf") and u.reason == "zero bias element"


def test_correct_zero_bias_tests_the_nonzero_elements_only():
    conv, layer = _conv([1.0, 0.0, 0.5, 3.0])
    w, b = conv.weight.detach(), conv.bias.detach()
    q = _grid(w)
    m_in = np.array([0.3, -1.2, 2.0])
    m_out = (b + torch.einsum("oikl,i->o", w.double(), torch.tensor(m_in))).numpy()
    u = fbc.fast_bias_correction(layer, q, m_in, m_out, (1, 3, 6, 6), correct_zero_bias=True, weight=w)
    shift = torch.einsum("oikl,i->o", (w - q).double(), torch.tensor(m_in)).numpy()
    nonzero = np.array([0, 2, 3])
    assert u.applied
    assert u.magnitude == pytest.approx(np.abs(shift[nonzero] / b.numpy()[nonzero]).max(), rel=1e-5)
    np.testing.assert_allclose(u.new_bias.numpy(), b.numpy() + shift, rtol=1e-6, atol=1e-7)


def test_correct_zero_bias_uses_the_weight_error_alone():
    # m_out that disagrees with the constant-input model (spatial noise): ignored where the bias is zero
    conv, layer = _conv([1.0, 0.0, 0.5, 3.0])
    w, b = conv.weight.detach(), conv.bias.detach()
    q = _grid(w)
    m_in = np.array([0.3, -1.2, 2.0])
    noisy = (b + torch.einsum("oikl,i->o", w.double(), torch.tensor(m_in))).numpy() + 0.7
    u = fbc.fast_bias_correction(layer, q, m_in, noisy, (1, 3, 6, 6), correct_zero_bias=True, weight=w)
    shift = torch.einsum("oikl,i->o", (w - q).double(), torch.tensor(m_in)).numpy()
    np.testing.assert_allclose(u.new_bias.numpy(), b.numpy() + shift, rtol=1e-6, atol=1e-7)


def test_bias_less_conv_is_skipped_unless_correct_zero_bias():
    conv, layer = _conv(None)
    w = conv.weight.detach()
    q = _grid(w)
    m_in = np.array([0.3, -1.2, 2.0])
    m_out = torch.einsum("oikl,i->o", w.double(), torch.tensor(m_in)).numpy()
    skipped = fbc.fast_bias_correction(layer, q, m_in, m_out, (1, 3, 6, 6))
    assert not skipped.applied and skipped.reason == "zero bias" and skipped.new_bias is None
    fixed = fbc.fast_bias_correction(layer, q, m_in, m_out, (1, 3, 6, 6), correct_zero_bias=True, weight=w)
    assert fixed.applied
    np.testing.assert_allclose(fixed.new_bias.numpy(),
                               torch.einsum("oikl,i->o", (w - q).double(), torch.tensor(m_in)).numpy(), atol=1e-7)


@pytest.mark.parametrize("factor, applied", [(1.9, True), (2.0, False), (2.5, False)])
def test_threshold_is_strict_on_the_relative_change(factor, applied):
    conv, layer = _conv([1.0, 1.0, 1.0, 1.0], kernel=1)
    w = conv.weight.detach()
    m_in = np.zeros(3)  # q = 0, so b_new = m_out
    m_out = np.array([1.0, 1.0, 1.0, 1.0 + factor])
    u = fbc.fast_bias_correction(layer, w, m_in, m_out, (1, 3, 6, 6))
    assert u.applied is applied and u.magnitude == pytest.approx(factor)


def test_padding_fix_cancels_the_border_effect():
    # Q(W) = W: no weight error, so the right shift is 0; a real input whose border differs from its mean
    # makes POT's m_out - q wrong on a padded conv.
    conv, layer = _conv([0.05, -0.05, 0.1, 0.02], padding=1)
    w, b = conv.weight.detach(), conv.bias.detach()
    x = torch.ones(4, 3, 6, 6)
    x[:, :, 0, :] = 5.0  # a bright top row
    with torch.no_grad():
        y = conv(x)
    m_in, m_out = channel_means(x), channel_means(y)
    pot = fbc.fast_bias_correction(layer, w, m_in, m_out, x.shape)
    assert np.abs(pot.new_bias.numpy() - b.numpy()).max() > 1e-2
    fixed = fbc.fast_bias_correction(layer, w, m_in, m_out, x.shape, padding_fix=True, weight=w)
    assert fixed.applied
    np.testing.assert_allclose(fixed.new_bias.numpy(), b.numpy(), atol=1e-6)


def test_padding_fix_leaves_unpadded_layers_to_pots_formula():
    conv, layer = _conv([1.0, -2.0, 0.5, 3.0])
    w = conv.weight.detach()
    args = (layer, _grid(w), np.ones(3), np.full(4, 2.0), (1, 3, 6, 6))
    assert torch.equal(fbc.fast_bias_correction(*args).new_bias,
                       fbc.fast_bias_correction(*args, padding_fix=True, weight=w).new_bias)


def test_most_frequent_shape_is_a_per_dimension_mode_with_batch_one():
    assert fbc.most_frequent_shape([(2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 6, 6)]) == (1, 3, 8, 8)
    # POT: scipy.stats.mode per column, smallest value on a tie: a shape no sample had
    assert fbc.most_frequent_shape([(1, 3, 8, 6), (1, 3, 6, 8)]) == (1, 3, 6, 6)


def test_constant_input_fills_each_channel_with_its_mean():
    x = fbc.constant_input((1, 2, 3), [5.0, -1.0, 2.0], axis=-1)
    assert x.shape == (1, 2, 3) and torch.equal(x[0, :, 1], torch.tensor([-1.0, -1.0]))


def test_depthwise_convs_are_candidates():
    # POT's graph types every GroupConvolution as Convolution (mo ir_reader groupconv_to_conv)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4)).eval()
    data = [torch.randn(1, 3, 8, 8) for _ in range(3)]
    q = min_max_only(model, data, {"stat_subset_size": 3})
    cands = fbc.candidates(q)
    assert [c.groups for c in cands] == [1, 4]


@pytest.mark.parametrize("run", [r for r in GOLDEN["runs"] if r != "performance_biascorrection"])
def test_spec_recipe_matches_pot(run):
    """Spec §13.3: conv2's corrected bias; conv1 (padded) fails the threshold and keeps its bias."""
    model, data = spec_tiny_cnn()
    expected = GOLDEN["runs"][run]
    q = min_max_only(model, data, expected["config"])
    x = torch.cat(data)
    with torch.no_grad():
        a1 = model[1](model[0](x))
        outs = ((x, model[0](x)), (a1, model[2](a1)))
    conv1, conv2 = (fbc.correct_layer(q, layer, channel_means(i), channel_means(o), i.shape)
                    for layer, (i, o) in zip(layers(q), outs))
    assert not conv1.applied and conv1.reason.startswith("threshold")
    np.testing.assert_allclose(model[0].bias.detach().numpy(), expected["bias_after"]["conv1"], rtol=1e-6)
    assert conv2.applied
    np.testing.assert_allclose(conv2.new_bias.numpy(), expected["bias_after"]["conv2"], rtol=1e-5, atol=1e-7)


def test_quantized_weight_is_the_folded_fake_quantize_of_the_stored_weight():
    model, data = spec_tiny_cnn()
    q = min_max_only(model, data, {"target_device": "CPU"})
    conv1 = layers(q)[0]
    fq_node = conv1.node.args[1]
    fq = q.get_submodule(fq_node.target)
    stored = conv1.weight
    assert torch.allclose(stored * 2, model[0].weight)  # the saturation fix stores W/2
    qw = quantized_weight(q, conv1)
    assert torch.equal(qw, folded_fake_quantize(fq, stored))
    step = (fq.output_high - fq.output_low) / (fq.levels - 1)
    assert bool(((qw - model[0].weight).abs() <= step / 2 + 1e-6).all())


def test_folded_fake_quantize_rounds_the_reference_formula_half_to_even():
    fq = torchpqt.FakeQuantize(255, torch.tensor(-1.0), torch.tensor(1.0), torch.tensor(-2.0), torch.tensor(2.0))
    x = torch.tensor([0.5, -0.5, 1.5, -3.0])  # (x+1)/2*254 = 190.5, 63.5: ties; then clamps
    y = folded_fake_quantize(fq, x)
    levels = torch.round((y + 2) / 4 * 254)
    assert levels.tolist() == [190.0, 64.0, 254.0, 0.0]
    assert F.mse_loss(y[:2], 2 * x[:2]) < 1e-3


class _LinearHead(nn.Module):
    """A padded 3x3 conv (its output mean is observed), a 1x1 conv and a Linear (theirs follow from the input's)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.conv3 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        h = self.conv1(F.relu(self.conv3(x)))
        return self.fc(F.relu(h).permute(0, 2, 3, 1))


def test_output_mean_of_a_pointwise_layer_is_not_observed_and_the_bias_is_pots():
    """A 1x1 conv and a Linear get no output-mean observer: their corrected bias is POT's m_out - q with m_out
    measured here on the FP32 model in float64 (the layer's real outputs), within float32 rounding."""
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(1, 3, 6, 6, generator=g) + 0.5 for _ in range(12)]
    model = _LinearHead().eval()
    prepared = torchpqt.prepare(model, data[0])
    points = [r.point for r in prepared.torchpqt_schedule.stages[-1].requests]
    outputs = [p for p in points if p.endswith("(fast bias output)")]
    assert len(outputs) == 1 and outputs[0].startswith("conv2d ")  # the padded 3x3 conv only
    qm = torchpqt.quantize(model, data)
    with torch.no_grad():
        h_in = [F.relu(model.conv3(x)) for x in data]
        f_in = [F.relu(model.conv1(h)).permute(0, 2, 3, 1) for h in h_in]
        cases = [("conv1", model.conv1, h_in, 1), ("fc", model.fc, f_in, -1)]
        for name, module, inputs, axis in cases:
            outs = [module(x).double() for x in inputs]
            dims = [d for d in range(outs[0].dim()) if d != axis % outs[0].dim()]
            m_out = torch.stack([o.mean(dim=dims) for o in outs]).mean(0)
            m_in = torch.stack([x.double().mean(dim=[d for d in range(x.dim()) if d != axis % x.dim()])
                                for x in inputs]).mean(0)
            layer = next(lay for lay in layers(qm) if lay.weight.shape[0] == module.weight.shape[0]
                         and lay.weight.dim() == module.weight.dim())
            qw = quantized_weight(qm, layer).double()
            q = qw.reshape(qw.shape[0], -1) @ m_in if name == "conv1" else qw @ m_in
            np.testing.assert_allclose(layer.bias.double().numpy(), (m_out - q).numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=name)
            assert not torch.equal(layer.bias, module.bias)  # it was corrected
