"""Stop rules read exactly off the log's probe traces, and the learned rule trained from them.

A traced event's probe trace reveals where every stop rule at most as lenient
as the logged run stops, and the answer there (:mod:`stopbandit.bandit.trace`),
so the EM and the tokens of a stop rule on that event are read, not
estimated. :func:`exact_stop_rules` does that for every arm of the evaluation
(the learned rule's arms at the evaluation's λ) on the traced events of a
window, and reports each rule

* on the events where it is revealed (``revealed``, its own count), and
* on the events where *every* rule is revealed (``common``: the same events
  for all of them, so the rules compare with each other; usually the events a
  lenient arm served, or whose reasoning ended on its own).

Neither is an off-policy estimate: it is the exact outcome on those events,
with a normal 95 % interval over them. An event whose trace does not reach a
rule's stop is left out of that rule's figures, never guessed.

:func:`train_stop_rule` fits the learned rule (:mod:`stopbandit.bandit.learned_stop`)
on the traces of a window that reached the end of the reasoning, with graded
labels where the event stores its reference and agreement labels elsewhere.
Stored traces hold answer keys (sha1), which compare as the answers do.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stopbandit.bandit.arms import Arm, ArmSet
from stopbandit.bandit.learned_stop import CONTEXT_FEATURES, LearnedInputs, LearnedStop, stop_context
from stopbandit.bandit.stop_eval import evaluate, labelled_stop_data
from stopbandit.bandit.trace import ProbeTrace
from stopbandit.errors import InputError, StopbanditError
from stopbandit.replay.eventlog import EVENT_COLUMNS
from stopbandit.replay.jsoncodec import loads_many
from stopbandit.replay.options import ReplayOptions
from stopbandit.replay.store import ReplayStore

_AT = {name: i for i, name in enumerate(EVENT_COLUMNS)}
MAX_TRACED = 200_000
"""Traced events one exact evaluation or one training of the rule reads at most (the first of the window, in
log order): they are held in memory together, so the window's size never decides how much memory it takes."""
DEFAULT_LEARNED_ARM = Arm("learned", 1.01, 0, 0, 1.0)
"""The learned rule at aggressiveness 1, evaluated when the arms have no learned arm of their own."""


@dataclass(frozen=True, slots=True)
class TracedEvents:
    """Traced events of a window: parsed traces, reference keys (None: ungraded), context rows, logged arms."""

    traces: list[ProbeTrace]
    references: list[str | None]
    context: np.ndarray
    arms: list[str]
    malformed: int
    truncated: bool = False

    @property
    def n(self) -> int:
        return len(self.traces)


def _chunks(store: ReplayStore, options: ReplayOptions) -> Iterator[Sequence[tuple]]:
    return store.event_rows(chunk=options.chunk, since=options.since, until=options.until, after=0, upto=None)


def traced_events(store: ReplayStore, options: ReplayOptions | None = None, *,
                  limit: int | None = MAX_TRACED) -> TracedEvents:
    """The events of the window (``options``: statuses, since/until) that store a probe trace, in log order:
    the first ``limit`` of them (None: all)."""
    options = options if options is not None else ReplayOptions()
    traces: list[ProbeTrace] = []
    refs: list[str | None] = []
    feats: list[Any] = []
    arms: list[str] = []
    bad = 0
    for rows in _chunks(store, options):
        rows = [r for r in rows if r[_AT["status"]] in options.include and r[_AT["trace"]] not in (None, "null")]
        if not rows:
            continue
        decoded = loads_many([r[_AT["trace"]] for r in rows])
        fdicts = loads_many([r[_AT["features"]] for r in rows])
        for r, tr, f in zip(rows, decoded, fdicts):
            try:
                traces.append(ProbeTrace.from_json(tr))
            except (StopbanditError, TypeError, AttributeError):
                bad += 1
                continue
            refs.append(r[_AT["reference_key"]])
            feats.append(f)
            arms.append(r[_AT["arm"]])
        if limit is not None and len(traces) >= limit:
            break
    truncated = limit is not None and len(traces) >= limit
    if truncated:
        del traces[limit:], refs[limit:], feats[limit:], arms[limit:]
    ctx = np.stack([stop_context(f) for f in feats]) if feats else np.zeros((0, len(CONTEXT_FEATURES)))
    return TracedEvents(traces, refs, ctx, arms, bad, truncated)


