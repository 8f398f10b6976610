"""FakeQuantize: golden op semantics, bit-exactness against OpenVINO's CPU plugin, gradients, export."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchpqt.errors import ConfigError
from torchpqt.quant.fake_quantize import FakeQuantize, fake_quantize

GOLDEN = json.loads((Path(__file__).parents[1] / "data" / "golden_ranges.json").read_text())
F32 = np.float32


@pytest.mark.parametrize("key", ["example", "example_levels3"])
def test_golden_op_semantics(key):
    ex = GOLDEN["fake_quantize_op_semantics"][key]
    fq = FakeQuantize(ex["levels"], ex["il"], ex["ih"], ex["ol"], ex["oh"])
    y = fq(torch.tensor(ex["x"], dtype=torch.float32))
    assert y.tolist() == ex["y"]


def _textbook(x, il, ih, ol, oh, levels):
    """The opset1 formula in float64 (what the spec writes), for tolerance checks."""
    x, il, ih, ol, oh = (np.asarray(v, np.float64) for v in (x, il, ih, ol, oh))
    n = levels - 1
    y = np.round((x - il) / (ih - il) * n) / n * (oh - ol) + ol
    return np.where(x <= np.minimum(il, ih), ol, np.where(x > np.maximum(il, ih), oh, y))


@settings(max_examples=60, deadline=None)
@given(lo=st.floats(-10, -0.01), hi=st.floats(0.01, 10), levels=st.sampled_from([3, 16, 255, 256, 1023]),
       seed=st.integers(0, 2**31 - 1))
def test_matches_textbook_within_one_step_and_on_grid(lo, hi, levels, seed):
    x = torch.from_numpy(np.random.default_rng(seed).uniform(-12, 12, 500).astype(F32))
    il, ih = torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)
    y = fake_quantize(x, il, ih, il, ih, levels).double().numpy()
    step = (float(ih) - float(il)) / (levels - 1)
    ref = _textbook(x.numpy(), float(il), float(ih), float(il), float(ih), levels)
    assert np.abs(y - ref).max() <= step * 1.001
    k = (y - float(il)) / step
    assert np.abs(k - np.round(k)).max() < 1e-3  # every output lies on the grid
    order = np.argsort(x.numpy(), kind="stable")
    assert np.all(np.diff(y[order]) >= -1e-6 * max(abs(lo), hi))  # monotone in x


def test_per_channel_broadcast_and_dtype():
    il = torch.tensor([-1.0, -2.0, -4.0]).reshape(1, 3, 1, 1)
    fq = FakeQuantize(256, il, -il)
    below, above = fq(torch.full((2, 3, 4, 4), -100.0)), fq(torch.full((2, 3, 4, 4), 100.0))
    assert torch.equal(below, il.expand(2, 3, 4, 4))  # fma(0, osc, ol) is exactly ol
    # above the range the plugin computes fma(L-1, osc, ol), which can be one ulp off oh
    torch.testing.assert_close(above, (-il).expand(2, 3, 4, 4), rtol=2**-23, atol=0)
    half = fq(torch.ones(1, 3, 2, 2, dtype=torch.float16))
    assert half.dtype == torch.float16


def test_nan_input_goes_to_output_low_like_the_plugin():
    fq = FakeQuantize(256, -1.0, 1.0)
    assert fq(torch.tensor([float("nan")])).item() == -1.0


def test_from_params_shapes_and_rounding():
    p = SimpleNamespace(levels=np.int64(255), input_low=-np.array([0.1, 0.2, 0.3]),
                        input_high=np.array([0.1, 0.2, 0.3]), output_low=None, output_high=None)
    fq = FakeQuantize.from_params(p, (3, 1, 1, 1))
    assert fq.levels == 255 and fq.input_low.shape == (3, 1, 1, 1) and fq.input_low.dtype == torch.float32
    assert fq.input_low.flatten().tolist() == [float(F32(-0.1)), float(F32(-0.2)), float(F32(-0.3))]
    assert torch.equal(fq.output_high, fq.input_high)
    scalar = FakeQuantize.from_params(SimpleNamespace(levels=256, input_low=np.array(0.0), input_high=np.array(2.5),
                                                      output_low=np.array(0.0), output_high=np.array(5.0)),
                                      (1, 8, 1, 1))
    assert scalar.input_low.dim() == 0 and scalar.output_high.item() == 5.0
    with pytest.raises(ConfigError, match="broadcast shape"):
        FakeQuantize.from_params(p, (1, 4, 1, 1))


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="levels"):
        FakeQuantize(1, 0.0, 1.0)
    with pytest.raises(ConfigError, match="broadcast"):
        FakeQuantize(256, torch.zeros(3), torch.ones(4))


def test_extra_repr_is_short():
    assert "levels=256, input_low=0, input_high=6" in repr(FakeQuantize(256, 0.0, 6.0))
    text = repr(FakeQuantize(255, -torch.arange(1.0, 65.0).reshape(64, 1, 1, 1), torch.arange(1.0, 65.0)
                             .reshape(64, 1, 1, 1), output_low=-2.0, output_high=2.0))
    assert "[-64..-1](64, 1, 1, 1)" in text and "output_low=-2" in text and len(text) < 200


# ---------------------------------------------------------------------------- gradients


def _ste_reference(x, il, ih, ol, oh, levels):
    """Differentiable float64 reference: STE round, clamp with gradient only inside the range."""
    n = levels - 1
    v = (x - il) / (ih - il) * n
    inside = (x > il) & (x <= ih)
    v = torch.where(inside, v, v.detach().clamp(0, n))
    q = v + (torch.round(v) - v).detach()
    q = torch.where(inside, q, q.detach())
    return q / n * (oh - ol) + ol


@pytest.mark.parametrize("shared_output", [False, True], ids=["separate-ranges", "ol-is-il"])
def test_gradients_match_ste_reference(shared_output):
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 3, 5, 5, generator=gen) * 8 - 4).double()
    il = (-torch.rand(1, 3, 1, 1, generator=gen) * 3 - 0.5).double()
    ih = (torch.rand(1, 3, 1, 1, generator=gen) * 3 + 0.5).double()
    ol, oh = (il, ih) if shared_output else (il * 2, ih * 1.5)
    weight = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    grads = []
    for fn in (lambda *a: fake_quantize(*a, 256), lambda *a: _ste_reference(*a, 256)):
        leaves = [t.clone().requires_grad_(True) for t in (x, il, ih)]
        outs = [leaves[1], leaves[2]] if shared_output else [t.clone().requires_grad_(True) for t in (ol, oh)]
        (fn(*leaves, *outs) * weight).sum().backward()
        grads.append([t.grad for t in leaves + ([] if shared_output else outs)])
    for ours, ref in zip(*grads):
        assert ours.shape == ref.shape and ours.dtype == torch.float64
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_input_gradient_is_one_inside_zero_outside():
    x = torch.tensor([-3.0, -0.5, 0.2, 0.99, 1.5], requires_grad=True)
    FakeQuantize(256, -1.0, 1.0)(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_range_buffers_learn():
    torch.manual_seed(0)
    x = torch.randn(1000) * 2
    fq = FakeQuantize(16, -0.5, 0.5)
    params = [fq.input_low.requires_grad_(True), fq.input_high.requires_grad_(True)]
    opt = torch.optim.Adam(params, lr=0.05)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(fake_quantize(x, fq.input_low, fq.input_high, fq.input_low,
                                                          fq.input_high, fq.levels), x)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_custom_op_registration_is_consistent():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    args = (x, torch.tensor(-1.0), torch.tensor(1.0), torch.tensor(-1.0), torch.tensor(1.0), 256)
    torch.library.opcheck(torch.ops.torchpqt.fake_quantize.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_export_sees_one_op_on_a_constant_weight():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(4, 3, 3, 3))
            self.fq_w = FakeQuantize(255, -torch.ones(4, 1, 1, 1), torch.ones(4, 1, 1, 1))
            self.fq_in = FakeQuantize(256, 0.0, 4.0)

        def forward(self, x):
            return torch.nn.functional.conv2d(self.fq_in(x), self.fq_w(self.weight))

    gm = torch.export.export(M(), (torch.randn(1, 3, 8, 8),)).run_decompositions().module()
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.torchpqt.fake_quantize.default) == 2
    assert not any("round" in str(t) for t in targets)


# ---------------------------------------------------------------------------- OpenVINO parity


def _ov_fake_quantize(x, il, ih, ol, oh, levels, config=None):
    import openvino as ov
    from openvino import opset13 as ops

    param = ops.parameter(list(x.shape), ov.Type.f32)
    consts = [ops.constant(np.asarray(v, F32)) for v in (il, ih, ol, oh)]
    model = ov.Model([ops.fake_quantize(param, *consts, levels).output(0)], [param])
    return ov.Core().compile_model(model, "CPU", config or {})(x)[0]


def _cases():
    rng = np.random.default_rng(1234)
    c = 8
    for levels in (256, 255, 16, 1023):
        for per_channel in (False, True):
            shape = (1, c, 1, 1) if per_channel else ()
            hi = rng.uniform(0.1, 5, shape).astype(F32)
            ranges = {
                "asym": (-rng.uniform(0.1, 5, shape).astype(F32), hi),
                "unsigned": (np.zeros(shape, F32), hi),
                "signed": ((-hi * F32(levels / (levels - 2))).astype(F32) if levels % 2 == 0 else -hi, hi),
            }
            for kind, (il, ih) in ranges.items():
                yield pytest.param(levels, il, ih, id=f"L{levels}-{'pc' if per_channel else 'pt'}-{kind}")


def _inputs(il, ih, levels, rng):
    """Uniform values plus values on and one ulp around exact rounding ties."""
    shape = (2, 8, 16, 16)
    k = rng.integers(0, levels - 1, shape)
    ties = (il + (k + 0.5) * (ih.astype(np.float64) - il) / (levels - 1)).astype(F32)
    near = np.where(rng.random(shape) < 0.5, np.nextafter(ties, F32(np.inf)), np.nextafter(ties, F32(-np.inf)))
    return [rng.uniform(-6, 6, shape).astype(F32), ties, near.astype(F32)]


def _levels_of(y, il, ih, levels):
    step = (np.asarray(ih, np.float64) - il) / (levels - 1)
    return np.round((np.asarray(y, np.float64) - il) / step)


@pytest.mark.openvino
@pytest.mark.parametrize("levels,il,ih", list(_cases()))
def test_bit_exact_with_openvino_cpu(levels, il, ih):
    rng = np.random.default_rng(levels)
    # For these levels the plugin's low-precision pass refolds ol/oh through an int8 dequantization
    # (its own f32 rounding); the level stays identical, the value moves by <= 2 ulps of the range.
    ulp_budget = 2 if levels in (16, 255, 256) else 0
    spacing = np.spacing(np.maximum(np.abs(il), np.abs(ih)).astype(F32))
    for x in _inputs(il, ih, levels, rng):
        ours = fake_quantize(torch.from_numpy(x), *(torch.from_numpy(np.asarray(v)) for v in (il, ih, il, ih)),
                             levels).numpy()
        ref = _ov_fake_quantize(x, il, ih, il, ih, levels)
        assert np.array_equal(_levels_of(ours, il, ih, levels), _levels_of(ref, il, ih, levels))
        assert np.all(np.abs(ours - ref) <= ulp_budget * spacing), f"max diff {np.abs(ours - ref).max()}"


@pytest.mark.openvino
def test_output_range_differs_from_input_range():
    rng = np.random.default_rng(7)
    il, ih, ol, oh = F32(-1.3), F32(2.7), F32(-4.1), F32(5.9)
    x = rng.uniform(-3, 4, (2, 4, 32, 32)).astype(F32)
    ours = fake_quantize(*(torch.tensor(v) for v in (x, il, ih, ol, oh)), 1023).numpy()
    assert np.array_equal(ours, _ov_fake_quantize(x, il, ih, ol, oh, 1023))


@pytest.mark.openvino
def test_plugin_node_path_differs_only_at_ties():
    """With snippets off (as for a FakeQuantize fused into a convolution) the plugin uses an FMA for
    the input scale: at most one step, and only on inputs that sit on a rounding tie."""
    rng = np.random.default_rng(3)
    il, ih, levels = np.full((1, 8, 1, 1), F32(-1.7)), np.full((1, 8, 1, 1), F32(2.3)), 256
    uniform, ties, _ = _inputs(il, ih, levels, rng)
    for x, at_tie in ((uniform, False), (ties, True)):
        ours = fake_quantize(*(torch.from_numpy(np.asarray(v)) for v in (x, il, ih, il, ih)), levels).numpy()
        ref = _ov_fake_quantize(x, il, ih, il, ih, levels, {"SNIPPETS_MODE": "DISABLE"})
        diff = np.abs(_levels_of(ours, il, ih, levels) - _levels_of(ref, il, ih, levels))
        assert diff.max() <= (1 if at_tie else 0)
