"""Probe traces and the outcomes they reveal for stricter arms.

A run of the decoder (or the simulator) thinks token by token and, at probe
points, forces a trial answer and measures its confidence (DEER-style probe,
arXiv 2504.15895). The main reasoning is never altered by a probe (probes are
side branches off the KV cache), so with greedy decoding every arm sees the
same reasoning tokens and the same trial answers at the same offsets.

Token accounting, shared by the decoder and the simulator:

* a run that stops thinking at offset ``s`` answers with the trial answer at
  ``s`` (the same greedy continuation of ``<reasoning[:s]> + answer delimiter``);
* its token count is ``s`` (thinking) + the tokens of every probe it ran
  *before* ``s`` + the answer tokens at ``s``. Probe tokens are always counted.

A trace therefore reveals the outcome of another arm ``b`` exactly when ``b``'s
stop offset ``s_b`` lies inside the observed reasoning and the answer at
``s_b`` is known: a probe sits at ``s_b``, or ``s_b`` is where the logged run
stopped. Anything else is reported as unknown and never guessed. The rule
that finds ``s_b`` is :mod:`stopbandit.bandit.stoprule`; a trace is its batch
of one.
"""

from __future__ import annotations

import hashlib

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stopbandit.bandit.arms import Arm
from stopbandit.bandit.learned_stop import LearnedInputs
from stopbandit.bandit.stoprule import REASON_NAMES, STOP_REASONS, ProbeBatch, Stops, stops
from stopbandit.errors import InputError


def answer_key(answer: str) -> str:
    """Compact, comparable form of an answer (for storage): sha1 of its stripped text, 16 hex chars."""
    return hashlib.sha1(answer.strip().encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Probe:
    """One trial answer: at ``offset`` thinking tokens, with ``confidence`` in [0, 1].

    ``tokens`` is how many tokens the trial answer took (its cost, and the
    answer length if a run stops here). ``answer`` is the text or its
    :func:`answer_key`.
    """

    offset: int
    confidence: float
    answer: str
    tokens: int

    def to_list(self) -> list[Any]:
        return [self.offset, round(self.confidence, 6), self.answer, self.tokens]


@dataclass(frozen=True, slots=True)
class ProbeTrace:
    """What one run observed.

    ``stop_offset``: thinking tokens when the run stopped thinking.
    ``stop_reason``: ``confidence``, ``agreement``, ``budget`` or ``end`` (the model closed its reasoning).
    ``answer`` / ``answer_tokens``: the final answer of the run and its length.
    ``probes``: probes in increasing offset, all at offsets <= ``stop_offset``.
    """

    probes: tuple[Probe, ...]
    stop_offset: int
    stop_reason: str
    answer: str
    answer_tokens: int

    def __post_init__(self) -> None:
        if self.stop_reason not in STOP_REASONS:
            raise InputError(f"trace stop_reason must be one of {'/'.join(STOP_REASONS)}, got {self.stop_reason!r}")
        last = -1
        for p in self.probes:
            if p.offset < last:
                raise InputError(f"trace probes must be in increasing offset order, got {p.offset} after {last}")
            if p.offset > self.stop_offset:
                raise InputError(f"trace probe at offset {p.offset} lies past the stop offset {self.stop_offset}")
            last = p.offset

    @property
    def total_tokens(self) -> int:
        """Every token the logged run spent: thinking + probes before the stop + answer."""
        return self.stop_offset + sum(p.tokens for p in self.probes if p.offset < self.stop_offset) + self.answer_tokens

    def to_json(self) -> dict[str, Any]:
        return {
            "p": [p.to_list() for p in self.probes],
            "s": self.stop_offset,
            "r": self.stop_reason,
            "a": self.answer,
            "n": self.answer_tokens,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProbeTrace:
        try:
            probes = tuple(Probe(int(o), float(c), str(a), int(t)) for o, c, a, t in data["p"])
            return cls(probes, int(data["s"]), str(data["r"]), str(data["a"]), int(data["n"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed probe trace: {exc!r}") from exc

    def hashed(self) -> ProbeTrace:
        """The same trace with every answer replaced by its :func:`answer_key` (compact storage)."""
        return ProbeTrace(
            tuple(Probe(p.offset, p.confidence, answer_key(p.answer), p.tokens) for p in self.probes),
            self.stop_offset,
            self.stop_reason,
            answer_key(self.answer),
            self.answer_tokens,
        )


@dataclass(frozen=True, slots=True)
class Counterfactual:
    """The outcome of an arm as revealed by a trace."""

    stop_offset: int
    tokens: int
    answer: str
    reason: str


def _reveal(trace: ProbeTrace, arms: Sequence[Arm], learned: LearnedInputs | None = None) -> Stops:
    """The stop rule (:func:`stopbandit.bandit.stoprule.stops`) on this trace: the batch of one."""
    return stops(ProbeBatch.of([trace.probes]), arms, [trace.stop_offset], [trace.stop_reason == "end"],
                 [trace.answer_tokens], learned=learned)


def stop_point(trace: ProbeTrace, arm: Arm) -> tuple[int, str, Probe | None] | None:
    """Where ``arm`` would stop on this trace's reasoning: (offset, reason, probe at it).

    Returns None when the stop lies beyond what the trace observed, or when
    no answer is known there (a budget stop between probes, short of the
    logged run's own stop).
    """
    found = _reveal(trace, (arm,))
    if not found.known[0, 0]:
        return None
    src = int(found.probe[0, 0])
    return int(found.offset[0, 0]), REASON_NAMES[int(found.reason[0, 0])], trace.probes[src] if src >= 0 else None


def _counterfactuals(trace: ProbeTrace, arms: Sequence[Arm],
                     learned: LearnedInputs | None = None) -> list[Counterfactual | None]:
    found = _reveal(trace, arms, learned)
    out: list[Counterfactual | None] = []
    for col in range(len(arms)):
        if not found.known[0, col]:
            out.append(None)
            continue
        src = int(found.probe[0, col])
        answer = trace.probes[src].answer if src >= 0 else trace.answer
        out.append(Counterfactual(int(found.offset[0, col]), int(found.tokens[0, col]), answer,
                                  REASON_NAMES[int(found.reason[0, col])]))
    return out


def counterfactual(trace: ProbeTrace, arm: Arm, learned: LearnedInputs | None = None) -> Counterfactual | None:
    """The exact outcome of ``arm`` on the request this trace came from, or None if unrevealed.

    Exact means: the stop offset, the token count (probes included) and the
    answer that a greedy re-run with ``arm`` produces. A learned arm needs
    ``learned`` (the rule, λ and the request's context, one row).
    """
    return _counterfactuals(trace, (arm,), learned)[0]


def em_of(answer: str, reference: str | None) -> float | None:
    """Exact match of an answer (text or :func:`answer_key`) against the reference answer."""
    if reference is None:
        return None
    ref = reference.strip()
    a = answer.strip()
    return 1.0 if a == ref or a == answer_key(ref) else 0.0


def revealed_outcomes(
    trace: ProbeTrace, arms: Sequence[Arm], reference: str | None, learned: LearnedInputs | None = None
) -> dict[int, tuple[float | None, int]]:
    """Per arm index, the (EM, tokens) the trace reveals; arms it does not reveal are absent."""
    return {i: (em_of(cf.answer, reference), cf.tokens)
            for i, cf in enumerate(_counterfactuals(trace, arms, learned)) if cf is not None}


__all__ = [
    "Counterfactual",
    "Probe",
    "ProbeTrace",
    "answer_key",
    "counterfactual",
    "em_of",
    "revealed_outcomes",
    "stop_point",
]

