"""Trainable FakeQuantize ranges: STE gradients, the log-scale parameterization, state, export."""

import copy
import io
import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from torchpqt.errors import ConfigError, ExportError
from torchpqt.quant.fake_quantize import FakeQuantize, fake_quantize
from torchpqt.quant.trainable import (
    MAX_LOG_SCALE,
    freeze_ranges,
    named_trainable_ranges,
    train_ranges,
    trainable_ranges,
)

NAMES = ("input_low", "input_high", "output_low", "output_high")


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().numpy().tobytes()


def _off_tie_inputs(il, ih, levels, shape, gen):
    """Inputs inside the range whose level fraction is in [0.2, 0.8]: far from rounding ties and edges."""
    n = levels - 1
    k = torch.randint(1, n - 1, shape, generator=gen).double()
    frac = torch.rand(shape, generator=gen, dtype=torch.float64) * 0.6 + 0.2
    return il + (k + frac - 0.5) / n * (ih - il)


# ------------------------------------------------------------------ the op's STE backward formulas


def test_output_range_gradients_match_finite_differences():
    # Away from rounding ties y = q/(L-1)*(oh-ol) + ol with q locally constant: linear in ol and oh,
    # so central differences are the true derivative.
    gen = torch.Generator().manual_seed(0)
    il, ih = torch.tensor([-1.0, -0.5, 0.0]).reshape(1, 3, 1), torch.tensor([1.0, 2.0, 0.75]).reshape(1, 3, 1)
    x = torch.cat([_off_tie_inputs(il.double(), ih.double(), 16, (4, 3, 50), gen).float(),
                   torch.full((1, 3, 50), -9.0), torch.full((1, 3, 50), 9.0)])  # plus clipped both ways
    ol, oh = il * 1.5 - 0.25, ih * 0.5 + 1.0
    w = torch.randn(x.shape, generator=gen)
    leaves = [t.clone().requires_grad_(True) for t in (ol, oh)]
    (fake_quantize(x, il, ih, *leaves, 16) * w).sum().backward()
    eps = 1e-2
    for i, leaf in enumerate(leaves):
        for c in range(3):
            up, down = [t.clone() for t in (ol, oh)], [t.clone() for t in (ol, oh)]
            up[i][0, c, 0] += eps
            down[i][0, c, 0] -= eps
            num = ((fake_quantize(x, il, ih, *up, 16) - fake_quantize(x, il, ih, *down, 16)).double()
                   * w).sum() / (2 * eps)
            assert leaf.grad[0, c, 0].item() == pytest.approx(num.item(), rel=1e-3, abs=1e-3)


def test_input_side_gradients_match_finite_differences_of_the_unrounded_form():
    # The STE counts round() as the identity: the x, il, ih gradients are those of
    # clamp((x-il)/(ih-il), 0, 1) * (oh-ol) + ol, differentiated numerically here in float64.
    gen = torch.Generator().manual_seed(1)
    il = torch.tensor([-1.0, -0.3]).reshape(2, 1).double()
    ih = torch.tensor([0.5, 2.0]).reshape(2, 1).double()
    ol, oh = il * 2, ih * 2  # the saturation fix's output range: slopes of 2
    clipped = torch.tensor([[-5.0] * 3, [5.0] * 3]).double()  # below (channel 0) and above (channel 1)
    x = torch.cat([_off_tie_inputs(il, ih, 256, (2, 40), gen), clipped], dim=1)
    w = torch.randn(x.shape, generator=gen, dtype=torch.float64)

    def smooth(x, il, ih):
        return (((x - il) / (ih - il)).clamp(0, 1) * (oh - ol) + ol) * w

    leaves = [t.clone().requires_grad_(True) for t in (x, il, ih)]
    (fake_quantize(*leaves, ol, oh, 256).double() * w).sum().backward()
    eps = 1e-6
    for i, leaf in enumerate(leaves):
        base = [t.clone() for t in (x, il, ih)]
        for idx in [(0, 0), (1, 0)] if i else [(0, 3), (1, 7), (0, 41), (1, 42)]:
            up, down = [t.clone() for t in base], [t.clone() for t in base]
            up[i][idx] += eps
            down[i][idx] -= eps
            num = (smooth(*up).sum() - smooth(*down).sum()) / (2 * eps)
            assert leaf.grad[idx].item() == pytest.approx(num.item(), rel=1e-4, abs=1e-5), (i, idx)


