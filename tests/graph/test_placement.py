"""Where FakeQuantize goes (spec §7, §8, §9), checked on small torch models built here."""

import models
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchpqt
from torchpqt.errors import ScopeError


def _points(model, x, **params):
    return {p.name: p for p in torchpqt.plan(model, x, {"target_device": "CPU", **params}).points}


class Chain(nn.Module):
    """conv -> relu -> maxpool -> conv -> relu -> global avg pool -> linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = F.max_pool2d(F.relu(self.conv1(x)), 2)
        y = F.relu(self.conv2(y))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


def test_chain_places_one_fq_per_quantized_input_and_weight():
    pts = _points(Chain(), torch.randn(1, 3, 16, 16))
    weights = sorted(n for n, p in pts.items() if p.group == "weights")
    assert weights == ["conv1/fq_weights_1", "conv2/fq_weights_1", "fc/fq_weights_1"]
    acts = {n: p for n, p in pts.items() if p.group == "activations"}
    # input of conv1; conv2's FQ jumped over MaxPool onto the ReLU output (POT names it after the op it
    # jumped to); ReduceMean (global pool) quantizes its input; the linear's FQ jumped over the flatten.
    assert sorted(acts) == ["adaptive_avg_pool2d/fq_input_0", "conv1/fq_input_0", "flatten/fq_input_0",
                            "max_pool2d/fq_input_0"]
    assert acts["max_pool2d/fq_input_0"].site.tensor.name == "relu"
    assert acts["max_pool2d/fq_input_0"].site.consumer_types == ["Convolution"]
    assert acts["adaptive_avg_pool2d/fq_input_0"].site.consumer_types == ["ReduceMean"]
    assert acts["flatten/fq_input_0"].site.tensor.name == "adaptive_avg_pool2d"
    for p in pts.values():
        assert p.spec.levels == (255 if p.group == "weights" else 256)
        assert p.spec.mode == "symmetric"
        assert p.spec.granularity == ("perchannel" if p.group == "weights" else "pertensor")


def test_mixed_preset_makes_activations_asymmetric_only():
    pts = _points(Chain(), torch.randn(1, 3, 16, 16), preset="mixed")
    for p in pts.values():
        assert p.spec.mode == ("symmetric" if p.group == "weights" else "asymmetric")


class Branches(nn.Module):
    """Residual add, depthwise conv and a concat feeding a conv."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.side = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        s = F.relu(self.stem(x))
        r = F.relu(self.pw(F.relu(self.dw(s)))) + s
        return self.head(torch.cat([r, F.relu(self.side(s))], 1))


def test_depthwise_input_is_per_channel_and_concat_inputs_are_unified():
    pts = _points(Branches(), torch.randn(1, 3, 8, 8))
    dw_in = [p for p in pts.values() if p.group == "activations" and "DepthWiseConvolution" in p.site.consumer_types]
    assert len(dw_in) == 1
    # the stem output also feeds the 1x1 side conv and the residual Add: no common per-channel config, so POT's
    # weaker-variant intersection falls back to per-tensor.
    assert dw_in[0].spec.granularity == "pertensor"
    concat_fqs = [p for p in pts.values() if p.unify_group is not None]
    assert len(concat_fqs) == 2 and len({p.unify_group for p in concat_fqs}) == 1
    add_inputs = [p for p in pts.values() if "Add" in p.site.consumer_types]
    assert len(add_inputs) == 2, "eltwise Add quantizes both inputs"


def test_depthwise_only_consumer_gets_per_channel_activations():
    model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.ReLU(), nn.Conv2d(6, 6, 3, groups=6)).eval()
    pts = _points(model, torch.randn(1, 3, 8, 8))
    p = pts["2/fq_input_0"]
    assert p.spec.granularity == "perchannel" and p.site.consumer_types == ["DepthWiseConvolution"]


def test_ignored_scope_by_module_path_removes_exactly_those_fakequantize():
    x = torch.randn(1, 3, 16, 16)
    full = _points(Chain(), x)
    less = _points(Chain(), x, ignored={"scope": ["conv2"]})
    assert set(full) - set(less) == {"conv2/fq_weights_1", "max_pool2d/fq_input_0"}
    assert "conv2" in torchpqt.plan(Chain(), x, {"ignored": {"scope": ["conv2"]}}).ignored
    assert set(less) <= set(full)


def test_misspelled_ignored_scope_is_an_error_with_close_matches():
    with pytest.raises(ScopeError, match="conv2"):
        _points(Chain(), torch.randn(1, 3, 16, 16), ignored={"scope": ["conv_2"]})


def test_ignored_operation_type_with_attributes():
    x = torch.randn(1, 3, 16, 16)
    pts = _points(Chain(), x, ignored={"operations": [{"type": "Convolution", "attributes": {"pads_begin": [1, 1]}}]})
    assert not any(n.startswith(("conv1", "conv2")) or n == "max_pool2d/fq_input_0" for n in pts)
    with pytest.raises(ScopeError, match="Convolution"):
        _points(Chain(), x, ignored={"operations": [{"type": "Convolution", "attributes": {"group": 2}}]})


def test_skip_model_places_nothing():
    assert _points(Chain(), torch.randn(1, 3, 16, 16), ignored={"skip_model": True}) == {}


