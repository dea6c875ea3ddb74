"""The one validation module: every message names the field, what was expected and what was received."""

from __future__ import annotations

import doctest
import math

import pytest

from stopbandit import validation
from stopbandit.errors import ConfigError, InputError


@pytest.mark.parametrize("call, error, message", [
    (lambda: validation.number("x", "a.b"), ConfigError, r"a\.b must be a finite number, got 'x'"),
    (lambda: validation.number(True, "a"), ConfigError, r"a must be a finite number, got True"),
    (lambda: validation.number(math.nan, "a"), ConfigError, r"a must be a finite number, got nan"),
    (lambda: validation.number(-1, "a", low=0), ConfigError, r"a must be >= 0, got -1"),
    (lambda: validation.number(0, "a", low=0, low_open=True), ConfigError, r"a must be > 0, got 0"),
    (lambda: validation.number(2, "a", high=1), ConfigError, r"a must be <= 1, got 2"),
    (lambda: validation.number(1, "a", low=0, high=1, high_open=True), ConfigError, r"a must be in \[0, 1\), got 1"),
    (lambda: validation.number(0, "a", low=0, high=1, low_open=True, error=InputError), InputError,
     r"a must be in \(0, 1\], got 0"),
    (lambda: validation.integer(1.0, "n"), ConfigError, r"n must be an integer, got 1\.0"),
    (lambda: validation.integer(1, "n", low=2), ConfigError, r"n must be >= 2, got 1"),
    (lambda: validation.positive_ints("s.", a=1, b=0), ConfigError, r"s\.b must be a positive integer, got 0"),
    (lambda: validation.text("a\x00b", "prompt"), InputError, r"prompt must not contain NUL characters"),
    (lambda: validation.text("a\ud800", "prompt"), InputError, r"prompt is not valid Unicode \(lone surrogate at position 1\)"),
    (lambda: validation.key("", field="request_id"), InputError,
     r"request_id must be a non-empty string of at most 128 characters, got ''"),
    (lambda: validation.identifier("x" * 129, "decision_id"), InputError, r"decision_id must be a non-empty string"),
    (lambda: validation.em(1.5), InputError, r"em must be a finite number in \[0, 1\], got 1\.5"),
    (lambda: validation.em("1"), InputError, r"em must be a number in \[0, 1\], got '1'"),
    (lambda: validation.tokens(-3), InputError, r"tokens must be >= 0, got -3"),
    (lambda: validation.tokens(2.5), InputError, r"tokens must be a non-negative integer, got 2\.5"),
    (lambda: validation.latency(-1.0), InputError, r"latency_ms must be a finite number >= 0, got -1\.0"),
])
def test_invalid_values_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_valid_values_pass_through_converted():
    assert validation.number(3, "a", low=0) == 3.0 and isinstance(validation.number(3, "a"), float)
    assert validation.tokens(12.0) == 12 and validation.em(1) == 1.0 and validation.latency(None) is None
    assert validation.identifier("r-17", "request_id") == "r-17"
    assert doctest.testmod(validation).failed == 0


@pytest.mark.parametrize("call, error, message", [
    (lambda: validation.within(90, "store.decision_wait", low=0, high=60, expected="{range} seconds"), ConfigError,
     r"store\.decision_wait must be in \[0, 60\] seconds, got 90"),
    (lambda: validation.within("5", "store.timeout", low=0, high=60, low_open=True, expected="{range} seconds"),
     ConfigError, r"store\.timeout must be in \(0, 60\] seconds, got '5'"),
    (lambda: validation.within(2.0, "max_pending", low=1, high=10_000_000, integral=True), ConfigError,
     r"max_pending must be an integer in \[1, 10000000\], got 2\.0"),
    (lambda: validation.within(True, "seed", low=0, integral=True, expected="a non-negative integer"), ConfigError,
     r"seed must be a non-negative integer, got True"),
    (lambda: validation.within(math.inf, "token_budget", low=0, high=math.inf, wrong_type="a number"), ConfigError,
     r"token_budget must be a finite number >= 0, got inf"),
    (lambda: validation.within("high", "em_floor", low=0, high=1, wrong_type="a number"), ConfigError,
     r"em_floor must be a number, got 'high'"),
    (lambda: validation.within(10**400, "x"), ConfigError, r"x must be a finite number, got 1000"),
    (lambda: validation.alpha(1.0), ConfigError, r"alpha must be a finite number in \(0, 1\), got 1\.0"),
    (lambda: validation.number_text("abc", "column 'em'"), InputError, r"column 'em' must be a number, got 'abc'"),
    (lambda: validation.number_text("nan", "column 'em'"), InputError, r"column 'em' must be finite, got 'nan'"),
])
def test_bounded_numbers_name_field_expected_and_received(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_within_keeps_the_kinds_it_is_given():
    import numpy as np

    assert validation.within(10**30, "seed", low=0, integral=True) == 10**30  # any size of int, compared exactly
    assert validation.within(np.float32(0.5), "alpha", low=0, high=1, numpy=True) == 0.5
    with pytest.raises(ConfigError, match="must be a finite number"):
        validation.within(np.int64(3), "x")  # numpy scalars only where asked for
    assert validation.number_text(" 2.5 ", "column 'em'") == 2.5
