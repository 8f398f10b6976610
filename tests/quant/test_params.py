"""FakeQuantize range math (spec §4.2-§4.7): properties, and inline numbers from POT's functions."""

from __future__ import annotations

import numpy as np
import pytest
from fq_math import scale_zero_point
from hypothesis import given, settings
from hypothesis import strategies as st

from torchpqt.quant.params import (
    FQParams,
    asymmetric_range,
    fake_quantize_params,
    fix_zero_filters_asymmetric,
    fix_zero_filters_symmetric,
    symmetric_range,
    tune_range,
    unify_params,
)
from torchpqt.quant.spec import QuantSpec


def act(
    mode: str = "symmetric", granularity: str = "pertensor", bits: int = 8, signed: bool = False
) -> QuantSpec:
    levels = 2**bits
    return QuantSpec("activations", bits, mode, granularity, -levels // 2, levels // 2 - 1, levels, signed)


WEIGHTS_SYM = QuantSpec("weights", 8, "symmetric", "perchannel", -127, 127, 255, True)

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False)
positive = st.floats(1e-3, 1e4, allow_nan=False)


@st.composite
def min_max(draw, n: int | None = None):
    n = draw(st.integers(1, 6)) if n is None else n
    lo = np.array(draw(st.lists(finite, min_size=n, max_size=n)))
    width = np.array(draw(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=n, max_size=n)))
    return lo, lo + width


@settings(max_examples=200, deadline=None)
@given(mm=min_max(), bits=st.sampled_from([4, 8, 16]))
def test_asymmetric_zero_on_grid_and_range_contained(mm, bits: int) -> None:
    mn, mx = mm
    p = fake_quantize_params(mn, mx, act("asymmetric", "perchannel", bits))
    # Contained up to rounding: when the zero code is already exact, tune_range's "moved" border
    # is the original one recomputed, which may differ in the last bit.
    ulp = 1e-12 * (mx - mn + 1)
    assert np.all(p.input_low <= np.minimum(mn, 0) + ulp) and np.all(p.input_high >= np.maximum(mx, 0) - ulp)
    _, zp = scale_zero_point(p)
    assert np.all((zp > -1e-6) & (zp < 2**bits - 1 + 1e-6))
    # levels == 2**bits here, so zero is exactly an integer code (tune_range's purpose)...
    on_grid = np.abs(zp - np.round(zp)) <= 1e-6 * 2**bits
    # ...except where POT's tune_range keeps the range as is: the zero code rounds to 0 or to
    # 2**bits - 1 (spec §4.3), e.g. [-0.25, 7.75] with 4 bits.
    tiny = (mx - mn) <= 8e-4
    a, b = np.minimum(np.where(tiny, mn - 8e-4, mn), 0), np.maximum(np.where(tiny, mx + 8e-4, mx), 0)
    code = np.round(-a * (2**bits - 1) / (b - a))
    kept = ((code == 0) | (code == 2**bits - 1)) & (p.input_low == a) & (p.input_high == b)
    assert np.all(on_grid | kept)


@settings(max_examples=100, deadline=None)
@given(m=positive, neg=st.floats(-1e4, -1e-9))
def test_symmetric_signed_grid_is_int8(m: float, neg: float) -> None:
    p = fake_quantize_params(neg, m, act())
    scale, zp = scale_zero_point(p)
    m_fixed = max(m, 8e-5)
    np.testing.assert_allclose(p.input_high, m_fixed, rtol=1e-15)
    np.testing.assert_allclose(p.input_low, -128 * m_fixed / 127, rtol=1e-15)
    np.testing.assert_allclose(scale, m_fixed / 127, rtol=1e-12)
    np.testing.assert_allclose(zp, 128, rtol=1e-12)


@settings(max_examples=100, deadline=None)
@given(mm=min_max(n=4), bits=st.sampled_from([8, 16]))
def test_per_channel_equals_per_tensor_channel_by_channel(mm, bits: int) -> None:
    mn, mx = mm
    per_channel = fake_quantize_params(mn, mx, act("asymmetric", "perchannel", bits))
    for c in range(4):
        single = fake_quantize_params(mn[c], mx[c], act("asymmetric", "pertensor", bits))
        assert single.input_low.shape == ()
        assert per_channel.input_low[c] == single.input_low
        assert per_channel.input_high[c] == single.input_high


@settings(max_examples=100, deadline=None)
@given(m=st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=6))
def test_symmetric_per_channel_is_per_tensor_with_the_shared_floor(m: list[float]) -> None:
    # The one cross-channel coupling: fix_zero_filters_symmetric's floor of 1% of the largest channel.
    m = np.array(m)
    floor = max(8e-5, 0.01 * m.max())
    per_channel = fake_quantize_params(-1.0, m, act(granularity="perchannel"))
    for c in range(len(m)):
        single = fake_quantize_params(-1.0, max(m[c], floor), act())
        assert per_channel.input_low[c] == single.input_low and per_channel.input_high[c] == single.input_high