def test_shared_ranges_get_the_rounding_error_gradient():
    # ol is il, oh is ih: the summed STE gradient is LSQ's rounding-error term inside the range
    # and 1 on the edge a clipped value sits at (worked out by hand from y = q/n*(ih-il) + il).
    x = torch.tensor([-2.0, -0.3, 0.1, 0.55, 3.0])
    il, ih = torch.tensor(-1.0, requires_grad=True), torch.tensor(1.0, requires_grad=True)
    fake_quantize(x, il, ih, il, ih, 5).sum().backward()  # steps of 0.5
    n = 4
    inside = x[1:4]
    q = torch.round((inside + 1) / 2 * n)  # 1, 2, 3
    v = (inside + 1) / 2  # (x - il)/(ih - il)
    torch.testing.assert_close(ih.grad, (q / n - v).sum() + 1.0)  # + the value above
    torch.testing.assert_close(il.grad, (v - q / n).sum() + 1.0)  # + the value below


# ---------------------------------------------------------------------------- gradients and steps


def _fqs():
    c = torch.tensor([0.5, 1.0, 2.0, 4.0])
    return {
        "per-tensor-sym": (FakeQuantize(255, -1.0, 1.0), (200,)),
        "per-channel-asym": (FakeQuantize(256, (-c / 4).reshape(4, 1), c.reshape(4, 1)), (4, 50)),
        "per-channel-saturation": (FakeQuantize(255, -c.reshape(1, 4, 1), c.reshape(1, 4, 1),
                                                -2 * c.reshape(1, 4, 1), 2 * c.reshape(1, 4, 1)), (3, 4, 20)),
    }


@pytest.mark.parametrize("train_min", [False, True], ids=["scale", "scale+min"])
@pytest.mark.parametrize("case", list(_fqs()))
def test_gradients_reach_every_range_parameter(case, train_min):
    fq, shape = _fqs()[case]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2)) * 3
    params = train_ranges(fq, train_min=train_min)
    assert len(params) == 1 + train_min
    torch.nn.functional.mse_loss(fq(x), x * 1.01).backward()
    for p in params:
        assert p.grad is not None and p.grad.shape == fq.input_low.shape
        assert bool((p.grad != 0).all()), p.grad


def test_log_scale_gradient_golden():
    # All data above a [-1, 1] range: y = ih = exp(s), loss = (exp(s) - 3)^2, d/ds = 2*(1-3)*1 = -4.
    fq = FakeQuantize(256, -1.0, 1.0).train_ranges()
    torch.nn.functional.mse_loss(fq(torch.full((10,), 3.0)), torch.full((10,), 3.0)).backward()
    assert fq.log_scale.grad.item() == -4.0
    torch.optim.SGD([fq.log_scale], lr=0.1).step()
    il, ih, _, _ = fq.ranges()
    assert ih.item() == pytest.approx(math.exp(0.4)) and il.item() == -ih.item()


@pytest.mark.parametrize("train_min", [False, True], ids=["scale", "scale+min"])
def test_one_sgd_step_widens_a_too_narrow_range(train_min):
    offsets = torch.tensor([0, 0.5, 1, -1]).reshape(4, 1)
    x = torch.randn(4, 5000, generator=torch.Generator().manual_seed(3)) + offsets
    fq = FakeQuantize(256, torch.full((4, 1), -0.4), torch.full((4, 1), 0.6))  # ~60 % of the values clipped
    clipped_before = ((x <= fq.input_low) | (x > fq.input_high)).float().mean()
    opt = torch.optim.SGD(train_ranges(fq, train_min=train_min), lr=0.5)
    torch.nn.functional.mse_loss(fq(x), x).backward()
    opt.step()
    il, ih, _, _ = (t.detach() for t in fq.ranges())
    assert bool((ih - il > 1.0).all())  # every channel wider
    if not train_min:  # scaled about zero: both edges move out
        assert bool((il < -0.4).all() and (ih > 0.6).all())
    assert ((x <= il) | (x > ih)).float().mean() < clipped_before


# ------------------------------------------------------------------------ invariants (properties)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), lr=st.floats(1e-3, 3.0), train_min=st.booleans(),
       adam=st.booleans())
