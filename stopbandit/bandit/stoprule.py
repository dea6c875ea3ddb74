"""The stop rule: where an arm stops thinking, given the probes of a run.

A run thinks token by token and, at probe points, forces a trial answer and
measures its confidence (DEER, arXiv 2504.15895). An arm stops thinking at
the first probe below its cap (``offset < max_think_tokens``, 0 = no cap) at
which either

* ``confidence`` -- the trial answer's confidence reaches the arm's
  ``threshold``, or
* ``agreement`` -- the last ``agreement`` probes (this one included) gave the
  same trial answer (Dynasor's certainty window, arXiv 2412.20993; 0 = off), or
* ``learned`` -- the learned rule of :mod:`stopbandit.bandit.learned_stop`
  judges thinking on not worth ``learned · λ`` times its expected tokens
  (0 = off; it reads only the probes up to this one, the run's context and λ,
  passed as :class:`~stopbandit.bandit.learned_stop.LearnedInputs`);

when several hold at one probe the reason is the first of that list. Without such a
probe the arm stops at its cap when the reasoning is still going there
(``budget``), else where the model closes its reasoning (``end``).

Every consumer evaluates this one definition: :func:`stops` is the kernel,
vectorised over many runs (their probes flattened, :class:`ProbeBatch`) and
many arms; a single trace is the batch of one
(:func:`stopbandit.bandit.trace.counterfactual`), the simulator's requests are
batches of their probe grids, the replay log's chunks are batches of stored
traces, the online check of a gateway is :func:`stop_reason`, and the torch
decoder applies :func:`fires` to its per-row tensors.

What a batch knows about a run ends at its *horizon*: a lenient run's stop
offset, or where the reasoning closed (``ended``). A stop the horizon does
not cover -- the run stopped on its own rule before this arm would -- is
reported as not known and never guessed. The probes of every run are in
non-decreasing offset order, all at offsets ``<= horizon``.

Token accounting: a run that stops at offset ``s`` spends ``s`` thinking
tokens, the tokens of every probe at an offset ``< s``, and the tokens of the
answer at ``s`` (the probe there, or the run's own final answer).
"""

from __future__ import annotations

import operator
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from stopbandit.bandit.arms import Arm
from stopbandit.bandit.learned_stop import LearnedInputs, probe_features
from stopbandit.errors import InputError

NONE, CONFIDENCE, BUDGET, END, AGREEMENT, LEARNED = 0, 1, 2, 3, 4, 5
"""Reason codes (int8 in :class:`Stops`; the decoder's per-row tensors use the same values)."""
REASON_NAMES: dict[int, str] = {CONFIDENCE: "confidence", BUDGET: "budget", END: "end", AGREEMENT: "agreement",
                                LEARNED: "learned"}
STOP_REASONS: tuple[str, ...] = ("confidence", "agreement", "budget", "end", "learned")


def fires(confidence: Any, streak: Any, threshold: Any, agreement: Any) -> tuple[Any, Any]:
    """Whether a probe stops an arm: ``(on confidence, on agreement)``, elementwise.

    ``streak`` is how many consecutive probes up to this one gave its trial
    answer. Only comparisons and ``&`` are used, so the same definition runs
    on Python numbers, numpy arrays and torch tensors (a NaN confidence -- no
    probe -- compares False). The cap is the caller's: a probe at or past it
    never fires.
    """
    return confidence >= threshold, (agreement > 0) & (streak >= agreement)


def streak_of(answers: Sequence[Any]) -> int:
    """How many answers at the end of ``answers`` equal the last one (stripped text); 0 when empty."""
    if not answers:
        return 0
    last = str(answers[-1]).strip()
    n = 0
    for a in reversed(answers):
        if str(a).strip() != last:
            break
        n += 1
    return n


def streaks(answers: Sequence[Any] | np.ndarray, event: np.ndarray) -> np.ndarray:
    """Per flat probe, the run length of equal trial answers ending at it within its run: int64 ``(P,)``.

    ``answers``: text (compared stripped) or integer codes, ``(P,)``; ``event``: the run of each probe, ``(P,)``.
    """
    n = len(event)
    same = np.zeros(n, dtype=bool)
    if n > 1:
        if isinstance(answers, np.ndarray) and answers.dtype.kind in "iub":
            eq = answers[1:] == answers[:-1]
        else:
            texts = [str(a).strip() for a in answers]
            eq = np.fromiter((a == b for a, b in zip(texts[1:], texts[:-1])), dtype=bool, count=n - 1)
        same[1:] = eq & (event[1:] == event[:-1])
    idx = np.arange(n, dtype=np.int64)
    begin = np.where(same, 0, idx)
    np.maximum.accumulate(begin, out=begin)
    return idx - begin + 1