@st.composite
def fq_group(draw):
    channels = draw(st.sampled_from([None, 3]))
    out = []
    for _ in range(draw(st.integers(1, 4))):
        shape = () if channels is None else (channels,)
        il = -np.abs(
            np.array(draw(st.lists(finite, min_size=channels or 1, max_size=channels or 1)))
        ).reshape(shape)
        ih = np.abs(np.array(draw(st.lists(finite, min_size=channels or 1, max_size=channels or 1)))).reshape(
            shape
        )
        out.append(FQParams(256, il, ih, il, ih))
    return out


@settings(max_examples=100, deadline=None)
@given(group=fq_group())
def test_unified_params_contain_every_member(group: list[FQParams]) -> None:
    unified = unify_params(group)
    for before, after in zip(group, unified):
        assert after.input_low.shape == before.input_low.shape
        assert np.all(after.input_low <= before.input_low) and np.all(after.input_high >= before.input_high)
        np.testing.assert_array_equal(after.input_low, unified[0].input_low)
        np.testing.assert_array_equal(after.input_high, unified[0].input_high)
        np.testing.assert_array_equal(after.output_low, after.input_low)


def test_unify_mixed_shapes_gives_one_scalar_range() -> None:
    a = FQParams(256, 0.0, 2.0, 0.0, 2.0)
    b = FQParams(256, [-1.0, -3.0], [1.0, 0.5], [-1.0, -3.0], [1.0, 0.5])
    ua, ub = unify_params([a, b])
    assert (ua.input_low, ua.input_high) == (-3.0, 2.0)
    np.testing.assert_array_equal(ub.input_low, [-3.0, -3.0])
    np.testing.assert_array_equal(ub.input_high, [2.0, 2.0])


def test_unify_mixed_sign_group() -> None:
    # §4.7: an unsigned [0, M1] and a signed [-M2*256/254, M2] member give [-M2*256/254, max(M1, M2)].
    relu = fake_quantize_params(0.0, 10.485, act())
    signed = fake_quantize_params(-3.0, 9.175, act())
    for p in unify_params([relu, signed]):
        np.testing.assert_allclose([p.input_low, p.input_high], [-9.175 * 256 / 254, 10.485])


# POT 2023.3, run in the POT environment: fake_quantize.fix_zero_filters_asymmetric, the clamp to
# include zero and fake_quantize.tune_range(min, max, bits), on np.random.default_rng(123) ranges.
POT_ASYMMETRIC = [
    (8, [-2.829583149627565, -1.5219942339823858, 0.014997968547287632, -0.8899300216879735],
     [0.851340448931863, 0.7864209310466195, 2.56085255403121, 1.2778788599531998],
     [-2.829583149627565, -1.5219942339823858, 0.0, -0.8945152019672398],
     [0.8517622746327874, 0.7881755854551641, 2.56085255403121, 1.2778788599531998]),
    (8, [-270.0927659369133, -166.45684665071792, -190.33715206484635, -179.85726542251865],
     [206.7736757037501, 101.9790234189259, 209.7706157989378, -125.32881588127164],
     [-270.0927659369133, -166.45684665071792, -190.33715206484635, -179.85726542251865],
     [208.19650707637066, 102.19186155139012, 210.78659815445795, 0.0]),
    (4, [-2.8829091167708123, -2.3158122969092947, -3.3950556458511536, -1.91584445997123],
     [5.946975276028405, 0.9958734693256531, 2.7714659329113185, 2.591382713088882],
     [-2.9734876380142023, -2.3158122969092947, -3.3950556458511536, -1.91584445997123],
     [5.946975276028405, 1.1579061484546473, 2.9706736901197592, 2.8737666899568453]),
    (16, [-0.00030472044842291563, -0.0015620651877318959, 0.005583684827378664, -0.013864337690089466],
     [0.015400113334667932, -0.001357492674572583, 0.02005435971381559, 0.03534495012952833],
     [-0.00030482461387886667, -0.002362065187731896, 0.0, -0.013864357230388374],
     [0.015400113334667932, 0.0, 0.02005435971381559, 0.03534495012952833]),
    (8, [-0.000493533076404323, -0.005695366359708804, -0.0023567948977559375, -0.00041866278252220956],
     [0.0029459916620466244, 0.0013512785863384405, 0.0016165002060513065, 0.0007474229218715454],
     [-0.0005000077591547023, -0.005695366359708804, -0.0023567948977559375, -0.0004218583362710563],
     [0.0029459916620466244, 0.0013547230661443272, 0.001623222975937864, 0.0007474229218715454]),
]  # fmt: skip