def test_symmetric_and_unsigned_ranges_keep_their_shape(seed, lr, train_min, adam):
    gen = torch.Generator().manual_seed(seed)
    m = torch.rand(3, 1, generator=gen) * 4 + 1e-3
    weights = FakeQuantize(255, -m, m)  # POT symmetric weights
    signed = FakeQuantize(256, -m * 256 / 254, m)  # POT signed symmetric activations
    unsigned = FakeQuantize(256, torch.zeros(3, 1), m)
    fqs = [weights, signed, unsigned]
    # symmetric FakeQuantize get no min_shift in QAT/tuning; the unsigned one stays at 0 even with one
    params = [p for fq in fqs for p in train_ranges(fq, train_min=train_min and fq is unsigned)]
    opt = (torch.optim.Adam if adam else torch.optim.SGD)(params, lr=lr)
    for _ in range(20):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * 10
        opt.step()
    il, ih, ol, oh = weights.ranges()
    assert _bits(il) == _bits(-ih) and _bits(ol) == _bits(il) and _bits(oh) == _bits(ih)
    il, ih, _, _ = signed.ranges()
    zero_point = (-il.double() / (ih.double() - il.double()) * 255)
    torch.testing.assert_close(zero_point, torch.full_like(zero_point, 128.0), rtol=0, atol=1e-4)
    il, ih, _, _ = unsigned.ranges()
    assert bool((il == 0).all() and (ih > 0).all())


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(1e3, 1e30), train_min=st.booleans(),
       per_channel=st.booleans())
@example(
    seed=378,
    scale=1000.0,
    train_min=True,
    per_channel=True,
)  # float rounding left the high end of a snapped range below 0
def test_a_huge_step_never_collapses_or_inverts_the_range(seed, scale, train_min, per_channel):
    gen = torch.Generator().manual_seed(seed)
    shape = (4, 1) if per_channel else ()
    il0, ih0 = -torch.rand(shape, generator=gen) - 0.01, torch.rand(shape, generator=gen) + 0.01
    fq = FakeQuantize(256, il0, ih0, il0 * 2, ih0 * 2)
    params = train_ranges(fq, train_min=train_min)
    opt = torch.optim.SGD(params, lr=1.0)
    x = torch.randn((4, 30) if per_channel else (30,), generator=gen)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * scale
        opt.step()
        il, ih, ol, oh = fq.ranges()
        assert all(bool(torch.isfinite(t).all()) for t in (il, ih, ol, oh))
        assert bool((ih > il).all() and (oh > ol).all())
        assert bool((il <= 0).all() and (ih >= 0).all())  # zero stays inside
        if train_min:
            z = _zero_points(fq)
            assert bool(((z - z.round()).abs() < 1e-3).all())
        assert bool((fq.log_scale.abs() <= MAX_LOG_SCALE).all())
        assert bool(torch.isfinite(fq(x)).all())
    # back to normal steps: the projected parameters are not stuck far outside their bounds
    before = fq.log_scale.detach().clone()
    fq.log_scale.grad = torch.full(fq.log_scale.shape, 1.0 if bool((before > 0).all()) else -1.0)
    torch.optim.SGD([fq.log_scale], lr=0.1).step()
    fq.ranges()
    assert not torch.equal(fq.log_scale.detach(), before)


def _zero_points(fq):
    il, ih, _, _ = (t.detach().double() for t in fq.ranges())
    return -il / (ih - il) * (fq.levels - 1)


@pytest.mark.parametrize("levels", [256, 255, 16])
def test_a_shifted_range_keeps_an_integer_zero_point(levels):
    lo, hi = torch.tensor([-0.37, -1.0, 0.0, -2.1]), torch.tensor([1.9, 0.2, 1.0, 2.3])
    fq = FakeQuantize(levels, lo, hi)
    start = _zero_points(fq)
    spread = torch.tensor([0.5, 0.3, 1.0, 1.0])
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(8)) * spread + 0.7
    opt = torch.optim.Adam(train_ranges(fq, train_min=True), lr=0.03)
    for _ in range(10):
        opt.zero_grad()
        torch.nn.functional.mse_loss(fq(x), x).backward()
        opt.step()
    moved = fq.min_shift.detach() != 0
    assert moved.tolist() == [True, True, False, True]  # channel 2 starts at 0: anchored
    z = _zero_points(fq)
    assert (z[moved] - z[moved].round()).abs().max() < 1e-3  # snapped; POT's start was not always
    assert not torch.equal(z[moved].round(), start[moved].round())  # and the zero point did move
    assert z[2] == 0


# ------------------------------------------------------------------------------- mode switching


def _cases():
    c = torch.tensor([0.25, 1.0, 3.0])
    yield "per-tensor", FakeQuantize(256, -0.7, 1.3), (50,)
    yield "per-channel", FakeQuantize(255, -c.reshape(3, 1, 1, 1), c.reshape(3, 1, 1, 1)), (3, 2, 4, 4)
    yield "saturation", FakeQuantize(255, -c.reshape(3, 1), c.reshape(3, 1), -2 * c.reshape(3, 1),
                                     2 * c.reshape(3, 1)), (3, 20)
    lo, hi = torch.tensor([-0.0, -1.0, 0.0]), torch.tensor([1.0, -0.0, 2.0])
    yield "negative-zero", FakeQuantize(256, lo, hi, lo.clone(), hi.clone()), (5, 3)
    yield "output-negative-zero", FakeQuantize(256, -1.0, 1.0, -0.0, 2.0), (50,)  # -0.0 off anchored edges