class ProbeBatch:
    """The probes of ``E`` runs, flattened run after run into arrays of shape ``(P,)``.

    ``offset`` (int64), ``confidence`` (float64), ``tokens`` (int64, each
    probe's trial-answer length) and ``answers`` (text or integer codes, only
    read when an arm stops on agreement; a callable is called then); ``count`` (int64 ``(E,)``) is the
    number of probes of each run. Offsets are non-decreasing within a run.
    """

    __slots__ = ("offset", "confidence", "tokens", "count", "start", "event", "_answers", "_streak")

    def __init__(self, offset: Any, confidence: Any, tokens: Any, count: Any,
                 answers: Sequence[Any] | np.ndarray | Callable[[], Sequence[Any] | np.ndarray] | None = None,
                 ) -> None:
        self.offset = np.asarray(offset, dtype=np.int64)
        self.confidence = np.asarray(confidence, dtype=np.float64)
        self.tokens = np.asarray(tokens, dtype=np.int64)
        self.count = np.asarray(count, dtype=np.int64)
        self.start = np.zeros(self.count.size, dtype=np.int64)
        if self.count.size > 1:
            np.cumsum(self.count[:-1], out=self.start[1:])
        self.event = np.repeat(np.arange(self.count.size, dtype=np.int64), self.count)
        self._answers = answers
        self._streak: np.ndarray | None = None

    @classmethod
    def of(cls, runs: Sequence[Sequence[Any]]) -> ProbeBatch:
        """From probe sequences (:class:`~stopbandit.bandit.trace.Probe` or ``[offset, confidence, answer, tokens]``)."""
        flat = [p for run in runs for p in run]
        if flat and not isinstance(flat[0], (list, tuple)):
            rows = [(p.offset, p.confidence, p.answer, p.tokens) for p in flat]
        else:
            rows = flat
        count = [len(r) for r in runs]
        if not rows:
            return cls(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64), count, ())
        offs, confs, answers, toks = zip(*rows)
        return cls([int(o) for o in offs], [float(c) for c in confs], [int(t) for t in toks], count, answers)

    @property
    def runs(self) -> int:
        return int(self.count.size)

    @property
    def streak(self) -> np.ndarray:
        """:func:`streaks` of the answers, computed on first use: int64 ``(P,)``."""
        if self._streak is None:
            answers = self._answers() if callable(self._answers) else self._answers
            answers = answers if answers is not None else ()
            if len(answers) != self.offset.size:
                raise ValueError(f"agreement needs the trial answers of all {self.offset.size} probes, got {len(answers)}")
            self._streak = streaks(answers, self.event)
        return self._streak


@dataclass(frozen=True, slots=True)
class Stops:
    """Where each arm stops on each run: arrays of shape ``(E, A)``.

    ``offset``: thinking tokens at the stop (int64). ``reason``: a reason code
    (int8; NONE where the horizon ends before the arm would stop). ``probe``:
    flat index of the probe whose trial answer is the arm's answer, -1 when it
    is the run's own final answer or unknown. ``known``: whether the answer
    (and so the outcome) is revealed. ``tokens``: every token the arm spends
    (int64, meaningful where ``known``).
    """

    offset: np.ndarray
    reason: np.ndarray
    probe: np.ndarray
    known: np.ndarray
    tokens: np.ndarray


@dataclass(frozen=True, slots=True, eq=False)
class _Rules:
    """The arms' parameters as arrays ``(A,)``: thresholds, caps (``inf`` = none, and as ints, 0 = none), windows."""

    threshold: np.ndarray
    cap: np.ndarray
    cap_int: np.ndarray
    agreement: np.ndarray
    capped: bool
    agrees: bool
    level: np.ndarray
    learns: bool