@pytest.mark.parametrize(("bits", "mn", "mx", "il", "ih"), POT_ASYMMETRIC)
def test_asymmetric_range_matches_pot(bits: int, mn, mx, il, ih) -> None:
    got_il, got_ih = asymmetric_range(mn, mx, act("asymmetric", "perchannel", bits))
    np.testing.assert_allclose(got_il, il, rtol=1e-12)
    np.testing.assert_allclose(got_ih, ih, rtol=1e-12)


def test_tune_range_rounds_half_to_even() -> None:
    # POT's tune_range on these inputs gives ([-2.00395257, -2.5, -0.5], [253.5, 316.25, 254.5]).
    a, b = tune_range([-1.5, -2.5, -0.5], [253.5, 252.5, 254.5], 8)
    np.testing.assert_allclose(a, [-2.0039525691699605, -2.5, -0.5])
    np.testing.assert_allclose(b, [253.5, 316.25, 254.5])


def test_tune_range_uses_bits_not_levels() -> None:
    # §4.3: user levels 255 with 8 bits: the grid has 254 steps but zero is aligned for 255.
    spec = QuantSpec("weights", 8, "asymmetric", "pertensor", -127, 127, 255, True)
    p = fake_quantize_params(-1.0, 3.0, spec)
    np.testing.assert_allclose(p.input_low, -1.005235602094241)  # same as with 256 levels
    _, zp = scale_zero_point(p)
    assert abs(zp - np.round(zp)) > 0.1


def test_clipping_after_the_formula() -> None:
    # §4.4 [run]: symmetric activations with max.clipping_value=3 gave il=-5.8558, ih=3.0; POT's
    # fix_zero_filters_symmetric then -M*256/254 gives il=-5.855809511811024 for min=-3, max=5.810061.
    p = fake_quantize_params(-3.0, 5.810061, act(), clip_max=3.0)
    np.testing.assert_allclose([p.input_low, p.input_high], [-5.855809511811024, 3.0], rtol=1e-12)
    q = fake_quantize_params(-3.0, 5.810061, act(), clip_min=-1.0)
    np.testing.assert_allclose([q.input_low, q.input_high], [-1.0, 5.810061])


def test_saturation_fix_doubles_outputs_only() -> None:
    p = fake_quantize_params(None, [1.0, 0.0], WEIGHTS_SYM, output_scale=2.0)
    np.testing.assert_array_equal(p.input_high, [1.0, 0.01])
    np.testing.assert_array_equal(p.output_low, 2 * p.input_low)
    np.testing.assert_array_equal(p.output_high, 2 * p.input_high)


def test_fix_zero_filters() -> None:
    np.testing.assert_array_equal(fix_zero_filters_symmetric([2.0, 0.0, 1e-6]), [2.0, 0.02, 0.02])
    np.testing.assert_array_equal(fix_zero_filters_symmetric(1e-6), 8e-5)
    mn, mx = fix_zero_filters_asymmetric(0.5, 0.5004)
    assert mn.shape == (1,)
    np.testing.assert_allclose([mn[0], mx[0]], [0.4992, 0.5012])
    mn, mx = fix_zero_filters_asymmetric([0.0, -1.0], [0.0, 1.0])
    np.testing.assert_allclose(mn, [-8e-4, -1.0])
    np.testing.assert_allclose(mx, [8e-4, 1.0])


def test_symmetric_sign_decision() -> None:
    assert symmetric_range(0.0, 4.0, act())[0] == 0.0
    np.testing.assert_allclose(symmetric_range(0.0, 4.0, act(signed=True))[0], -4.0 * 256 / 254)
    # Per-channel max with a per-tensor min: one sign for all channels (§4.3).
    il, _ = symmetric_range(np.float64(-0.1), [1.0, 2.0], act(granularity="perchannel"))
    np.testing.assert_allclose(il, [-256 / 254, -512 / 254])
    il, _ = symmetric_range(None, [1.0, 2.0], WEIGHTS_SYM)
    np.testing.assert_array_equal(il, [-1.0, -2.0])


def test_shapes_and_validation() -> None:
    assert fake_quantize_params(-1.0, 1.0, act("asymmetric")).input_low.shape == ()
    assert fake_quantize_params(np.array([-1.0]), np.array([1.0]), act()).input_high.shape == ()
    assert fake_quantize_params(-1.0, [1.0, 2.0], act(granularity="perchannel")).input_low.shape == (2,)
    with pytest.raises(ValueError, match="one shape"):
        FQParams(256, [0.0, 1.0], 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="min statistic"):
        fake_quantize_params(None, 1.0, act("asymmetric"))