@pytest.mark.parametrize("train_min", [False, True], ids=["scale", "scale+min"])
@pytest.mark.parametrize("name,fq,shape", list(_cases()), ids=[c[0] for c in _cases()])
def test_frozen_trainable_round_trip_is_bitwise(name, fq, shape, train_min):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(4)) * 2
    before = {n: _bits(getattr(fq, n)) for n in NAMES}
    y0 = fq(x)
    fq.train_ranges(train_min=train_min)
    assert fq.ranges_trainable and _bits(fq(x)) == _bits(y0)
    assert {n: _bits(t) for n, t in zip(NAMES, fq.ranges())} == before
    fq.freeze()
    assert not fq.ranges_trainable and not list(fq.parameters())
    assert {n: _bits(getattr(fq, n)) for n in NAMES} == before and _bits(fq(x)) == _bits(y0)


def _trained(train_min=True, steps=5):
    c = torch.tensor([0.5, 1.0, 2.0])
    fq = FakeQuantize(256, -c.reshape(1, 3, 1) / 3, c.reshape(1, 3, 1))
    x = torch.randn(4, 3, 30, generator=torch.Generator().manual_seed(5)) * 1.5
    opt = torch.optim.Adam(train_ranges(fq, train_min=train_min), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(fq(x), x).backward()
        opt.step()
    return fq, x, opt


def test_freeze_writes_the_trained_values_and_keeps_the_output():
    fq, x, _ = _trained()
    y, ranges = fq(x).detach(), [_bits(t) for t in fq.ranges()]
    assert ranges != [_bits(t) for t in FakeQuantize(256, 0.0, 1.0).ranges()]
    freeze_ranges(fq)
    assert [_bits(getattr(fq, n)) for n in NAMES] == ranges and _bits(fq(x)) == _bits(y)


def test_state_dict_keys_are_stable_and_load_bitwise():
    fq, x, _ = _trained()
    y = fq(x).detach()
    sd = fq.state_dict()
    assert list(sd) == list(FakeQuantize(256, 0.0, 1.0).state_dict()) == list(NAMES)
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    frozen = FakeQuantize(256, torch.zeros(1, 3, 1), torch.ones(1, 3, 1))
    frozen.load_state_dict(loaded)
    assert _bits(frozen(x)) == _bits(y)
    other = FakeQuantize(256, torch.zeros(1, 3, 1) - 5, torch.ones(1, 3, 1)).train_ranges(train_min=True)
    with torch.no_grad():
        other.log_scale.fill_(0.3)
    ref = other.log_scale
    other.load_state_dict(loaded)  # strict: no missing log_scale/min_shift
    assert other.log_scale is ref and bool((other.log_scale == 0).all())  # optimizers keep their references
    assert other.ranges_trainable and _bits(other(x)) == _bits(y)


def test_whole_module_save_load_and_deepcopy_keep_training():
    fq, x, _ = _trained(steps=2)
    buf = io.BytesIO()
    torch.save(fq, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    twin = copy.deepcopy(fq)
    for m in (again, twin):
        assert m.ranges_trainable and _bits(m(x)) == _bits(fq(x))
        opt2 = torch.optim.SGD(trainable_ranges(m), lr=0.1)
        torch.nn.functional.mse_loss(m(x), x).backward()
        opt2.step()
        assert _bits(m(x)) != _bits(fq(x))


def test_train_ranges_twice_keeps_the_parameters():
    fq = FakeQuantize(256, -1.0, 1.0)
    first = train_ranges(fq)
    assert train_ranges(fq) == first and first[0] is fq.log_scale
    both = train_ranges(fq, train_min=True)  # another train_min: frozen first, new parameters
    assert len(both) == 2 and both[0] is not first[0]
    assert train_ranges(fq, False) == [] and not fq.ranges_trainable


def test_train_and_eval_modes_do_not_touch_the_ranges():
    fq, x, _ = _trained(steps=1)
    y = fq(x).detach()
    fq.eval()
    assert fq.ranges_trainable and _bits(fq(x)) == _bits(y)
    fq.train()
    assert _bits(fq(x)) == _bits(y)


def test_model_level_helpers_and_groups():
    model = torch.nn.Sequential(FakeQuantize(256, 0.0, 2.0), torch.nn.Linear(4, 4),
                                FakeQuantize(256, -1.0, 3.0))
    params = train_ranges(model, train_min=lambda name, fq: name == "2")
    assert [n for n, _ in named_trainable_ranges(model)] == ["0.log_scale", "2.log_scale", "2.min_shift"]
    assert params == trainable_ranges(model)
    assert trainable_ranges(model, "min") == [model[2].min_shift]
    assert trainable_ranges(model, "scale") == [model[0].log_scale, model[2].log_scale]
    assert all(p.requires_grad for p in params)
    assert set(dict(model.named_parameters())) >= {"0.log_scale", "2.log_scale", "2.min_shift"}
    assert "trainable=scale+min" in repr(model[2])
    freeze_ranges(model)
    assert trainable_ranges(model) == []
    assert [n for n, _ in model.named_parameters()] == ["1.weight", "1.bias"]


def test_bad_ranges_and_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="input_high > input_low"):
        FakeQuantize(256, 1.0, 1.0).train_ranges()
    with pytest.raises(ConfigError, match="one shape"):
        FakeQuantize(256, 0.0, torch.ones(3, 1)).train_ranges()
    with pytest.raises(ConfigError, match="inf or NaN"):
        FakeQuantize(256, -math.inf, 1.0).train_ranges()
    with pytest.raises(ConfigError, match="which must be"):
        trainable_ranges(FakeQuantize(256, 0.0, 1.0), "bias")
    fq = FakeQuantize(256, -1.0, 1.0).train_ranges()
    with pytest.raises(RuntimeError, match="input_high > input_low"):
        fq.load_state_dict({n: torch.tensor(0.5) for n in NAMES})


# ----------------------------------------------------------------------------------------- export


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(6)
        self.weight = torch.nn.Parameter(torch.randn(4, 3, 3, 3, generator=gen))
        m = self.weight.detach().abs().amax(dim=(1, 2, 3), keepdim=True) * 0.5
        self.fq_w = FakeQuantize(255, -m, m)
        self.fq_in = FakeQuantize(256, 0.0, 0.5)

    def forward(self, x):
        return torch.nn.functional.conv2d(self.fq_in(x), self.fq_w(self.weight))


def _trained_net():
    net, x = _Net(), torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(7)) * 2
    target = torch.nn.functional.conv2d(x, net.weight).detach()
    opt = torch.optim.Adam(train_ranges(net), lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), target).backward()
        opt.step()
    return net, x


