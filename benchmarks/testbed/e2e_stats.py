"""Summaries for the end-to-end testbed run: per-item outcomes, EM/tokens summaries, static frontier, mean ± s.e.

Kept apart from :mod:`benchmarks.testbed.end_to_end` (which drives the
Selector and the decoder) so the arithmetic can be read, and tested, alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stopbandit.bandit.trace import ProbeTrace

LEVELS = ("easy", "medium", "hard")


@dataclass(frozen=True, slots=True)
class Outcome:
    """One decoded item: EM against the task's answer and every token spent.

    ``tokens`` is the decoder's count; ``think``/``probe``/``answer`` are read
    from the probe trace (thinking tokens up to the stop, every trial-answer
    token of the probes before the stop, the answer tokens), so
    ``tokens == think + probe + answer`` checks that the count includes the probes.
    """

    arm: str
    em: float
    tokens: int
    think: int
    probe: int
    answer: int

    @classmethod
    def of(cls, arm: str, em: float, tokens: int, trace: ProbeTrace) -> Outcome:
        probe = sum(p.tokens for p in trace.probes if p.offset < trace.stop_offset)
        return cls(arm, em, tokens, trace.stop_offset, probe, trace.answer_tokens)


def reward(em: float, tokens: float, lam: float, token_scale: float) -> float:
    """The Selector's reward, ``EM − λ·tokens/token_scale`` (DESIGN.md)."""
    return em - lam * tokens / token_scale


def summarize(levels: Sequence[str], outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Mean EM, tokens (probes included), think and probe tokens; EM and tokens per difficulty level."""
    n = len(outcomes)
    out: dict[str, Any] = {
        "n": n,
        "em": sum(o.em for o in outcomes) / n,
        "tokens": sum(o.tokens for o in outcomes) / n,
        "think": sum(o.think for o in outcomes) / n,
        "probe": sum(o.probe for o in outcomes) / n,
    }
    for level in LEVELS:
        sel = [o for lv, o in zip(levels, outcomes) if lv == level]
        out[f"em_{level}"] = sum(o.em for o in sel) / len(sel) if sel else None
        out[f"tokens_{level}"] = sum(o.tokens for o in sel) / len(sel) if sel else None
    return out


def hull_em(points: Mapping[str, tuple[float, float]], tokens: float) -> float | None:
    """Best EM a mix of static arms reaches at mean ``tokens`` or fewer: the static frontier.

    ``points``: arm -> (mean tokens, EM). Serving arm ``i`` to a share ``w`` of
    requests and arm ``j`` to the rest gives the chord between the two points,
    so the frontier is the upper concave hull; a policy beats the static arms
    "at matched tokens" when its EM lies above it. None when even the cheapest
    arm costs more than ``tokens``.
    """
    best: float | None = None
    pts = list(points.values())
    for ti, ei in pts:
        if ti <= tokens:
            best = ei if best is None else max(best, ei)
        for tj, ej in pts:
            if ti <= tokens < tj:
                w = (tokens - ti) / (tj - ti)
                em = ei + w * (ej - ei)
                best = em if best is None else max(best, em)
    return best


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample s.d. / √n; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


__all__ = ["LEVELS", "Outcome", "hull_em", "mean_se", "reward", "summarize"]