def test_saturation_fix_marks_first_convolutions_only_on_cpu():
    x = torch.randn(1, 3, 16, 16)
    scaled = {n for n, p in _points(Chain(), x).items() if p.output_scale != 1.0}
    assert scaled == {"conv1/fq_weights_1"}
    gpu = torchpqt.plan(Chain(), x, {"target_device": "GPU"}).points
    assert all(p.output_scale == 1.0 for p in gpu)
    every = {n for n, p in _points(Chain(), x, saturation_fix="all").items() if p.output_scale != 1.0}
    assert every == {"conv1/fq_weights_1", "conv2/fq_weights_1", "fc/fq_weights_1"}


Encoder = models.MaskedEncoder


def _encoder_inputs():
    return (torch.randint(0, 50, (1, 6)), torch.ones(1, 6, dtype=torch.long))


def test_transformer_ignores_add_mvn_multiply_and_makes_act_matmul_symmetric():
    ids, mask = _encoder_inputs()
    plain = _points(Encoder(), (ids, mask), preset="mixed")
    tr = _points(Encoder(), (ids, mask), preset="mixed", model_type="transformer")
    assert any("MVN" in p.site.consumer_types for p in plain.values())
    assert not any({"MVN", "Add", "Multiply"} & set(p.site.consumer_types) for p in tr.values())
    qk = [p for p in tr.values() if p.site.act_matmul]
    # Q, K (Q.K^T) and the softmax output and V (attention.V: no Reshape/Transpose on V here, so POT's
    # attention-block pattern does not skip that MatMul)
    assert len(qk) == 4
    assert all(p.spec.mode == "symmetric" for p in qk)
    # POT: the estimator stays the asymmetric one (max, not abs_max) after the switch (spec §5.4, §8)
    assert all(p.stat_max.type == "max" for p in qk)
    others = [p for p in tr.values() if p.group == "activations" and not p.site.act_matmul]
    assert others and all(p.spec.mode == "asymmetric" for p in others)


def test_integer_and_bool_tensors_are_never_quantized():
    ids, mask = _encoder_inputs()
    for p in _points(Encoder(), (ids, mask)).values():
        val = p.site.tensor.meta.get("val")
        assert val is None or val.dtype.is_floating_point, p.name
        assert p.site.tensor.op != "placeholder"


# --- embedding + pooling (bag-of-words classifiers) ----------------------------------------------------


def _bow_points(name, **params):
    return _points(models.build(name), models.example_input(name), **params)


def test_embedding_mean_keeps_the_fq_on_the_gathered_tensor():
    """Gather -> ReduceMean -> MatMul: ReduceMean has activations rules only, so its input FQ does not move
    onto the table (POT 2023.3 moves it and then fails); it quantizes the gathered rows per tensor."""
    for preset, mode in (("performance", "symmetric"), ("mixed", "asymmetric")):
        pts = _bow_points("bow_mean", preset=preset)
        assert sorted(pts) == ["head/fq_input_0", "head/fq_weights_1", "mean/fq_input_0"]
        fq = pts["mean/fq_input_0"]
        assert fq.group == "activations" and fq.site.consumer_types == ["ReduceMean"]
        assert fq.site.tensor.name == "embedding"  # the Gather's output, not the table
        assert (fq.spec.granularity, fq.spec.mode, fq.spec.levels) == ("pertensor", mode, 256)
        assert pts["head/fq_input_0"].site.tensor.name == "mean"


def test_embedding_mean_layernorm_quantizes_each_input():
    pts = _bow_points("bow_mean_ln")
    assert sorted(pts) == ["head/fq_input_0", "head/fq_weights_1", "mean/fq_input_0", "norm/fq_input_0"]
    assert pts["norm/fq_input_0"].site.consumer_types == ["MVN"]
    assert pts["mean/fq_input_0"].site.tensor.name == "embedding"


@pytest.mark.parametrize("name", ["bow_sum", "bow_bag"])
def test_embedding_sum_and_embedding_bag_quantize_the_linear_only(name):
    """ReduceSum and EmbeddingBag have no CPU rule: the linear's input FQ stays below them."""
    pts = _bow_points(name)
    assert sorted(pts) == ["head/fq_input_0", "head/fq_weights_1"]
    assert pts["head/fq_input_0"].site.tensor.op == "call_function"


class EmbedTwoHeads(nn.Module):
    """One embedding feeding a mean-pooled branch and a per-token linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(30, 8)
        self.tok, self.cls = nn.Linear(8, 3), nn.Linear(8, 2)

    def forward(self, ids):
        x = self.embed(ids)
        return self.tok(x), self.cls(x.mean(1))


def test_embedding_feeding_a_linear_and_a_mean_is_quantized_per_row():
    """A consumer with a weights rule below the Gather (the linear): both input FQs move onto the table as one
    per-row weights FQ, as POT does; the MatMul's weights configs decide it."""
    pts = _points(EmbedTwoHeads(), torch.randint(0, 30, (1, 6)))
    table = [p for p in pts.values() if p.group == "weights" and p.site.tensor.op == "get_attr"
             and tuple(p.site.tensor.meta["val"].shape) == (30, 8)]
    assert len(table) == 1, sorted(pts)
    assert table[0].spec.granularity == "perchannel" and table[0].site.weight_axis == 0
    assert not any(p.site.tensor.name == "embedding" for p in pts.values())
