"""The export check's math: grid positions, levels, one FakeQuantize compared between two runs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torchpqt.exporters._compare import (
    Tolerances,
    compare_fake_quantize,
    levels_of,
    max_relative_difference,
    positions,
    sqnr_db,
)

TOL = Tolerances()


def test_positions_and_levels_golden():
    # [0, 2.55] with 256 levels: step 0.01; clipped at both ends; a channel with an empty range sits at 0
    x = np.array([-1.0, 0.0, 0.004, 0.005, 1.0, 2.55, 9.0])
    np.testing.assert_allclose(positions(x, 0.0, 2.55, 256), [0, 0, 0.4, 0.5, 100, 255, 255], atol=1e-9)
    assert positions(np.array([3.0]), 1.0, 1.0, 256).tolist() == [0.0]
    # symmetric [-1, 1] with 255 levels: step 1/127, level 127 is zero
    np.testing.assert_allclose(positions(np.array([-1.0, 0.0, 0.5]), -1.0, 1.0, 255), [0, 127, 190.5])
    assert levels_of(np.array([-1.0, 0.0, 1 / 127, 1.0]), -1.0, 1.0, 255).tolist() == [0, 127, 128, 254]
    assert levels_of(np.array([5.0]), 0.0, 2.55, 256).tolist() == [255]  # clipped to the last level


def _run(x, il, ih, levels):
    u = positions(x, il, ih, levels)
    y = il + np.rint(u) * (ih - il) / (levels - 1)
    return (x, y, il, ih, il, ih)


def test_identical_runs_agree():
    x = np.linspace(-1, 3, 1000)
    stats, q = compare_fake_quantize("fq", 256, _run(x, 0.0, 2.0, 256), _run(x, 0.0, 2.0, 256), TOL)
    assert (stats.flips, stats.input_deviation, stats.excess_deviation, stats.level_outliers) == (0, 0.0, 0.0, 0)
    assert stats.elements == 1000 and not stats.violations(TOL)
    np.testing.assert_array_equal(q, levels_of(_run(x, 0.0, 2.0, 256)[1], 0.0, 2.0, 256))


def test_a_tie_that_flips_is_one_level_and_within_tolerance():
    x = np.array([0.0, 0.5, 1.0]) * 2 / 255        # the middle element sits on a tie (position 0.5)
    ir = (x, np.array([0.0, 2 / 255, 2 / 255]), 0.0, 2.0, 0.0, 2.0)   # the IR rounded it up
    torch_side = (x, np.array([0.0, 0.0, 2 / 255]), 0.0, 2.0, 0.0, 2.0)
    stats, _ = compare_fake_quantize("fq", 256, ir, torch_side, TOL)
    assert (stats.flips, stats.unexplained_flips, stats.max_level_difference, stats.level_outliers) == (1, 0, 1, 0)
    assert stats.flip_fraction == pytest.approx(1 / 3) and stats.input_deviation == 0.0
    assert not stats.violations(TOL)


def test_a_flip_away_from_a_tie_is_caught():
    x = np.array([0.0, 0.2, 1.0]) * 2 / 255        # position 0.2: level 0 on any hardware
    ir = (x, np.array([0.0, 2 / 255, 2 / 255]), 0.0, 2.0, 0.0, 2.0)
    stats, _ = compare_fake_quantize("fq", 256, ir, _run(x, 0.0, 2.0, 256), TOL)
    assert (stats.flips, stats.unexplained_flips, stats.level_outliers) == (1, 1, 0)
    assert stats.violations(TOL) == [f"{1 / 3:.2%} of levels differ away from a rounding tie (max 1.00%)"]
    assert not stats.violations(Tolerances(max_flip_fraction=0.5))


def test_a_shifted_input_is_caught():
    x = np.linspace(0, 2, 500)
    stats, _ = compare_fake_quantize("fq", 256, _run(x + 3 * 2 / 255, 0.0, 2.0, 256), _run(x, 0.0, 2.0, 256), TOL)
    assert stats.excess_deviation == pytest.approx(3.0, abs=0.01) and stats.max_level_difference == 3
    assert stats.level_outliers > 0 and any("input off by" in v for v in stats.violations(TOL))


def test_ranges_rewritten_by_a_fusion_compare_equal():
    """FakeQuantize(x * c) with ranges / c (the converter folding a Multiply into the ranges) is the same grid."""
    x = np.linspace(-1, 2, 301)
    c = 4.0
    ir = _run(x / c, -1.0 / c, 2.0 / c, 256)
    stats, _ = compare_fake_quantize("fq", 256, ir, _run(x, -1.0, 2.0, 256), TOL)
    assert stats.ranges_rewritten and stats.excess_deviation < 1e-9 and stats.flips == 0


def test_float_allowance_covers_cancellation_in_a_tiny_channel():
    """A near-dead channel with range 1e-6 in a tensor holding values of 10: float32 rounding of 10 (an ulp
    is 9.5e-7) is many of that channel's steps. The allowance, 64 eps x 10 = 7.6e-5 absolute, covers it;
    a shift of 3 steps of the busy channel (0.12) is not covered."""
    il, ih = np.array([[0.0], [0.0]]), np.array([[10.0], [1e-6]])
    x = np.array([[5.0, 10.0], [5e-7, 1e-7]])
    nudged = x + np.array([[0.0, 0.0], [3e-7, 0.0]])   # 76 steps of the tiny channel, 0.3 ulp of 10
    stats, _ = compare_fake_quantize("fq", 256, _run(nudged, il, ih, 256), _run(x, il, ih, 256), TOL)
    assert stats.input_deviation > 50 and stats.excess_deviation == 0.0 and stats.level_outliers == 0
    shifted = x + np.array([[3 * 10 / 255, 0.0], [0.0, 0.0]])
    stats, _ = compare_fake_quantize("fq", 256, _run(shifted, il, ih, 256), _run(x, il, ih, 256), TOL)
    assert stats.excess_deviation == pytest.approx(3.0, abs=0.01) and stats.level_outliers == 1


@settings(max_examples=60, deadline=None)
@given(st.floats(-4, 4), st.floats(0.05, 4), st.floats(0.01, 100), st.integers(0, 2**31 - 1))
def test_positions_are_invariant_to_rescaling(low, width, scale, seed):
    x = np.random.default_rng(seed).uniform(low - 1, low + width + 1, 64)
    u1 = positions(x, low, low + width, 256)
    u2 = positions(x * scale, low * scale, (low + width) * scale, 256)
    np.testing.assert_allclose(u1, u2, atol=1e-9 * 255)
    assert u1.min() >= 0 and u1.max() <= 255


def test_sqnr_golden():
    ref = np.array([3.0, 4.0])                        # signal energy 25
    assert sqnr_db(ref + np.array([0.05, 0.0]), ref) == pytest.approx(10 * np.log10(25 / 0.0025))   # 40 dB
    assert sqnr_db(ref, ref) == float("inf")


def test_tolerances_validate():
    with pytest.raises(ValueError, match="max_flip_fraction"):
        Tolerances(max_flip_fraction=-1)


def test_nan_on_one_side_only_is_infinitely_off():
    x = np.array([0.5, np.nan, 1.0])
    ir = _run(np.array([0.5, 0.7, np.nan]), 0.0, 2.0, 256)
    stats, _ = compare_fake_quantize("fq", 256, ir, _run(x, 0.0, 2.0, 256), TOL)
    assert stats.excess_deviation == float("inf") and stats.violations(TOL)
    same, _ = compare_fake_quantize("fq", 256, _run(x, 0.0, 2.0, 256), _run(x, 0.0, 2.0, 256), TOL)
    assert same.excess_deviation == 0.0
    assert max_relative_difference(np.array([1.0, np.nan]), np.array([1.0, 2.0])) == float("inf")
    assert max_relative_difference(np.array([1.0, np.nan]), np.array([2.0, np.nan])) == pytest.approx(0.5)
