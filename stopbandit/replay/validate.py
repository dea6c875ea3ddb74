"""Validation of outcome values, shared by the store, the Selector and importers."""

from __future__ import annotations

import math
from numbers import Integral, Real

from stopbandit.errors import InputError


def check_em(em: object, *, field: str = "em") -> float:
    """EM must be a finite number in [0, 1]."""
    if type(em) is float or type(em) is int:  # the common case, without the slow ABC check below
        if 0.0 <= em <= 1.0:  # also false for NaN
            return float(em)
        raise InputError(f"{field} must be a finite number in [0, 1], got {em!r}")
    if isinstance(em, bool) or not isinstance(em, Real):
        raise InputError(f"{field} must be a number in [0, 1], got {em!r}")
    value = float(em)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise InputError(f"{field} must be a finite number in [0, 1], got {em!r}")
    return value


def check_tokens(tokens: object, *, field: str = "tokens") -> int:
    """Token counts must be non-negative integers (integral floats are accepted)."""
    if type(tokens) is int:  # the common case, without the slow ABC checks below
        if tokens < 0:
            raise InputError(f"{field} must be >= 0, got {tokens!r}")
        return tokens
    if isinstance(tokens, bool):
        raise InputError(f"{field} must be a non-negative integer, got {tokens!r}")
    if isinstance(tokens, Real) and not isinstance(tokens, Integral):
        f = float(tokens)
        if not math.isfinite(f) or f != int(f):
            raise InputError(f"{field} must be a non-negative integer, got {tokens!r}")
        tokens = int(f)
    if not isinstance(tokens, Integral):
        raise InputError(f"{field} must be a non-negative integer, got {tokens!r}")
    if tokens < 0:
        raise InputError(f"{field} must be >= 0, got {tokens!r}")
    return int(tokens)


def check_latency(latency_ms: object) -> float | None:
    if latency_ms is None:
        return None
    if isinstance(latency_ms, bool) or not isinstance(latency_ms, Real):
        raise InputError(f"latency_ms must be a non-negative number or None, got {latency_ms!r}")
    value = float(latency_ms)
    if not math.isfinite(value) or value < 0:
        raise InputError(f"latency_ms must be a finite number >= 0, got {latency_ms!r}")
    return value


def check_key(key: object, *, field: str = "request_id") -> str:
    if not isinstance(key, str) or not key or len(key) > 128:
        raise InputError(f"{field} must be a non-empty string of at most 128 characters, got {key!r}")
    return key


__all__ = ["check_em", "check_key", "check_latency", "check_tokens"]
