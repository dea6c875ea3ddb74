"""The reward ledger: which decisions wait for a reward, which are settled, and what each reward means.

The ledger owns the bookkeeping of rewards and nothing else: it never learns,
never writes and never sleeps. Each call takes the ledger's lock, updates the
maps and counters, and returns a typed step that says what the caller has to
do next -- learn from an outcome and log it (:class:`Learn`, :class:`Settle`),
log a late reward (:class:`Late`), compare with a settled outcome
(:class:`Repeat`), look the decision up in the store (:class:`LookUp`), or
nothing yet (:class:`Held`). The Selector performs the step outside the lock.

Reward windows (``reward_window_s``) follow :mod:`stopbandit.bandit.delayed`:
rewards inside a window are aggregated (``sum``) or the first one wins
(``earliest``); a window that closes without a reward settles to the default
reward, learned and stored as ``defaulted``; a reward after the close is
stored as ``late`` and not learned. Memory is bounded: at most
``max_pending`` decisions wait, and as many settled ids are remembered for
idempotency; a decision pushed out early has its window closed by the reaper.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stopbandit.bandit.delayed import Aggregate, ArmMeans, RewardWindow, default_reward
from stopbandit.bandit.trace import ProbeTrace
from stopbandit.errors import InputError
from stopbandit.replay.store import check_same_outcome

REAP_BATCH = 1000
"""Windows closed per pass of the reaper before it lets the lock go."""


@dataclass(slots=True)
class Pending:
    """A decision waiting for its reward: what the policy learns it with."""

    shared: str
    arm: int
    prob: float
    lam: float
    domain: str | None
    deadline: float = math.inf  # time.monotonic() at which the reward window closes
    agg: Aggregate | None = None  # rewards so far (reward_aggregation = "sum")
    probs: Sequence[float] | None = None  # the whole probability vector (arm order) that drew ``arm``
    context: Any = None  # the learned stop rule's context row of the request (when the Selector trains one)


@dataclass(frozen=True, slots=True)
class Learn:
    """Learn from ``row`` for ``pending`` and log ``row`` as the outcome (status ok)."""

    pending: Pending
    row: dict[str, Any]
    trace: ProbeTrace | None
    reference: str | None


@dataclass(frozen=True, slots=True)
class Settle:
    """A closed window: learn from ``learn`` and log ``log`` (they differ for a late reward that closed it)."""

    pending: Pending
    learn: dict[str, Any]
    log: dict[str, Any]
    trace: ProbeTrace | None = None
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class Late:
    """A reward after its window closed with the default: log ``row`` (status late), learn nothing."""

    row: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Repeat:
    """A reward for a settled decision: ``done`` = (em, tokens, status) of the settled outcome."""

    done: tuple[float, int, str]


@dataclass(frozen=True, slots=True)
class LookUp:
    """The decision is not in memory: ask the store."""


@dataclass(frozen=True, slots=True)
class Held:
    """Aggregated into an open window: nothing to do until it closes."""


Step = Learn | Settle | Late | Repeat | LookUp | Held


class RewardLedger:
    """Pending and settled decisions, the reward counters and the window rule. Thread-safe."""

    def __init__(self, window: RewardWindow | None, max_pending: int, n_arms: int) -> None:
        self.window = window
        self.max_pending = max_pending
        self.means = ArmMeans(n_arms)
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self._rewarded: OrderedDict[str, tuple[float, int, str]] = OrderedDict()  # id -> (em, tokens, status)
        self._overflow: list[tuple[str, Pending]] = []  # windows evicted by max_pending, for the reaper
        self._lock = threading.Lock()
        self.decisions = self.rewards = 0
        self.defaulted = self.late = self.discarded = self.evicted = 0

    # -- decisions -------------------------------------------------------------------
    def add(self, key: str, pending: Pending) -> bool:
        """Record a decision; True when it pushed an open window out (the reaper must close it)."""
        with self._lock:
            if key in self._pending or key in self._rewarded:
                raise InputError(f"request_id {key!r} was already used for a decision; ids must be unique")
            self._pending[key] = pending
            evicted = None
            if len(self._pending) > self.max_pending:
                evicted = self._pending.popitem(last=False)
                self.evicted += 1
                if self.window is not None:
                    self._overflow.append(evicted)
            self.decisions += 1
        return evicted is not None and self.window is not None

    # -- rewards ---------------------------------------------------------------------
    def reward(self, key: str, row: dict[str, Any], trace: ProbeTrace | None, reference: str | None) -> Step:
        """What a validated reward ``row`` for ``key`` means now."""
        window = self.window
        if window is None:
            with self._lock:
                done = self._rewarded.get(key)
                pending = self._pending.pop(key, None) if done is None else None
                if pending is not None:
                    self._remember(key, row["em"], row["tokens"], "ok")
            if done is not None:
                return Repeat(done)
            return LookUp() if pending is None else Learn(pending, row, trace, reference)
        now = time.monotonic()
        with self._lock:
            done = self._rewarded.get(key)
            if done is not None:
                if done[2] != "defaulted":
                    return Repeat(done)
                self._remember(key, row["em"], row["tokens"], "late")  # its window closed with the default
                self.late += 1
                return Late({**row, "status": "late"})
            pending = self._pending.get(key)
            if pending is None:
                return LookUp()
            if now >= pending.deadline:  # closed, but the reaper has not got to it yet
                del self._pending[key]
                return self._settle(key, pending, {**row, "status": "late"})
            if window.aggregation == "earliest":
                del self._pending[key]
                self._remember(key, row["em"], row["tokens"], "ok")
                return Learn(pending, row, trace, reference)
            if pending.agg is None:
                pending.agg = Aggregate(row, trace, reference)
            else:
                pending.agg.add(row)
            return Held()

    def claim(self, key: str, row: Mapping[str, Any]) -> tuple[float, int, str] | None:
        """Settle ``key`` with ``row`` unless another thread did first; returns that settlement if so."""
        with self._lock:
            done = self._rewarded.get(key)
            if done is None:
                self._remember(key, row["em"], row["tokens"], "ok")
            return done

    def repeat(self, key: str, done: tuple[float, int, str], row: Mapping[str, Any]) -> None:
        """A reward for a settled decision: nothing if equal; else a conflict (no window) or a discard."""
        em, tokens, _ = done
        if em == row["em"] and tokens == row["tokens"]:
            return
        if self.window is None:
            check_same_outcome(key, {"em": em, "tokens": tokens}, row)
        with self._lock:
            self.discarded += 1

    def count_reward(self) -> None:
        with self._lock:
            self.rewards += 1

    def record_late(self, key: str, row: Mapping[str, Any]) -> None:
        """A reward found late against the store (its window closed elsewhere)."""
        with self._lock:
            self._remember(key, row["em"], row["tokens"], "late")
            self.late += 1

    def hold(self, key: str, pending: Pending, row: dict[str, Any], trace: ProbeTrace | None,
             reference: str | None, left: float) -> bool:
        """Reopen the ``sum`` window of a decision found in the store, ``left`` seconds from its close.

        False when another reward for it got there first (then ``row`` joins that window, if open).
        """
        pending.deadline = time.monotonic() + left
        pending.agg = Aggregate(row, trace, reference)
        with self._lock:
            if key in self._pending or key in self._rewarded:
                other = self._pending.get(key)
                if other is not None and other.agg is not None:
                    other.agg.add(row)
                return False
            self._pending[key] = pending
            if len(self._pending) > self.max_pending:
                self._overflow.append(self._pending.popitem(last=False))
                self.evicted += 1
        return True

    def observe(self, arm: int, em: float, tokens: int, status: str) -> None:
        """An outcome learned: the per-arm means that ``default_em = "arm_mean"`` reads."""
        if status == "ok":
            self.means.observe(arm, em, tokens)

    # -- windows -----------------------------------------------------------------------
    def due(self, force: bool = False) -> tuple[list[Settle], float | None, bool]:
        """Close up to :data:`REAP_BATCH` windows that are due (all with ``force``).

        Returns (the settlements, the next deadline, whether more may be due).
        """
        window = self.window
        batch: list[Settle] = []
        if window is None:
            return batch, None, False
        with self._lock:
            now = time.monotonic()
            while self._overflow and len(batch) < REAP_BATCH:
                key, p = self._overflow.pop()
                if key not in self._rewarded:
                    batch.append(self._settle(key, p))
            while self._pending and len(batch) < REAP_BATCH:
                key, p = next(iter(self._pending.items()))
                if not force and p.deadline > now:
                    break
                del self._pending[key]
                batch.append(self._settle(key, p))
            nxt = next(iter(self._pending.values())).deadline if self._pending else None
        return batch, nxt, len(batch) >= REAP_BATCH

    def _settle(self, key: str, pending: Pending, late_row: dict[str, Any] | None = None) -> Settle:
        """Close one window (lock held; the caller removed it from the pending map).

        A window with rewards (``sum``) settles to their aggregate, status ok; an
        empty one to the default, which is learned from and stored as
        ``defaulted`` -- or, when the reward that closes it came too late
        (``late_row``), stored as ``late`` with that reward's values.
        """
        window = self.window  # only a windowed ledger has windows to settle
        if pending.agg is not None:
            row = pending.agg.row(key)
            self._remember(key, row["em"], row["tokens"], "ok")
            self.rewards += 1
            if late_row is not None:
                self.discarded += 1
            return Settle(pending, row, row, pending.agg.trace_obj, pending.agg.reference)
        em, tokens = default_reward(window, self.means, pending.arm)  # type: ignore[arg-type]
        default = {"decision_key": key, "ts": time.time(), "em": em, "tokens": tokens, "latency_ms": None,
                   "trace": None, "reference_key": None, "status": "defaulted"}
        self.defaulted += 1
        if late_row is None:
            self._remember(key, em, tokens, "defaulted")
            return Settle(pending, default, default)
        self._remember(key, late_row["em"], late_row["tokens"], "late")
        self.late += 1
        return Settle(pending, default, late_row)

    def _remember(self, key: str, em: float, tokens: int, status: str) -> None:
        """Record a settled outcome (lock held); bounded like the pending map."""
        self._rewarded[key] = (em, tokens, status)
        self._rewarded.move_to_end(key)
        if len(self._rewarded) > self.max_pending:
            self._rewarded.popitem(last=False)

    def counts(self) -> dict[str, int]:
        """The counters :class:`~stopbandit.serving.decision.Health` reports."""
        with self._lock:
            return {"decisions": self.decisions, "rewards": self.rewards, "pending_rewards": len(self._pending),
                    "defaulted": self.defaulted, "late": self.late, "discarded": self.discarded,
                    "evicted": self.evicted}


__all__ = ["Held", "Late", "Learn", "LookUp", "Pending", "RewardLedger", "Repeat", "Settle", "Step"]
