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


MAX_TOKENS = 2**31 - 1  # outcomes.tokens is a 32-bit INTEGER on PostgreSQL
EXPERIMENTS = ("champion", "challenger", "holdout")
OUTCOME_STATUSES = ("ok", "defaulted", "late")


def _finite(v: object, field: str, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, Real):
        raise InputError(f"{field} must be a number, got {v!r}")
    f = float(v)
    if not math.isfinite(f) or f < lo or f > hi or (lo_open and f == lo):
        raise InputError(f"{field} must be a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {v!r}")
    return f


def _text(v: object, field: str, max_len: int, *, optional: bool = False) -> None:
    if v is None and optional:
        return
    if not isinstance(v, str) or not v or len(v) > max_len or "\x00" in v:
        raise InputError(f"{field} must be a non-empty string of at most {max_len} characters, got {v!r:.80}")


def check_decision_row(row: dict) -> None:
    """InputError naming the field if ``row`` is not a decision the serving path could have logged.

    What a replayed spill row must satisfy before it is stored: the types and
    ranges of the columns, and a logged arm that is one of its own probability
    vector's arms with that probability as its propensity.
    """
    check_key(row.get("request_key"))
    _finite(row.get("ts"), "ts", 0.0, 1e11)
    _text(row.get("domain"), "domain", 64, optional=True)
    if not isinstance(row.get("features"), dict):
        raise InputError(f"features must be an object, got {row.get('features')!r:.80}")
    _text(row.get("arm"), "arm", 64)
    idx = row.get("arm_index")
    if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
        raise InputError(f"arm_index must be an integer >= 0, got {idx!r}")
    probs = row.get("probabilities")
    if not isinstance(probs, dict) or not probs:
        raise InputError(f"probabilities must be a non-empty object, got {probs!r:.80}")
    for name, p in probs.items():
        _finite(p, f"probabilities[{name!r}]", 0.0, 1.0)
    if row["arm"] not in probs:
        raise InputError(f"arm {row['arm']!r} is not one of the decision's arms {sorted(probs)[:8]}")
    prop = _finite(row.get("propensity"), "propensity", 0.0, 1.0, lo_open=True)
    if abs(prop - float(probs[row["arm"]])) > 1e-9:
        raise InputError(f"propensity {prop!r} is not the logged arm's probability {probs[row['arm']]!r}")
    _finite(row.get("lam"), "lam", 0.0, math.inf)
    _finite(row.get("token_scale"), "token_scale", 0.0, math.inf, lo_open=True)
    _text(row.get("policy_version"), "policy_version", 64)
    if row.get("experiment", "champion") not in EXPERIMENTS:
        raise InputError(f"experiment must be one of {EXPERIMENTS}, got {row.get('experiment')!r:.80}")


def check_outcome_row(row: dict) -> None:
    """InputError naming the field if ``row`` is not an outcome the serving path could have logged."""
    check_key(row.get("decision_key"), field="decision_key")
    _finite(row.get("ts"), "ts", 0.0, 1e11)
    check_em(row.get("em"))
    if check_tokens(row.get("tokens")) > MAX_TOKENS:
        raise InputError(f"tokens must be at most {MAX_TOKENS}, got {row.get('tokens')!r}")
    check_latency(row.get("latency_ms"))
    if row.get("trace") is not None and not isinstance(row.get("trace"), dict):
        raise InputError(f"trace must be an object or null, got {row.get('trace')!r:.80}")
    _text(row.get("reference_key"), "reference_key", 32, optional=True)
    if row.get("status", "ok") not in OUTCOME_STATUSES:
        raise InputError(f"outcome status must be one of {OUTCOME_STATUSES}, got {row.get('status')!r:.80}")


def check_spilled(kind: str, row: dict) -> None:
    """Validate one spilled (kind, row) like a live one: InputError naming what is wrong."""
    if kind == "d":
        check_decision_row(row)
    else:
        check_outcome_row(row)


__all__ = ["check_decision_row", "check_em", "check_key", "check_latency", "check_outcome_row", "check_spilled",
           "check_tokens"]
