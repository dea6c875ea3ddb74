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