@lru_cache(maxsize=256)
def _rules(arms: tuple[Arm, ...]) -> _Rules:
    cap = np.array([a.cap for a in arms], dtype=np.float64)
    agreement = np.array([a.agreement for a in arms], dtype=np.int64)
    level = np.array([a.learned for a in arms], dtype=np.float64)
    return _Rules(np.array([a.threshold for a in arms], dtype=np.float64), cap,
                  np.array([a.max_think_tokens for a in arms], dtype=np.int64), agreement,
                  bool(np.isfinite(cap).any()), bool(agreement.any()), level, bool(level.any()))


def learned_fires(probes: ProbeBatch, arms: Sequence[Arm], learned: LearnedInputs) -> np.ndarray:
    """Per flat probe and arm, whether the learned rule stops it there: bool ``(P, A)`` (False for arms without one)."""
    rules = _rules(tuple(arms))
    if learned.context.shape[0] != probes.runs:
        raise InputError(f"learned stop: context needs one row per run ({probes.runs}), got {learned.context.shape[0]}")
    feats = probe_features(probes.offset, probes.confidence, probes.tokens, probes.streak, probes.start,
                           probes.count, learned.context)
    return learned.rule.fires(feats, rules.level, learned.lam, learned.token_scale)


def _first_at_or_after(probes: ProbeBatch, x: np.ndarray) -> np.ndarray:
    """Per run ``e`` and column, the flat index of the first probe of ``e`` at an offset >= ``x[e, a]``
    (the run's end when none): int64 ``(E, A)``."""
    off, n_ev = probes.offset, probes.runs
    if off.size == 0:
        return np.broadcast_to(probes.start[:, None], x.shape).copy()
    if n_ev == 1:
        return np.searchsorted(off, x, side="left")
    low = min(int(off.min()), 0)
    width = int(off.max()) - low + 1
    if width * (n_ev + 1) < 2**62:
        key = probes.event * width + (off - low)  # sorted: runs in order, offsets non-decreasing within one
        query = np.arange(n_ev, dtype=np.int64)[:, None] * width + np.minimum(np.maximum(x - low, 0), width)
        return np.searchsorted(key, query, side="left")
    out = np.empty(x.shape, dtype=np.int64)
    for e, (s, n) in enumerate(zip(probes.start.tolist(), probes.count.tolist())):
        out[e] = s + np.searchsorted(off[s : s + n], x[e], side="left")
    return out


SCALAR_MAX_CELLS = 4096
"""A single run with at most this many probes × arms is evaluated over Python numbers (:func:`_stops_one`):
below it that is cheaper than the fixed cost of the array operations, above it the arrays win."""


def _single(x: Any) -> Any:
    """The one value of a per-run argument of a batch of one (a scalar, or a sequence or array of size 1); None otherwise."""
    if isinstance(x, np.ndarray):
        return x.reshape(-1)[0] if x.size == 1 else None
    if isinstance(x, (list, tuple)):
        return x[0] if len(x) == 1 else None
    return x


def stops(probes: ProbeBatch, arms: Sequence[Arm], horizon: Any, ended: Any,
          final_tokens: Any = 0, learned: LearnedInputs | None = None) -> Stops:
    """The stop of every arm on every run (the rule in this module's docstring).

    ``horizon`` (int ``(E,)``): the last offset each run observed; ``ended``
    (bool ``(E,)``): whether the reasoning closed there on its own;
    ``final_tokens`` (int ``(E,)`` or scalar): the length of each run's own
    final answer, for the token counts of stops at the horizon. One set of
    array operations covers every run and every arm: the probes are rows of
    ``(P, A)`` masks, reduced per run. ``learned`` is required when an arm has
    a learned rule (its stops depend on the rule, λ and each run's context).

    The rule is written once: :func:`fires` decides whether a probe stops an
    arm and :func:`_settle` turns each arm's first firing probe into its stop,
    answer and tokens, over arrays or over Python numbers alike. A single
    small run without learned arms (up to :data:`SCALAR_MAX_CELLS` probes ×
    arms: one trace, one simulated request, the online check) applies them to
    Python numbers, arm by arm (:func:`_stops_one`), which returns the same
    arrays without the array operations' fixed cost.
    """
    rules = _rules(tuple(arms))
    if rules.learns and learned is None:
        names = [a.name for a in arms if a.learned]
        raise InputError(f"arms {names} stop on the learned rule: stops() needs learned= (rule, λ, context)")
    if probes.runs == 1 and not rules.learns and probes.offset.size * rules.threshold.size <= SCALAR_MAX_CELLS:
        h, e, f = _single(horizon), _single(ended), _single(final_tokens)
        if h is not None and e is not None and f is not None:
            return _stops_one(probes, arms, int(h), bool(e), int(f))
    return _stops_batch(probes, arms, rules, horizon, ended, final_tokens, learned)


