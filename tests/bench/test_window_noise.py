"""The window-noise yardstick of the λ-control docs agrees with what can be computed by hand."""

from __future__ import annotations

import math

from benchmarks.window_noise import p_leave


def test_one_window_matches_the_normal_tail():
    se, band = 0.022, 0.05
    want = math.erfc(band / se / math.sqrt(2))  # P(|N(0, se)| > band)
    got = p_leave(se, band, window=50, span=1, runs=20_000, seed=1)
    assert abs(got - want) < 4 * math.sqrt(want * (1 - want) / 20_000)


def test_more_window_ends_leave_more_often_and_the_extremes_are_certain():
    short = p_leave(0.022, 0.05, window=200, span=200, runs=2000, seed=2)
    long = p_leave(0.022, 0.05, window=200, span=2000, runs=2000, seed=2)
    assert short < long
    assert p_leave(0.022, 0.5, window=200, span=500, runs=200, seed=3) == 0.0
    assert p_leave(0.022, 0.001, window=200, span=500, runs=200, seed=3) == 1.0
