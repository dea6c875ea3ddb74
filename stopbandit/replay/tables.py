"""The replay store's tables and the columns of its rows: what a decision and an outcome are made of.

The tables come from the ORM models (:mod:`stopbandit.replay.models`, the
schema the migrations create); the field lists, defaults and identities
say which columns a written row carries, what an absent optional column
holds, and which columns make two rows with one request key the same row.
"""

from __future__ import annotations

from typing import Any

from stopbandit.replay.models import (
    DecisionRow,
    LambdaChangeRow,
    OutcomeRow,
    SnapshotRow,
    StoreArmRow,
    StoreIdentityRow,
)

DECISIONS = DecisionRow.__table__
OUTCOMES = OutcomeRow.__table__
SNAPSHOTS = SnapshotRow.__table__
LAMBDAS = LambdaChangeRow.__table__
IDENTITY = StoreIdentityRow.__table__
STORE_ARMS = StoreArmRow.__table__

DECISION_FIELDS = (
    "request_key", "ts", "domain", "features", "arm", "arm_index",
    "probabilities", "propensity", "lam", "token_scale", "policy_version", "experiment",
)
OUTCOME_FIELDS = ("decision_key", "ts", "em", "tokens", "latency_ms", "trace", "reference_key", "status")
# values of the optional fields when a row leaves them out (the columns' server defaults, or NULL)
DECISION_DEFAULTS: dict[str, Any] = {"domain": None, "experiment": "champion"}
OUTCOME_DEFAULTS: dict[str, Any] = {"latency_ms": None, "trace": None, "reference_key": None, "status": "ok"}
# what makes two decision rows with one request key the same decision (a replay) rather than two
DECISION_IDENTITY = ("ts", "arm", "arm_index", "propensity", "lam", "policy_version")
OUTCOME_IDENTITY = ("em", "tokens")
KEYS_PER_SELECT = 500
# largest multi-row VALUES insert on SQLite: few GIL releases per batch (so the writer keeps up with a busy
# serving thread), short GIL holds per statement (so a choose() waiting for the interpreter waits little)
MULTI_ROWS = 256
# bound parameters per statement SQLite accepts in every supported version (SQLITE_MAX_VARIABLE_NUMBER)
SQLITE_PARAMS = 999


__all__ = ["DECISIONS", "DECISION_DEFAULTS", "DECISION_FIELDS", "DECISION_IDENTITY", "IDENTITY", "KEYS_PER_SELECT",
           "LAMBDAS", "MULTI_ROWS", "OUTCOMES", "OUTCOME_DEFAULTS", "OUTCOME_FIELDS", "OUTCOME_IDENTITY",
           "SNAPSHOTS", "SQLITE_PARAMS", "STORE_ARMS"]
