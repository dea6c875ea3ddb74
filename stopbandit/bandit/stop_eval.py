"""Exact offline evaluation and training data of stop rules, read off probe traces.

A trace reveals where any stop rule at most as lenient as the logged run
stops, and the answer there (:mod:`stopbandit.bandit.trace`). So the EM and
the tokens of a stop rule on a traced request are not estimated: they are
read off the trace, and a request whose trace does not reach the rule's stop
is counted as unrevealed, never guessed. :func:`evaluate` does that for many
traces and arms in one batch of the stop-rule kernel; :func:`stop_data` turns
traces that reached the end of the reasoning into training rows of the
learned rule (:mod:`stopbandit.bandit.learned_stop`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stopbandit.bandit.arms import Arm
from stopbandit.bandit.learned_stop import LABELS, PROBE_FEATURES, LearnedInputs, StopData, probe_features
from stopbandit.bandit.stoprule import ProbeBatch, stops
from stopbandit.bandit.trace import ProbeTrace, answer_key
from stopbandit.errors import InputError


def _batch(traces: Sequence[ProbeTrace]) -> ProbeBatch:
    return ProbeBatch.of([t.probes for t in traces])


def _same(answer: str, target: str | None) -> bool:
    if target is None:
        return False
    a, t = answer.strip(), target.strip()
    return a == t or a == answer_key(t) or answer_key(a) == t


@dataclass(frozen=True, slots=True)
class ExactOutcomes:
    """Per trace and arm (``(N, A)``): EM (NaN where unrevealed or ungraded), tokens, and whether revealed."""

    em: np.ndarray
    tokens: np.ndarray
    known: np.ndarray

    def summary(self, arms: Sequence[Arm]) -> list[dict[str, float | int | str]]:
        """Per arm: name, revealed count, mean EM and mean tokens over the revealed, graded traces."""
        out = []
        for j, a in enumerate(arms):
            ok = self.known[:, j] & ~np.isnan(self.em[:, j])
            out.append({"arm": a.name, "revealed": int(ok.sum()),
                        "em": float(self.em[ok, j].mean()) if ok.any() else float("nan"),
                        "tokens": float(self.tokens[ok, j].mean()) if ok.any() else float("nan")})
        return out


def evaluate(traces: Sequence[ProbeTrace], references: Sequence[str | None], arms: Sequence[Arm],
             learned: LearnedInputs | None = None) -> ExactOutcomes:
    """The exact outcome of every arm on every traced request (one kernel batch).

    ``references``: each request's reference answer (text or its answer key; None = ungraded).
    ``learned``: the learned rule, λ and one context row per trace, when an arm has a learned rule.
    """
    traces = list(traces)
    if len(references) != len(traces):
        raise InputError(f"references: need one per trace ({len(traces)}), got {len(references)}")
    batch = _batch(traces)
    found = stops(batch, tuple(arms), [t.stop_offset for t in traces], [t.stop_reason == "end" for t in traces],
                  [t.answer_tokens for t in traces], learned=learned)
    flat = [p.answer for t in traces for p in t.probes]
    em = np.full(found.offset.shape, np.nan)
    for i, (t, ref) in enumerate(zip(traces, references)):
        if ref is None:
            continue
        for j in range(len(arms)):
            if found.known[i, j]:
                src = int(found.probe[i, j])
                em[i, j] = 1.0 if _same(flat[src] if src >= 0 else t.answer, ref) else 0.0
    return ExactOutcomes(em, found.tokens, found.known)


def stop_data(traces: Sequence[ProbeTrace], references: Sequence[str | None], context: np.ndarray,
              label: str = "graded") -> StopData:
    """Training rows of the learned rule from traces whose reasoning reached its end.

    ``label``: ``graded`` -- correct means equal to the reference (traces without
    one are skipped); ``agreement`` -- equal to the run's own final answer.
    Traces stopped early are skipped: the tokens to the end are not known there.
    """
    if label not in LABELS:
        raise InputError(f"label must be one of {list(LABELS)}, got {label!r}")
    ctx = np.asarray(context, dtype=np.float64).reshape(len(traces), -1)
    keep = [i for i, t in enumerate(traces)
            if t.stop_reason == "end" and (label == "agreement" or references[i] is not None)]
    sel = [traces[i] for i in keep]
    batch = _batch(sel)
    feats = probe_features(batch.offset, batch.confidence, batch.tokens, batch.streak if batch.offset.size else
                           np.zeros(0, np.int64), batch.start, batch.count, ctx[keep] if keep else ctx[:0])
    now, end, rest = [], [], []
    for i, t in zip(keep, sel):
        target = references[i] if label == "graded" else t.answer
        fin = 1.0 if _same(t.answer, target) else 0.0
        total, spent_probes = t.total_tokens, 0
        for p in t.probes:
            now.append(1.0 if _same(p.answer, target) else 0.0)
            end.append(fin)
            rest.append(total - (p.offset + spent_probes + p.tokens))
            spent_probes += p.tokens
    return StopData(feats, np.array(now), np.array(end), np.array(rest, dtype=np.float64))


STOP_LABELS: tuple[str, ...] = ("auto", "graded", "agreement")
"""How training traces are labelled: ``auto`` -- graded where the trace has a reference, agreement
elsewhere; ``graded`` -- only traces with a reference; ``agreement`` -- every trace against its own end."""


def labelled_stop_data(traces: Sequence[ProbeTrace], references: Sequence[str | None], context: np.ndarray,
                       label: str = "auto") -> tuple[StopData, dict[str, int]]:
    """:func:`stop_data` with the labels of ``label`` (see :data:`STOP_LABELS`) and how many traces got each.

    Returns the rows and ``{"graded": traces labelled against their reference, "agreement": traces
    labelled against their own final answer}``; traces that did not reach the end are counted in neither.
    """
    if label not in STOP_LABELS:
        raise InputError(f"stop label must be one of {list(STOP_LABELS)}, got {label!r}")
    traces = list(traces)
    if len(references) != len(traces):
        raise InputError(f"references: need one per trace ({len(traces)}), got {len(references)}")
    ctx = np.asarray(context, dtype=np.float64)
    ctx = ctx.reshape(len(traces), ctx.shape[-1] if ctx.ndim else 0)
    ended = [i for i, t in enumerate(traces) if t.stop_reason == "end"]
    graded = [i for i in ended if references[i] is not None] if label != "agreement" else []
    agree = [i for i in ended if references[i] is None] if label == "auto" else ended if label == "agreement" else []
    parts = []
    for idx, kind in ((graded, "graded"), (agree, "agreement")):
        if idx:
            parts.append(stop_data([traces[i] for i in idx], [references[i] for i in idx], ctx[idx], kind))
    counts = {"graded": len(graded), "agreement": len(agree)}
    if not parts:
        width = len(PROBE_FEATURES) + ctx.shape[1]
        return StopData(np.zeros((0, width)), np.zeros(0), np.zeros(0), np.zeros(0)), counts
    return StopData(np.concatenate([d.features for d in parts]), np.concatenate([d.correct_now for d in parts]),
                    np.concatenate([d.correct_end for d in parts]), np.concatenate([d.rest for d in parts])), counts


__all__ = ["STOP_LABELS", "ExactOutcomes", "evaluate", "labelled_stop_data", "stop_data"]
