"""BiasCorrection (spec §10.2): the shift on a two-layer chain worked by hand, POT's propagation quirks, the
plan of tensors each step reads, and the spec's golden end-to-end recipe (§13.3, recorded from POT 2023.3)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bias_recipes import GOLDEN, layers, min_max_only, spec_tiny_cnn
from torch import nn

import torchpqt
from torchpqt.algorithms import bias_correction as bc
from torchpqt.algorithms.layers import float_weight, quantized_weight

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models


def _chain(zero_first_bias: bool = False):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3)).eval()
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([0.5, -0.4, 0.3, 0.8, -0.6]))
        model[1].bias.copy_(torch.tensor([0.2, -0.3, 0.4]))
        if zero_first_bias:
            model[0].bias[1] = 0.0
    data = [torch.randn(1, 6) * 2 + 0.5 for _ in range(10)]
    q = min_max_only(model, data, {"stat_subset_size": 10})
    return model, data, q


def test_subset_size_is_a_fifth_of_the_calibration_subset():
    assert [bc.subset_size(n) for n in (1, 4, 5, 10, 300, 301)] == [1, 1, 1, 2, 60, 60]


def test_two_layer_chain_shift_by_hand():
    model, data, q = _chain()
    samples = [((x,), {}) for x in data[:2]]
    l1, l2 = layers(q)
    w1, w2 = float_weight(q, l1).double(), float_weight(q, l2).double()
    q1, q2 = quantized_weight(q, l1).double(), quantized_weight(q, l2).double()
    ex = torch.cat(data[:2]).double().mean(0)
    b1, b2 = model[0].bias.detach().double(), model[1].bias.detach().double()
    # layer 1: b1 + (W1 - Q1) E[x]; its corrected output has the FP32 mean, so layer 2: b2 + (W2 - Q2) E[y1]
    want1 = b1 + (w1 - q1) @ ex
    want2 = b2 + (w2 - q2) @ (w1 @ ex + b1)
    first, second = bc.apply(q, samples)
    assert first.applied and second.applied
    np.testing.assert_allclose(first.new_bias.numpy(), want1.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second.new_bias.numpy(), want2.numpy(), rtol=1e-5, atol=1e-6)
    assert torch.equal(layers(q)[1].bias, second.new_bias)  # written into the model


def test_a_skipped_layer_still_propagates_its_weight_quantized_output():
    # POT meant to remove the FakeQuantize of a layer it does not correct, but removes nothing
    model, data, q = _chain(zero_first_bias=True)
    samples = [((x,), {}) for x in data[:2]]
    l1, l2 = layers(q)
    w1, w2 = float_weight(q, l1).double(), float_weight(q, l2).double()
    q1, q2 = quantized_weight(q, l1).double(), quantized_weight(q, l2).double()
    ex = torch.cat(data[:2]).double().mean(0)
    b1, b2 = model[0].bias.detach().double(), model[1].bias.detach().double()
    first, second = bc.apply(q, samples)
    assert not first.applied and first.reason == "zero bias element"
    want2 = b2 + w2 @ (w1 @ ex + b1) - q2 @ (q1 @ ex + b1)
    np.testing.assert_allclose(second.new_bias.numpy(), want2.numpy(), rtol=1e-5, atol=1e-6)
    fixed = bc.apply(_chain(zero_first_bias=True)[2], samples, correct_zero_bias=True)
    assert fixed[0].applied


def test_activation_fake_quantize_does_not_change_the_result():
    _, data, q = _chain()
    samples = [((x,), {}) for x in data[:2]]
    coarse = bc.apply(q, samples)
    _, _, q2 = _chain()
    for name, m in q2.named_modules():
        if isinstance(m, torchpqt.FakeQuantize) and "fq_input" in name:
            m.levels = 3  # a very coarse activation grid: BiasCorrection removes activation FQs anyway
    again = bc.apply(q2, samples)
    for a, b in zip(coarse, again):
        assert torch.equal(a.new_bias, b.new_bias)


def test_threshold_rejects_large_relative_changes():
    u = bc.correction("x", torch.tensor([1.0, 0.001]), [1.0, 0.5], [1.0, 0.0], threshold=1000.0)
    assert u.applied and u.magnitude == pytest.approx(500.0)
    u = bc.correction("x", torch.tensor([1.0, 0.0001]), [1.0, 0.5], [1.0, 0.0], threshold=1000.0)
    assert not u.applied and u.new_bias is not None


def test_spec_recipe_matches_pot():
    model, data = spec_tiny_cnn()
    run = GOLDEN["runs"]["performance_biascorrection"]
    q = min_max_only(model, data, run["config"])
    samples = [((x,), {}) for x in data[:bc.subset_size(run["config"]["stat_subset_size"])]]
    conv1, conv2 = bc.apply(q, samples)
    np.testing.assert_allclose(conv1.new_bias.numpy(), run["bias_after"]["conv1"], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(conv2.new_bias.numpy(), run["bias_after"]["conv2"], rtol=1e-4, atol=1e-7)


def _quantized(name: str):
    model = models.build(name)
    data = models.calibration_data(name, 4)
    return min_max_only(model, data, {"stat_subset_size": 4}), data


def _module(node) -> str:
    from torchpqt.graph.ops import module_path
    return module_path(node)


def test_plan_the_mlp_after_attention_starts_from_the_fp32_layer_norm():
    q, _ = _quantized("feature_transformer")
    plan = bc.plan_steps(q)
    steps = {_module(s.layer): s for s in plan.steps}
    assert list(steps) == ["attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc1", "mlp.fc2"]
    (fc1_input,) = steps["mlp.fc1"].inputs
    assert fc1_input in plan.entries  # POT: the FP32 tensor wins over the quantized attention's output
    assert steps["attn.o"].stats == (fc1_input,)
    for name in ("attn.q", "attn.k", "attn.v"):  # each recomputes the out-projection's input
        assert steps[name].stats == steps["attn.o"].inputs[-1:]
    assert not any(n.meta.get("val") is not None and not isinstance(n.meta["val"], torch.Tensor)
                   for n in plan.entries)  # no symbolic sizes


def test_plan_residual_cnn_and_depthwise_convs_are_layers():
    q, _ = _quantized("tiny_cnn")
    plan = bc.plan_steps(q)
    names = [_module(s.layer) for s in plan.steps]
    assert names == ["stem.0", "res_a", "res_b", "dw", "cat_a", "cat_b", "fuse", "fc"]
    steps = dict(zip(names, plan.steps))
    assert steps["dw"].inputs == steps["res_a"].stats == steps["res_b"].stats


def test_apply_for_all_nodes_finds_no_statistic_nodes():
    q, _ = _quantized("tiny_cnn")
    plan = bc.plan_steps(q, apply_for_all_nodes=True)
    assert all(s.stats == () for s in plan.steps)
    assert {n for s in plan.steps for n in s.inputs} <= set(plan.entries)


def test_apply_on_a_real_model_corrects_every_layer_and_keeps_the_graph_lean():
    q, data = _quantized("mobilenet_block")
    old = {layer.node.args[layer.bias_arg].target for layer in layers(q)}
    samples = [((x,), {}) for x in data[:1]]
    updates = bc.apply(q, samples)
    assert [u.applied for u in updates] == [True] * 4
    assert not [n for n in q.graph.nodes if n.op == "get_attr" and not n.users]
    held = {name for name, _ in [*q.named_parameters(), *q.named_buffers()]}
    assert not old & held  # the replaced biases are gone
    for layer, u in zip(layers(q), updates):
        assert torch.equal(layer.bias, u.new_bias)
