"""ActivationChannelAlignment (spec §10.3): which pairs qualify, the math by hand, and FP32 equivalence."""

import numpy as np
import pytest
import torch
from torch import nn

from torchpqt.algorithms import channel_alignment as ca
from torchpqt.algorithms.layers import layer_of
from torchpqt.graph.capture import capture


def _ranges(per_sample: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """POT: per-sample per-channel 1e-4 / 1-1e-4 quantiles, median over samples (numpy, as POT)."""
    lo, hi = [], []
    for y in per_sample:
        t = y.detach().double().numpy().reshape(y.shape[0], y.shape[1], -1)
        lo.append(np.quantile(t, 1e-4, axis=2))
        hi.append(np.quantile(t, 1 - 1e-4, axis=2))
    return np.median(np.concatenate(lo), 0), np.median(np.concatenate(hi), 0)


def _outputs(gm, node, samples):
    out = []

    class Grab(torch.fx.Interpreter):
        def run_node(self, n):
            r = super().run_node(n)
            if n is node:
                out.append(r.detach())
            return r

    for x in samples:
        Grab(gm).run(x)
    return out


class Chain(nn.Module):
    """Padded conv with very different channel gains -> 1x1 conv -> bias-less 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 5, 1), nn.Conv2d(5, 4, 1, bias=False)
        with torch.no_grad():
            self.a.weight.mul_(torch.tensor([0.01, 0.1, 1.0, 3.0, 10.0, 0.5]).view(6, 1, 1, 1))
            self.a.bias.add_(torch.tensor([2.0, -1.0, 0.5, 3.0, -4.0, 0.0]))

    def forward(self, x):
        return self.c(self.b(self.a(x)))


def test_alignment_keeps_the_fp32_output_and_narrows_the_producer_ranges():
    torch.manual_seed(0)
    model = Chain().eval()
    samples = [torch.randn(1, 3, 8, 8) * (1 + i / 4) for i in range(8)]
    gm = capture(model, samples[0])
    pairs = ca.find_pairs(gm)
    assert [(p.producer.name, p.consumer.name) for p in pairs] == [("conv2d", "conv2d_1"), ("conv2d_1", "conv2d_2")]
    producer = pairs[0].producer.node
    ranges = {p.producer.name: _ranges(_outputs(gm, p.producer.node, samples)) for p in pairs}
    before = ranges["conv2d"][1] - ranges["conv2d"][0]
    x = torch.cat(samples)
    with torch.no_grad():
        ref = model(x)
    rescale = ca.apply(gm, pairs, ranges)
    with torch.no_grad():
        got = gm(x)
    assert rescale == {"conv2d_1", "conv2d_2"}
    assert float((got - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    lo, hi = _ranges(_outputs(gm, producer, samples))
    after = hi - lo
    assert after.max() / after.min() < 0.1 * before.max() / before.min()
    # every channel now spans about the median range (the clip at 0.01..100 does not bite here)
    np.testing.assert_allclose(after, np.median(before), rtol=1e-4)
    np.testing.assert_allclose((hi + lo) / 2, 0, atol=1e-4 * np.median(before))  # means aligned to 0


def test_align_pair_by_hand():
    w_in = torch.tensor([[[[1.0]]], [[[2.0]]]])
    b_in = torch.tensor([1.0, -1.0])
    w_out = torch.tensor([[[[3.0]], [[4.0]]]])
    b_out = torch.tensor([0.5])
    new = ca.align_pair(w_in, b_in, w_out, b_out, amin=[-1.0, 0.0], amax=[3.0, 8.0])
    # mean = [1, 4], scale = [4, 8], sf = scale / median(scale) = [2/3, 4/3]
    assert new.mean_aligned and new.scale_aligned
    np.testing.assert_allclose(new.b_out.numpy(), [0.5 + 3 * 1 + 4 * 4])
    np.testing.assert_allclose(new.b_in.numpy(), [0.0, -5.0 * 3 / 4])
    np.testing.assert_allclose(new.w_in.flatten().numpy(), [1.5, 1.5])
    np.testing.assert_allclose(new.w_out.flatten().numpy(), [2.0, 16.0 / 3], rtol=1e-6)


def test_scale_factors_are_clipped_and_empty_channels_keep_theirs():
    w_in = torch.ones(3, 1, 1, 1)
    w_out = torch.ones(1, 3, 1, 1)
    new = ca.align_pair(w_in, None, w_out, None, amin=[0, 0, 0], amax=[1e-6, 1.0, 0.0])
    assert not new.mean_aligned  # a MatMul producer without bias: no mean alignment
    # sf: 1e-6 / median([1e-6, 1]) clipped to 0.01; the empty channel keeps 1
    np.testing.assert_allclose(new.w_in.flatten().numpy(), [1 / 0.01, 1 / (1.0 / 0.5000005), 1.0], rtol=1e-6)


def test_no_positive_scale_means_no_scale_alignment():
    new = ca.align_pair(torch.ones(2, 1, 1, 1), torch.zeros(2), torch.ones(1, 2, 1, 1), torch.zeros(1),
                        amin=[1.0, 2.0], amax=[1.0, 2.0])
    assert new.mean_aligned and not new.scale_aligned
    np.testing.assert_allclose(new.b_in.numpy(), [-1.0, -2.0])
    np.testing.assert_allclose(new.b_out.numpy(), [3.0])


class Pair(nn.Module):
    def __init__(self, between=None, consumer=None, second_user=False, producer=None):
        super().__init__()
        self.p = producer or nn.Conv2d(3, 4, 3, padding=1)
        self.c = consumer or nn.Conv2d(4, 2, 1)
        self.between, self.second_user = between, second_user

    def forward(self, x):
        y = self.p(x)
        z = self.c(self.between(y) if self.between else y)
        return (z, y.mean()) if self.second_user else z


@pytest.mark.parametrize("kwargs, qualifies", [
    ({}, True),
    ({"between": nn.ReLU()}, False),
    ({"consumer": nn.Conv2d(4, 2, 1, padding=1)}, False),
    ({"consumer": nn.Conv2d(4, 2, 1, stride=2)}, False),
    ({"consumer": nn.Conv2d(4, 2, 3, dilation=2)}, False),
    ({"consumer": nn.Conv2d(4, 4, 1, groups=2)}, False),
    ({"second_user": True}, False),
    ({"consumer": nn.Conv2d(4, 2, 3)}, True),  # POT asks for no padding, not for a 1x1 kernel
    ({"producer": nn.Conv2d(3, 3, 3, padding=1, groups=3), "consumer": nn.Conv2d(3, 2, 1)}, True),
], ids=["linear pair", "relu between", "padded consumer", "strided consumer", "dilated consumer",
        "grouped consumer", "producer with two users", "3x3 consumer", "depthwise producer"])
def test_which_pairs_qualify(kwargs, qualifies):
    torch.manual_seed(0)
    gm = capture(Pair(**kwargs).eval(), torch.randn(1, 3, 8, 8))
    assert bool(ca.find_pairs(gm)) is qualifies


def test_bias_less_consumer_gets_the_mean_shift_and_old_tensors_are_untouched():
    torch.manual_seed(0)
    model = Pair(consumer=nn.Conv2d(4, 2, 1, bias=False)).eval()
    samples = [torch.randn(1, 3, 8, 8) + 1.0 for _ in range(4)]
    gm = capture(model, samples[0])
    (pair,) = ca.find_pairs(gm)
    assert pair.consumer.bias is None
    old_weight = pair.producer.weight
    snapshot = old_weight.clone()
    ranges = {pair.producer.name: _ranges(_outputs(gm, pair.producer.node, samples))}
    ca.apply(gm, [pair], ranges)
    consumer = layer_of(gm, pair.consumer.node)
    assert consumer.bias is not None and bool(consumer.bias.abs().sum() > 0)
    assert torch.equal(old_weight, snapshot)
    x = torch.cat(samples)
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-5)
    assert not [n for n in gm.graph.nodes if n.op == "get_attr" and not n.users]
    held = {name for name, _ in [*gm.named_parameters(), *gm.named_buffers()]}
    assert held == {n.target for n in gm.graph.nodes if n.op == "get_attr"}  # only what the graph reads


def test_linear_producer_never_qualifies():
    class LinConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.conv = nn.Linear(5, 4), nn.Conv1d(4, 3, 1)

        def forward(self, x):  # [B, 4, 5] -> linear over the last axis -> conv1d over axis 1
            return self.conv(self.fc(x))

    # POT pairs them and then breaks (statistics on axis 1, the linear's channels on the last axis)
    gm = capture(LinConv().eval(), torch.randn(1, 4, 5))
    assert ca.find_pairs(gm) == []
