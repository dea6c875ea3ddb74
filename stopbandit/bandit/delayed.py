"""Rewards that arrive late, or never: the reward wait window.

Semantics follow the production contextual-bandit services (Azure
Personalizer's *reward wait time* and *default reward*, and the Decision
Service's join window, from which Personalizer grew): a deployment sets a
window, counted from the moment a decision is made.

* Rewards that arrive **inside the window** are aggregated:

  - ``earliest`` — the first reward is the outcome. Since no later reward can
    change it, the Selector settles (learns and logs) it at once; later
    rewards for the decision are discarded (counted in ``Health.discarded``).
  - ``sum`` — every reward call adds up until the window closes, then the
    total is settled: EM is summed and **clipped to [0, 1] when stored** (the
    store and the learner take EM in [0, 1]); tokens are summed (capped at
    2**31 − 1, the column's range); latency is the largest reported. A probe
    trace is kept only when exactly one reward arrived (a sum of runs has no
    single trace). There is no idempotency key: with ``sum`` a retried call
    counts twice, as in Personalizer.

* When the window **closes without a reward**, a default reward is recorded
  with status ``defaulted`` and learned from, as Personalizer does:
  ``default_em`` (a number in [0, 1], or ``"arm_mean"``) and
  ``default_tokens`` (a non-negative integer, or ``"arm_mean"``).
  ``"arm_mean"`` is the running mean of the rewards this Selector has learned
  for that arm with status ``ok`` (0 before the arm's first one).

* A reward **after the window** is a late reward: it is not learned from (the
  default already was). The outcome row of the decision — there is at most one
  per decision — is replaced by the late reward's values with status ``late``.
  So, per row of ``outcomes`` (and per :class:`stopbandit.replay.store.Event`,
  whose ``status`` carries it):

  ==========  ===================================================  ============
  status      em / tokens in the row                               learned from
  ==========  ===================================================  ============
  ok          the (aggregated) reward received inside the window   the row
  defaulted   the default reward                                   the row
  late        the reward that came after the window                the default,
                                                                   not the row
  ==========  ===================================================  ============

  A reward after the window for a decision that already has an ``ok`` outcome
  is discarded (counted), never stored.

Learners and off-policy evaluation must treat statuses explicitly: the replay
CLI and OPE exclude non-``ok`` rows by default (a ``defaulted`` row is not an
observed outcome, and a ``late`` row's outcome was not what the online
learner saw).

Operational notes: windows live in the serving process's memory, bounded by
``max_pending``; when that many windows are open the oldest is closed early
(with its default, counted in ``Health.evicted``). A window open in a process
that crashes is never defaulted; a reward for it arriving later is stored as
``late``. Rewards should reach the process that made the decision (sticky
routing): a reward handled by another process is checked against the store,
which only knows closed windows.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from stopbandit import validation
from stopbandit.errors import ConfigError

AGGREGATIONS = ("earliest", "sum")
ARM_MEAN = "arm_mean"
MAX_WINDOW_S = 7 * 24 * 3600.0
MAX_TOKENS = 2**31 - 1  # outcomes.tokens is a 32-bit INTEGER on PostgreSQL


def check_window(value: object) -> float | None:
    """``reward_window_s``: None (rewards settle immediately) or seconds in (0, 7 days]."""
    if value is None:
        return None
    return validation.within(value, "reward_window_s", low=0, low_open=True, high=MAX_WINDOW_S, numpy=True,
                             expected="a number of seconds {range} or unset")


def check_aggregation(value: object) -> str:
    if not isinstance(value, str) or value not in AGGREGATIONS:
        raise ConfigError(f"reward_aggregation must be one of {AGGREGATIONS}, got {value!r}")
    return value


def check_default_em(value: object) -> float | str:
    if isinstance(value, str) and value == ARM_MEAN:
        return ARM_MEAN
    return validation.within(value, "default_em", low=0, high=1, numpy=True,
                             expected=f"a number {{range}} or {ARM_MEAN!r}")


def check_default_tokens(value: object) -> int | str:
    if isinstance(value, str) and value == ARM_MEAN:
        return ARM_MEAN
    if isinstance(value, Real) and not isinstance(value, (bool, Integral)) and math.isfinite(float(value)) \
            and float(value) == int(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, Integral) or not 0 <= value <= MAX_TOKENS:
        raise ConfigError(f"default_tokens must be an integer in [0, {MAX_TOKENS}] or {ARM_MEAN!r}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class RewardWindow:
    """How long to wait for a reward, how to combine several, and what to record when none came."""

    seconds: float
    aggregation: str = "earliest"
    default_em: float | str = 0.0
    default_tokens: int | str = ARM_MEAN

    def __post_init__(self) -> None:
        seconds = check_window(self.seconds)
        if seconds is None:
            raise ConfigError("reward_window_s must be set for a RewardWindow")
        object.__setattr__(self, "seconds", seconds)
        object.__setattr__(self, "aggregation", check_aggregation(self.aggregation))
        object.__setattr__(self, "default_em", check_default_em(self.default_em))
        object.__setattr__(self, "default_tokens", check_default_tokens(self.default_tokens))


class ArmMeans:
    """Running mean EM and tokens per arm of the ``ok`` rewards learned; thread-safe, O(arms) memory."""

    def __init__(self, n_arms: int) -> None:
        self._lock = threading.Lock()
        self._n = [0] * n_arms
        self._em = [0.0] * n_arms
        self._tokens = [0.0] * n_arms

    def observe(self, arm: int, em: float, tokens: int) -> None:
        with self._lock:
            self._n[arm] += 1
            n = self._n[arm]
            self._em[arm] += (em - self._em[arm]) / n
            self._tokens[arm] += (tokens - self._tokens[arm]) / n

    def mean(self, arm: int) -> tuple[float, float, int]:
        """(mean EM, mean tokens, count) of the arm; (0, 0, 0) before its first reward."""
        with self._lock:
            return self._em[arm], self._tokens[arm], self._n[arm]


def default_reward(window: RewardWindow, means: ArmMeans, arm: int) -> tuple[float, int]:
    """(em, tokens) to record for a decision whose window closed without a reward."""
    mean_em, mean_tokens, _ = means.mean(arm)
    em = mean_em if window.default_em == ARM_MEAN else float(window.default_em)
    tokens = round(mean_tokens) if window.default_tokens == ARM_MEAN else int(window.default_tokens)
    return min(max(em, 0.0), 1.0), min(max(tokens, 0), MAX_TOKENS)


class Aggregate:
    """Rewards received so far inside one ``sum`` window."""

    __slots__ = ("em", "tokens", "latency_ms", "n", "ts", "trace", "trace_obj", "reference_key", "reference")

    def __init__(self, row: Mapping[str, Any], trace_obj: Any = None, reference: str | None = None) -> None:
        self.em = float(row["em"])
        self.tokens = int(row["tokens"])
        self.latency_ms = row.get("latency_ms")
        self.n = 1
        self.ts = float(row["ts"])
        self.trace, self.trace_obj = row.get("trace"), trace_obj
        self.reference_key, self.reference = row.get("reference_key"), reference

    def add(self, row: Mapping[str, Any]) -> None:
        self.em += float(row["em"])
        self.tokens = min(self.tokens + int(row["tokens"]), MAX_TOKENS)
        lat = row.get("latency_ms")
        if lat is not None:
            self.latency_ms = lat if self.latency_ms is None else max(self.latency_ms, lat)
        self.n += 1
        self.ts = max(self.ts, float(row["ts"]))
        self.trace = self.trace_obj = self.reference_key = self.reference = None

    def row(self, key: str) -> dict[str, Any]:
        """The outcome row to store: status ``ok``, EM clipped to [0, 1]."""
        return {
            "decision_key": key, "ts": self.ts, "em": min(max(self.em, 0.0), 1.0), "tokens": self.tokens,
            "latency_ms": self.latency_ms, "trace": self.trace, "reference_key": self.reference_key, "status": "ok",
        }


__all__ = [
    "AGGREGATIONS", "ARM_MEAN", "MAX_TOKENS", "Aggregate", "ArmMeans", "RewardWindow", "check_aggregation",
    "check_default_em", "check_default_tokens", "check_window", "default_reward",
]
