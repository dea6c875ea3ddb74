"""Rows the store accepts: the checks of a replayed spill row, and the outcome-value checks under their store names.

The value checks themselves are :mod:`stopbandit.validation`'s; the names
here are what the store and the writer call them.
"""

from __future__ import annotations


from stopbandit import validation
from stopbandit.errors import InputError


check_em = validation.em
check_tokens = validation.tokens
check_latency = validation.latency
check_key = validation.key


MAX_TOKENS = 2**31 - 1  # outcomes.tokens is a 32-bit INTEGER on PostgreSQL
EXPERIMENTS = ("champion", "challenger", "holdout")
OUTCOME_STATUSES = ("ok", "defaulted", "late")


def _text(v: object, field: str, max_len: int, *, optional: bool = False) -> None:
    if v is None and optional:
        return
    validation.short_text(v, field, max_len)


def check_decision_row(row: dict) -> None:
    """InputError naming the field if ``row`` is not a decision the serving path could have logged.

    What a replayed spill row must satisfy before it is stored: the types and
    ranges of the columns, and a logged arm that is one of its own probability
    vector's arms with that probability as its propensity.
    """
    check_key(row.get("request_key"))
    validation.number(row.get("ts"), "ts", low=0.0, high=1e11, error=InputError)
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
        validation.number(p, f"probabilities[{name!r}]", low=0.0, high=1.0, error=InputError)
    if row["arm"] not in probs:
        raise InputError(f"arm {row['arm']!r} is not one of the decision's arms {sorted(probs)[:8]}")
    prop = validation.number(row.get("propensity"), "propensity", low=0.0, high=1.0, low_open=True,
                             error=InputError)
    if abs(prop - float(probs[row["arm"]])) > 1e-9:
        raise InputError(f"propensity {prop!r} is not the logged arm's probability {probs[row['arm']]!r}")
    validation.number(row.get("lam"), "lam", low=0.0, error=InputError)
    validation.number(row.get("token_scale"), "token_scale", low=0.0, low_open=True, error=InputError)
    _text(row.get("policy_version"), "policy_version", 64)
    if row.get("experiment", "champion") not in EXPERIMENTS:
        raise InputError(f"experiment must be one of {EXPERIMENTS}, got {row.get('experiment')!r:.80}")


def check_outcome_row(row: dict) -> None:
    """InputError naming the field if ``row`` is not an outcome the serving path could have logged."""
    check_key(row.get("decision_key"), field="decision_key")
    validation.number(row.get("ts"), "ts", low=0.0, high=1e11, error=InputError)
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