def _settle(where: Callable[[Any, Any, Any], Any], not_: Callable[[Any], Any], fired: Any, first: Any,
            offset_fired: Any, reason_fired: Any, cap: Any, cap_int: Any, horizon: Any, ended: Any,
            final_tokens: Any, pos_of: Callable[[Any], Any], run_end: Any, offsets: Any, tokens: Any, cums: Any,
            base: Any) -> tuple[Any, Any, Any, Any, Any]:
    """From each arm's first firing probe (``fired``, ``first``, its offset and reason) to its stop:
    ``(offset, reason, probe, known, tokens)``.

    Written with ``&``, ``|``, comparisons, indexing and the given ``where``
    and ``not_``, so the same lines run elementwise on numpy arrays ``(E, A)``
    (``np.where``, ``np.logical_not``) and on the Python numbers of one arm
    (a conditional expression, ``operator.not_``). Without a firing probe the
    arm stops at its cap (``budget``) when the cap comes before the horizon,
    or at the horizon itself while the reasoning is still going there, else
    at the horizon (``end`` when the reasoning closed there; not known
    otherwise). The answer is the firing probe's, a probe exactly at a budget
    stop, or the run's own final answer at the horizon.

    ``pos_of(offset)``: the flat index of the run's first probe at or after
    ``offset`` (``run_end`` when none); ``offsets`` and ``tokens``: the
    probes' offsets and answer lengths, each followed by one padding entry
    (an offset no stop has, 0 tokens) so that ``run_end`` and -1 index them;
    ``cums[j]``: the answer tokens of the flat probes before ``j``; ``base``:
    ``cums`` at the run's first probe.
    """
    budget = not_(fired) & ((cap < horizon) | ((cap == horizon) & not_(ended)))
    at_end = not_(fired) & not_(budget) & ended
    offset = where(fired, offset_fired, where(budget, cap_int, horizon))
    pos = pos_of(offset)
    probe_at = budget & (pos < run_end) & (offsets[pos] == offset)
    final_at = (budget & not_(probe_at) & (offset == horizon)) | at_end
    src = where(fired, first, where(probe_at, pos, -1))
    spent = offset + (cums[pos] - base) + where(src >= 0, tokens[src], final_tokens)
    reason = where(fired, reason_fired, where(budget, BUDGET, where(at_end, END, NONE)))
    return offset, reason, src, fired | probe_at | final_at, spent


def _py_where(cond: Any, a: Any, b: Any) -> Any:
    return a if cond else b


def _stops_one(probes: ProbeBatch, arms: Sequence[Arm], horizon: int, ended: bool, final_tokens: int) -> Stops:
    """:func:`stops` on one run, arms without a learned rule, over Python numbers.

    Per arm: the first probe under the cap at which :func:`fires` holds
    (offsets are non-decreasing, so the probes under the cap are a prefix),
    then :func:`_settle` on that arm's numbers.
    """
    off = probes.offset.tolist()
    conf = probes.confidence.tolist()
    ntok = probes.tokens.tolist()
    n = len(off)
    streak: list[int] | None = None
    cums = [0]
    for t in ntok:
        cums.append(cums[-1] + t)
    offsets, tokens = off + [-1], ntok + [0]

    def pos_of(offset: int) -> int:
        return bisect_left(off, offset)

    rows = []
    for arm in arms:
        window = arm.agreement
        if window > 0 and streak is None:
            streak = probes.streak.tolist() if n else []
        first, reason = -1, NONE
        for j in range(bisect_left(off, arm.cap)):
            on_conf, on_agree = fires(conf[j], streak[j] if window > 0 else 0, arm.threshold, window)  # type: ignore[index]
            if on_conf or on_agree:
                first, reason = j, CONFIDENCE if on_conf else AGREEMENT
                break
        fired = first >= 0
        rows.append(_settle(_py_where, operator.not_, fired, first, off[first] if fired else 0, reason, arm.cap,
                            arm.max_think_tokens, horizon, ended, final_tokens, pos_of, n, offsets, tokens, cums, 0))
    out_off, out_reason, out_probe, out_known, out_tokens = zip(*rows) if rows else ((), (), (), (), ())
    return Stops(np.array([out_off], dtype=np.int64), np.array([out_reason], dtype=np.int8),
                 np.array([out_probe], dtype=np.int64), np.array([out_known], dtype=bool),
                 np.array([out_tokens], dtype=np.int64))