def _summary(x: np.ndarray) -> dict[str, float]:
    n = int(x.size)
    if n == 0:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    m = float(x.mean())
    half = 1.96 * float(x.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    return {"mean": m, "ci_low": m - half, "ci_high": m + half}


@dataclass(frozen=True)
class ExactReport:
    """Per stop rule (arm), its exact EM, tokens and reward on the revealed events and on the common ones."""

    lam: float
    token_scale: float
    events: int
    graded: int
    common: int
    rows: list[dict[str, Any]]
    learned_rule: dict[str, Any] | None
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {"lam": self.lam, "token_scale": self.token_scale, "traced_events": self.events,
                "graded_events": self.graded, "common_events": self.common, "rules": self.rows,
                "learned_rule": self.learned_rule, "note": self.note}


def stop_rule_arms(arms: ArmSet, rule: LearnedStop | None) -> tuple[Arm, ...]:
    """The stop rules to evaluate: the arms (learned ones only with a rule), plus the learned rule at level 1
    when there is a rule and no arm of its own reads it."""
    out = [a for a in arms if not a.learned or rule is not None]
    if rule is not None and not any(a.learned for a in out) and DEFAULT_LEARNED_ARM.name not in arms.names:
        out.append(DEFAULT_LEARNED_ARM)
    return tuple(out)


def exact_stop_rules(events: TracedEvents, arms: Sequence[Arm], *, lam: float, token_scale: float,
                     rule: LearnedStop | None = None) -> ExactReport:
    """The exact outcome of every stop rule of ``arms`` on the graded traced ``events`` (see the module)."""
    arms = tuple(arms)
    if any(a.learned for a in arms) and rule is None:
        raise InputError("learned stop arms need the learned rule (a snapshot's stop_rule, or replay train)")
    keep = [i for i, r in enumerate(events.references) if r is not None]
    traces = [events.traces[i] for i in keep]
    refs = [events.references[i] for i in keep]
    learned = LearnedInputs(rule, lam, events.context[keep], token_scale) if rule is not None else None
    if traces:
        out = evaluate(traces, refs, arms, learned if any(a.learned for a in arms) else None)
        em, tok, known = out.em, out.tokens.astype(np.float64), out.known & ~np.isnan(out.em)
    else:
        em = tok = np.zeros((0, len(arms)))
        known = np.zeros((0, len(arms)), dtype=bool)
    common = known.all(axis=1)
    rows = []
    for j, a in enumerate(arms):
        row: dict[str, Any] = {"rule": a.name, "arm": a.to_dict(), "revealed": int(known[:, j].sum())}
        for part, mask in (("revealed_on", known[:, j]), ("common_on", common)):
            e, t = em[mask, j], tok[mask, j]
            row[part] = {"em": _summary(e), "tokens": _summary(t), "reward": _summary(e - lam * t / token_scale)}
        rows.append(row)
    note = ("exact: each rule's outcome read off the lenient traces (no estimate); 'common' = the events where "
            "every rule is revealed")
    if rule is not None and any(a.learned for a in arms):
        note += f"; learned rules at λ = {lam:g}"
    if events.truncated:
        note += f"; the first {events.n:,} traced events of the window only"
    return ExactReport(lam, token_scale, events.n, len(keep), int(common.sum()), rows,
                       None if rule is None else {"rows": rule.rows, "label": rule.label}, note)


@dataclass(frozen=True)
class StopTraining:
    rule: LearnedStop
    traced: int
    graded: int
    agreement: int
    unused: int
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rule.rows, "traced_events": self.traced, "graded": self.graded,
                "agreement": self.agreement, "unused": self.unused, "truncated": self.truncated,
                "labels": "graded where the event stores its reference, agreement with the run's own end elsewhere"}


def train_stop_rule(events: TracedEvents, *, label: str = "auto", batch: int = 5000) -> StopTraining:
    """Fit a fresh learned rule on the traces of ``events`` that reached the end, ``batch`` traces per fit."""
    rule = LearnedStop(len(CONTEXT_FEATURES), "graded")
    graded = agreement = 0
    for k in range(0, events.n, batch):
        data, counts = labelled_stop_data(events.traces[k : k + batch], events.references[k : k + batch],
                                          events.context[k : k + batch], label)
        rule.fit(data)
        graded += counts["graded"]
        agreement += counts["agreement"]
    return StopTraining(rule, events.n, graded, agreement, events.n - graded - agreement, events.truncated)


__all__ = ["DEFAULT_LEARNED_ARM", "ExactReport", "StopTraining", "TracedEvents", "exact_stop_rules",
           "stop_rule_arms", "traced_events", "train_stop_rule"]