def test_exporting_trainable_ranges_raises_with_the_fix():
    net, x = _trained_net()
    with pytest.raises(Exception, match="freeze_ranges"):
        torch.export.export(net, (x,))
    with pytest.raises(ExportError, match="freeze_ranges"):
        torch.jit.trace(net, (x,))


def test_torch_export_after_training_shows_the_op_with_trained_ranges():
    net, x = _trained_net()
    trained = {name: [t.detach().clone() for t in getattr(net, name).ranges()] for name in ("fq_w", "fq_in")}
    assert not torch.equal(trained["fq_in"][1], torch.tensor(0.5))  # the ranges did move
    y = net(x).detach()
    freeze_ranges(net)
    ep = torch.export.export(net, (x,))
    nodes = [n for n in ep.graph.nodes if n.target == torch.ops.torchpqt.fake_quantize.default]
    assert len(nodes) == 2
    buffers = ep.graph_signature.inputs_to_buffers
    for node in nodes:
        names = [buffers[a.name] for a in node.args[1:5]]
        fq = names[0].rsplit(".", 1)[0]
        assert [n.rsplit(".", 1)[1] for n in names] == list(NAMES)
        for name, value in zip(names, trained[fq]):
            assert _bits(ep.state_dict[name]) == _bits(value)
    assert _bits(ep.module()(x)) == _bits(y)


@pytest.mark.openvino
def test_onnx_export_after_training_carries_the_trained_ranges():
    pytest.importorskip("onnxscript")
    from onnx import numpy_helper
    from torchpqt.exporters.onnx import OV_DOMAIN, export_proto

    net, x = _trained_net()
    trained = [t.detach().numpy() for t in net.fq_in.ranges()]
    proto = export_proto(freeze_ranges(net), (x,))
    consts = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    fqs = [n for n in proto.graph.node if n.op_type == "FakeQuantize" and n.domain == OV_DOMAIN]
    assert len(fqs) == 2
    found = [[consts[i] for i in n.input[1:]] for n in fqs if all(i in consts for i in n.input[1:])]
    assert any(all(np.array_equal(a.reshape(b.shape), b) for a, b in zip(vals, trained)) for vals in found)
