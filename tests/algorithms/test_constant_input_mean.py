"""The output mean of a conv on a per-channel constant input in closed form (FastBiasCorrection's q and
W m_in), against running the conv on the built input: random 1-3-D convs with strides, dilations, groups,
numeric / "same" / "valid" padding and inputs smaller than the kernel's span; plus a golden value on an
input far too large to build."""

from __future__ import annotations

import random

import pytest
import torch
from torch import fx

from torchpqt.algorithms.fast_bias_correction import constant_input, fast_bias_correction
from torchpqt.algorithms.layers import Layer, channel_mean, constant_input_mean, run_layer

_NODE = fx.Graph().placeholder("x")
# the reference conv of an even kernel with padding="same" warns that it copies its input: not what is tested
pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same.:UserWarning")


def _conv(w, **attrs) -> Layer:
    return Layer(_NODE, "Convolution", w, None, **attrs)


def _by_running(layer: Layer, shape, means, w) -> torch.Tensor:
    x = constant_input(shape, means.numpy(), 1).double()
    return channel_mean(run_layer(layer, x, w.double()), 1)


def _random_case(rng: random.Random):
    dims = rng.choice([1, 2, 3])
    cin, cout = rng.choice([2, 4, 6]), rng.choice([2, 4, 6])
    groups = rng.choice([1, 2, "depthwise"])
    if groups == "depthwise":
        groups, cout = cin, cin * rng.choice([1, 2])
    kernel = [rng.choice([1, 2, 3, 5]) for _ in range(dims)]
    stride = [rng.choice([1, 2, 3]) for _ in range(dims)]
    dilation = [rng.choice([1, 2]) for _ in range(dims)]
    padding = rng.choice(["same", "valid", tuple(rng.choice([0, 1, 2, 3]) for _ in range(dims))])
    if padding == "same":
        stride = [1] * dims  # torch: "same" only with stride 1
    sizes = [rng.choice([1, 2, 3, 5, 8]) if dims == 3 else rng.choice([1, 3, 7, 16, 31]) for _ in range(dims)]
    w = torch.randn(cout, cin // groups, *kernel)
    layer = _conv(w, stride=tuple(stride), padding=padding, dilation=tuple(dilation), groups=groups)
    return layer, [1, cin, *sizes], torch.randn(cin), w


@pytest.mark.parametrize("seed", range(6))
def test_equals_running_the_conv_on_the_constant_input(seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    checked = 0
    for _ in range(60):
        layer, shape, means, w = _random_case(rng)
        try:
            expected = _by_running(layer, shape, means, w)
        except RuntimeError:  # no output position: the closed form says so too
            with pytest.raises(ValueError, match="no output position"):
                constant_input_mean(layer, shape, means, w)
            continue
        got = constant_input_mean(layer, shape, means, w)
        # float64 sums in another order: a few ulps of the terms' magnitude
        scale = w.double().abs().sum() * means.double().abs().max()
        assert got.dtype == torch.float64 and got.shape == expected.shape
        assert float((got - expected).abs().max()) <= 1e-14 * float(scale), (shape, layer.padding, layer.stride)
        checked += 1
    assert checked >= 30


def test_padded_3x3_golden_on_an_input_too_large_to_build():
    # all-ones 3x3 kernel, padding 1, stride 1 on an L x L map of constant m: along each axis the middle tap reads
    # the input at all L outputs, the outer two at L - 1, so mean = m (3L - 2)^2 / L^2. The input would take
    # 8 GB (float64) and its unfolding 72 GB: the closed form needs the weight only.
    side = 32768
    w = torch.ones(1, 1, 3, 3)
    got = constant_input_mean(_conv(w, stride=(1, 1), padding=(1, 1), dilation=(1, 1)), [1, 1, side, side],
                              torch.tensor([0.5]), w)
    assert float(got[0]) == pytest.approx(0.5 * (3 * side - 2) ** 2 / side**2, rel=1e-15)


def test_matmul_mean_is_w_times_m():
    w = torch.randn(5, 3)  # linear: [out, in]
    layer = Layer(_NODE, "MatMul", w, None, transposed_weight=True)
    means = torch.randn(3)
    got = constant_input_mean(layer, [1, 7, 3], means, w)
    assert torch.allclose(got, w.double() @ means.double(), rtol=1e-15, atol=1e-15)


def test_wrong_channel_count_is_named():
    w = torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="5 input channel means for a conv reading 3"):
        constant_input_mean(_conv(w, stride=(1, 1), padding=(1, 1), dilation=(1, 1)), [1, 5, 8, 8],
                            torch.randn(5), w)


def test_an_input_shape_without_the_batch_axis_is_named():
    w = torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="not \\[batch, channels\\] and 2 spatial"):
        constant_input_mean(_conv(w, stride=(1, 1), padding=(1, 1), dilation=(1, 1)), [3, 8, 8], torch.randn(3), w)


def test_bias_correction_skips_a_layer_it_cannot_model_with_a_reason(caplog):
    w = torch.randn(4, 3, 3, 3)
    layer = Layer(_NODE, "Convolution", w, torch.ones(4), stride=(1, 1), padding=(1, 1), dilation=(1, 1))
    # an unbatched [C, H, W] input: the batch set to one leaves [1, 8, 8], no 2-D conv input
    update = fast_bias_correction(layer, w, torch.zeros(3).numpy(), torch.zeros(4).numpy(), [3, 8, 8])
    assert not update.applied and update.new_bias is None and "spatial" in update.reason
    assert "keeps its bias" in caplog.text
