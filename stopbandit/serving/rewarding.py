"""The Selector's reward path: validate a reward, run the ledger's step, learn, log; close due reward windows.

Part of :class:`stopbandit.serving.selector.Selector` (its public
``reward`` enters here): the reward ledger
(:class:`~stopbandit.serving.ledger.RewardLedger`) says what to learn and
what to log, this mixin does it outside the ledger's lock -- the policy's
learn under the slot's reference, the conservative budget, the domain
prior, and the rows handed to the writer. A decision no longer in memory is
settled against the store. The methods run on the Selector's state;
:class:`~stopbandit.serving.selector.Selector` is the only class that
mixes them in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from stopbandit import validation
from stopbandit.bandit.delayed import MAX_TOKENS
from stopbandit.bandit.policy import observation_weights
from stopbandit.bandit.trace import ProbeTrace, answer_key, revealed_outcomes
from stopbandit.bandit.vw import shared_line
from stopbandit.errors import ConflictError, InputError, StoreError, UnknownDecisionError
from stopbandit.replay.store import outcome_row
from stopbandit.serving.ledger import Held, Late, Learn, LookUp, Pending, Repeat, Settle

log = logging.getLogger("stopbandit.selector")


class RewardPath:
    """Rewards into learning and rows (mixed into the Selector)."""

    def _reward(self, decision_id: str, em: float, tokens: int, latency_ms: float | None,
                trace: ProbeTrace | None, reference: str | None) -> None:
        decision_id = validation.identifier(decision_id, "decision_id")
        if self.writer.is_conflict(decision_id):
            raise ConflictError(f"decision {decision_id!r} was not stored: its request_id is stored for another "
                                "process's decision (request ids must be unique across processes and restarts)")
        if trace is not None and not isinstance(trace, ProbeTrace):
            raise InputError(f"trace must be a ProbeTrace or None, got {type(trace).__name__}")
        if reference is not None and not isinstance(reference, str):
            raise InputError(f"reference must be a string or None, got {type(reference).__name__}")
        row = outcome_row(
            decision_id, em, tokens, latency_ms,
            trace=trace.hashed().to_json() if trace is not None else None,
            reference_key=answer_key(reference) if reference is not None else None,
        )
        if row["tokens"] > MAX_TOKENS:
            raise InputError(f"tokens must be at most {MAX_TOKENS}, got {tokens!r}")
        step = self._ledger.reward(decision_id, row, trace, reference)
        if isinstance(step, LookUp):
            found = self._from_store(decision_id, row, trace, reference)
            if found is None:
                return
            done = self._ledger.claim(decision_id, row)
            step = Repeat(done) if done is not None else Learn(found, row, trace, reference)
        self._apply(decision_id, row, step)

    def _apply(self, key: str, row: dict[str, Any], step: Learn | Settle | Late | Repeat | Held) -> None:
        """Do what the ledger says (outside its lock)."""
        if isinstance(step, Learn):
            self._ledger.count_reward()
            self._learn(step.pending, step.row, step.trace, step.reference, key)
            self._log("o", step.row)  # a fresh outcome_row dict, not kept by the caller: no copy needed
        elif isinstance(step, Settle):
            self._learn(step.pending, step.learn, step.trace, step.reference, key)
            self._log("o", dict(step.log))
        elif isinstance(step, Late):
            self._log("l", step.row)
        elif isinstance(step, Repeat):
            self._ledger.repeat(key, step.done, row)

    def _learn(self, pending: Pending, row: Mapping[str, Any], trace: ProbeTrace | None,
               reference: str | None, key: str | None = None) -> None:
        revealed: dict[int, tuple[float, int]] | None = None
        live = self._slot.acquire()
        try:
            policy = live.policy
            if policy.exploration.watches_traces:
                self._trace_share.observe(trace is not None and reference is not None)
            if trace is not None and reference is not None:
                stop = self.stop_learner
                learned = None if stop is None or pending.context is None else stop.inputs(pending.context, pending.lam)
                revealed = {k: (em, tok) for k, (em, tok) in
                            revealed_outcomes(trace, self.arms.arms, reference, learned).items() if em is not None}
                revealed[pending.arm] = (row["em"], row["tokens"])
                weights = None
                learning = self.config.learning
                if learning.weighted and pending.probs is not None:  # [learning] revealed_weighting
                    weights = observation_weights(pending.probs, self._reveals, pending.arm, revealed,
                                                  learning.revealed_weight_clip)
                policy.learn_revealed(pending.shared, revealed, pending.arm, pending.prob, pending.lam,
                                      weights=weights)
            else:
                policy.learn(pending.shared, pending.arm, row["em"], row["tokens"], pending.prob, pending.lam)
        finally:
            self._slot.release(live)
        if self.stop_learner is not None and self._learns:
            self.stop_learner.observe(trace, reference, pending.context)
        if self._budget is not None and key is not None:
            self._settle_budget(key, pending, row, revealed)
        self.extractor.observe(pending.domain, row["em"])
        self._ckpt_outcomes += 1
        self._ledger.observe(pending.arm, row["em"], row["tokens"], row.get("status", "ok"))

    def _settle_budget(self, key: str, pending: Pending, row: Mapping[str, Any],
                       revealed: Mapping[int, tuple[float, int]] | None) -> None:
        """Book a settled outcome into the conservative budget (the baseline's too when a trace revealed it)."""
        budget = self._budget
        assert budget is not None
        scale, lam = self.config.token_scale, pending.lam
        served = float(row["em"]) - lam * float(row["tokens"]) / scale
        known = None if revealed is None else {
            a: float(em) - lam * float(tok) / scale for a, (em, tok) in revealed.items()}
        known_em = None if revealed is None else {a: float(em) for a, (em, _) in revealed.items()}
        budget.settle(key, pending.arm, served, float(row["em"]), known, known_em)

    def _decision_wait(self) -> float:
        """How long a reward waits for a decision that is not in the store yet (logged by another replica and
        not flushed): ``store.decision_wait``, and never past the reward window of a decision made now."""
        wait = self.config.store.decision_wait
        return wait if self._window is None else min(wait, self._window.seconds)

    def _from_store(self, key: str, row: dict[str, Any], trace: ProbeTrace | None,
                    reference: str | None) -> Pending | None:
        """A decision that is no longer (or never was) in memory: settle the reward against the store.

        Returns the decision to learn from (and log ``row`` as ``ok``), or None when nothing is left to do.
        """
        self.writer.flush(5.0, ask_store=False)  # the lookup below asks the store, under its own deadline
        try:
            existing = self.store.get_outcome(key)
            d = self.store.wait_for_decision(key, self._decision_wait()) if existing is None else None
        except StoreError as exc:
            self.record_fault(exc)
            raise StoreError(f"cannot check decision {key!r}: the store is unavailable and it is not in memory") from exc
        late_row = {**row, "status": "late"}
        if existing is not None:
            status = existing.get("status") or "ok"
            if status == "defaulted":  # its window closed with a default: this reward is late
                self._ledger.record_late(key, row)
                self._log("l", late_row)
                return None
            self._ledger.repeat(key, (existing["em"], existing["tokens"], status), row)
            return None
        if d is None:
            raise UnknownDecisionError(f"unknown decision id {key!r}: no such decision was logged (or it did not "
                                       f"reach the store within store.decision_wait = {self._decision_wait():g} s)")
        logged = d.get("probabilities") or {}
        pending = Pending(shared_line(d["features"]), d["arm_index"], d["propensity"], d["lam"], d["domain"],
                          probs=[float(logged.get(name, 0.0)) for name in self._arm_names],
                          context=None if self.stop_learner is None else self.stop_learner.context(d["features"]))
        window = self._window
        if window is None:
            return pending
        left = d["ts"] + window.seconds - time.time()
        if left <= 0:  # closed long ago, and nobody recorded a default (evicted, or its process is gone)
            self._ledger.record_late(key, row)
            self._log("o", late_row)
            return None
        if window.aggregation == "earliest":
            return pending
        if self._ledger.hold(key, pending, row, trace, reference, left):
            self._wake.set()
        return None

    # -- reward windows ---------------------------------------------------------------
    def _reap_once(self, force: bool = False) -> float | None:
        """Close every window that is due (all of them with ``force``); returns the next deadline."""
        while True:
            batch, nxt, more = self._ledger.due(force)
            for settled in batch:
                try:
                    self._apply(str(settled.log.get("decision_key")), settled.log, settled)
                except Exception as exc:  # noqa: BLE001 - the reaper must never die
                    log.exception("closing the reward window of %r failed", settled.log.get("decision_key"))
                    self.record_fault(exc)
            if not more:
                return nxt

    def _reap_loop(self) -> None:
        while not self._stop.is_set():
            nxt = self._reap_once()
            wait = 0.25 if nxt is None else min(max(nxt - time.monotonic(), 0.002), 0.25)
            self._wake.wait(wait)
            self._wake.clear()

    def _log(self, kind: str, row: dict[str, Any]) -> str | None:
        """Hand a row to the writer: queued (None), or written before returning with ``store.durable``.

        Durable mode returns where the row went (``stored``, ``spilled``, or ``held`` in memory only).
        The row is the writer's from here on: callers build a fresh dict per call and never change it after.
        """
        return self._log_row(kind, row)