def _stops_batch(probes: ProbeBatch, arms: Sequence[Arm], rules: _Rules, horizon: Any, ended: Any,
                 final_tokens: Any, learned: LearnedInputs | None) -> Stops:
    """:func:`stops` as array operations over every run and every arm."""
    n_ev, n_arms = probes.runs, rules.threshold.size
    horizon = np.asarray(horizon, dtype=np.int64).reshape(n_ev, 1)
    ended = np.asarray(ended, dtype=bool).reshape(n_ev, 1)
    fin = np.asarray(final_tokens, dtype=np.int64).reshape(-1, 1)
    off, ntok, start = probes.offset, probes.tokens, probes.start
    n_pr = off.size
    cols = np.arange(n_arms)
    if n_pr:
        on_conf, on_agree = fires(probes.confidence[:, None], probes.streak[:, None] if rules.agrees else 0,
                                  rules.threshold, rules.agreement)
        hit = on_conf | on_agree if rules.agrees else on_conf
        if rules.learns:
            on_learn = learned_fires(probes, arms, learned)  # type: ignore[arg-type]
            hit = hit | on_learn
        if rules.capped:
            hit &= off[:, None] < rules.cap
        # the first firing probe of each run: the least flat index, n_pr where none
        cand = np.where(hit, np.arange(n_pr, dtype=np.int64)[:, None], n_pr)
        if n_ev == 1:
            first = cand.min(axis=0, keepdims=True)
        else:
            first = np.minimum.reduceat(cand, np.minimum(start, n_pr - 1), axis=0)
            first[probes.count == 0] = n_pr
        fired = first < n_pr
        at = np.minimum(first, n_pr - 1)
        offset_fired = off[at]
        reason_fired = np.where(on_conf[at, cols], CONFIDENCE,
                                (AGREEMENT if not rules.learns else np.where(
                                    np.broadcast_to(on_agree, (n_pr, n_arms))[at, cols], AGREEMENT, LEARNED)))
    else:
        fired = np.zeros((n_ev, n_arms), dtype=bool)
        offset_fired = reason_fired = first = np.zeros((n_ev, n_arms), dtype=np.int64)
    cums = np.zeros(n_pr + 1, dtype=np.int64)
    np.cumsum(ntok, out=cums[1:])  # cums[j]: tokens of the flat probes before j
    offset, reason, src, known, tokens = _settle(
        np.where, np.logical_not, fired, first, offset_fired, reason_fired, rules.cap, rules.cap_int, horizon, ended,
        fin, lambda x: _first_at_or_after(probes, x), (start + probes.count)[:, None], np.append(off, -1),
        np.append(ntok, 0), cums, cums[start][:, None])
    return Stops(offset, reason.astype(np.int8), src, known, tokens)


def stop_reason(arm: Arm, probes: Sequence[Any], think_tokens: int,
                learned: LearnedInputs | None = None) -> str | None:
    """Online check: why ``arm`` stops thinking now, given the probes so far, or None to go on.

    ``probes``: the run's probes (:class:`~stopbandit.bandit.trace.Probe`) in
    offset order, all at offsets ``<= think_tokens``; ``think_tokens``: the
    reasoning tokens generated so far. Returns ``"confidence"`` or
    ``"agreement"`` when a probe under the cap fires, ``"budget"`` once the cap
    is reached, else None -- :func:`stops` on the batch of one whose horizon is
    ``think_tokens`` and whose reasoning has not closed. A learned arm needs
    ``learned`` (the rule, λ, this request's context) and may answer ``"learned"``.
    """
    found = stops(ProbeBatch.of([probes]), (arm,), [int(think_tokens)], [False], learned=learned)
    return REASON_NAMES.get(int(found.reason[0, 0]))


__all__ = [
    "AGREEMENT",
    "LEARNED",
    "learned_fires",
    "BUDGET",
    "CONFIDENCE",
    "END",
    "NONE",
    "REASON_NAMES",
    "STOP_REASONS",
    "ProbeBatch",
    "Stops",
    "fires",
    "stop_reason",
    "stops",
    "streak_of",
    "streaks",
]
