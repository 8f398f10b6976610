"""OverflowCorrection math (spec §10.4), with numbers worked by hand."""

import numpy as np

from torchpqt.algorithms import overflow_correction as oc
from torchpqt.quant.params import FQParams


def _fq(levels, low, high):
    low, high = np.asarray(low, float), np.asarray(high, float)
    return FQParams(levels, low, high, low, high)


def test_no_rescale_while_the_int32_accumulator_fits():
    w = _fq(65535, [-1.0, -2.0], [1.0, 2.0])          # w_scale = max(2, 4) / 65534
    x = _fq(65536, -1.0, 1.0)                          # in_scale = 2 / 65535
    fits = (2**31 - 1) * (2 / 65535) * (4 / 65534) * 0.999
    assert oc.rescale(w, [x], fits) is None


def test_rescale_factor_and_corrected_output_range():
    w = _fq(65535, [-1.0], [1.0])
    x = _fq(65536, -1.0, 1.0)
    out_max = 10 * (2**31 - 1) * (2 / 65535) * (2 / 65534)
    r = oc.rescale(w, [x], out_max)
    ratio = int(out_max / ((2 / 65535) * (2 / 65534)))    # POT truncates to int, then divides
    assert r == ratio / (2**31 - 1) and 9.99 < r < 10.01
    fixed = oc.apply(w, r)
    np.testing.assert_array_equal(fixed.input_low, w.input_low)
    np.testing.assert_allclose(fixed.output_high, w.output_high * r)


def test_largest_input_scale_wins_and_no_input_means_no_correction():
    w = _fq(65535, [-1.0], [1.0])
    small, big = _fq(65536, -1.0, 1.0), _fq(65536, -4.0, 4.0)
    out_max = 3 * (2**31 - 1) * (2 / 65535) * (2 / 65534)
    assert oc.rescale(w, [small, big], out_max) is None   # the 4x larger input scale absorbs the 3x
    assert oc.rescale(w, [], out_max) is None
