"""Stored probe traces → the outcomes they reveal, for a whole chunk of the log at once.

A stored trace is ``ProbeTrace.hashed().to_json()``; its reference is
``answer_key(reference)``. The stop of every arm comes from the stop-rule
kernel (:func:`stopbandit.bandit.stoprule.stops`); this module only reads the
stored JSON into the kernel's flat probe columns and compares the revealed
answers with the reference key. Traces in canonical form take one column
pass per chunk; anything else (text numbers, extra fields, ...) is read one
trace at a time, with the same conversions, and a trace that cannot be read
is reported as malformed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np

from stopbandit.bandit.arms import Arm
from stopbandit.bandit.learned_stop import LearnedInputs
from stopbandit.bandit.stop_eval import evaluate
from stopbandit.bandit.stoprule import ProbeBatch, stops
from stopbandit.bandit.trace import ProbeTrace
from stopbandit.errors import StopbanditError


def reveal_row(trace: Mapping[str, Any], reference_key: str, arms: Sequence[Arm]) -> list[tuple[float, int] | None]:
    """Per arm, the (EM, tokens) a stored (hashed) trace reveals, None where it reveals nothing.

    The same result as ``counterfactual(ProbeTrace.from_json(trace), arm)``
    with ``em_of(cf.answer, reference_key)`` for every arm, read straight from
    the stored JSON (this is the path of traces off the canonical form; the
    canonical ones go through :func:`reveal_rows`' column path). The stop rule
    is :func:`stopbandit.bandit.stoprule.stops` on the batch of one. A trace
    whose probes are out of offset order raises ValueError (malformed).
    """
    probes = trace["p"]
    stop = int(trace["s"])
    offsets = [int(p[0]) for p in probes]
    confs = [float(p[1]) for p in probes]
    tokens = [int(p[3]) for p in probes]
    answers = [p[2] for p in probes]
    if any(b < a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"trace probe offsets must be non-decreasing, got {offsets}")
    found = stops(ProbeBatch(offsets, confs, tokens, [len(offsets)], answers), arms, [stop], [trace["r"] == "end"])
    ref = reference_key.strip()
    out: list[tuple[float, int] | None] = []
    for col in range(len(arms)):
        if not found.known[0, col]:
            out.append(None)
            continue
        src = int(found.probe[0, col])
        if src >= 0:
            answer, n = answers[src], int(found.tokens[0, col])
        else:  # the run's own final answer: read only when an arm needs it
            answer, n = trace["a"], int(found.tokens[0, col]) + int(trace["n"])
        out.append((1.0 if str(answer).strip() == ref else 0.0, n))
    return out


def reveal_rows(traces: Sequence[Any], reference_keys: Sequence[str], arms: Sequence[Arm],
                learned: LearnedInputs | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_reveal_rows` of the arms, the learned arms among them read with ``learned`` (the rule, λ, one
    context row per trace); without ``learned`` a learned arm is revealed by no trace (its columns are NaN)."""
    arms = tuple(arms)
    lj = [j for j, a in enumerate(arms) if a.learned]
    if not lj:
        return _reveal_rows(traces, reference_keys, arms)
    plain = [j for j, a in enumerate(arms) if not a.learned]
    n_ev = len(traces)
    em = np.full((n_ev, len(arms)), np.nan)
    tok = np.full((n_ev, len(arms)), np.nan)
    ok = np.ones(n_ev, dtype=bool)
    if plain:
        e1, t1, ok = _reveal_rows(traces, reference_keys, [arms[j] for j in plain])
        em[:, plain], tok[:, plain] = e1, t1
    if learned is None or n_ev == 0:
        return em, tok, ok
    parsed, rows = [], []
    for i, tr in enumerate(traces):
        if not ok[i]:
            continue
        try:
            parsed.append(ProbeTrace.from_json(tr))
            rows.append(i)
        except (StopbanditError, TypeError, AttributeError):
            ok[i] = False
    if rows:
        out = evaluate(parsed, [reference_keys[i] for i in rows], [arms[j] for j in lj],
                       replace(learned, context=learned.context[rows]))
        got_em = np.where(out.known, out.em, np.nan)
        got_tok = np.where(out.known, out.tokens.astype(np.float64), np.nan)
        for c, j in enumerate(lj):
            em[rows, j], tok[rows, j] = got_em[:, c], got_tok[:, c]
    return em, tok, ok


def _reveal_rows(traces: Sequence[Any], reference_keys: Sequence[str], arms: Sequence[Arm],
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`reveal_row` of many stored traces: (EM (E, K), tokens (E, K), ok (E,)).

    NaN where :func:`reveal_row` gives None; ``ok`` is False where it raises
    on a malformed trace (KeyError, TypeError, ValueError or IndexError).
    Traces in canonical form (what ``ProbeTrace.to_json`` writes: probe lists
    ``[offset, confidence, answer, tokens]`` of integers and finite
    confidences, offsets non-decreasing and non-negative) are revealed
    together on flat probe columns, one batch of the stop-rule kernel for the
    whole chunk; any other trace goes through :func:`reveal_row` itself.
    """
    arms = tuple(arms)
    n_ev, k = len(traces), len(arms)
    em = np.full((n_ev, k), np.nan)
    tok = np.full((n_ev, k), np.nan)
    ok = np.ones(n_ev, dtype=bool)
    fast: list[int] = []
    slow: list[int] = []
    try:  # the canonical case: every field present, column by column
        fields = list(map(_TRACE_FIELDS, traces))
    except (KeyError, TypeError, IndexError):
        fields = []
        for i, tr in enumerate(traces):
            try:
                fields.append(_TRACE_FIELDS(tr))
                fast.append(i)
            except (KeyError, TypeError, IndexError):
                slow.append(i)
    else:
        fast = list(range(n_ev))
    if fields:
        ps, stops_, reasons, finals, final_n = zip(*fields)
        if set(map(type, ps)) != {list}:
            slow, fast = sorted(slow + fast), []
    if fast and not _reveal_flat(fast, ps, stops_, reasons, finals, final_n, reference_keys, arms, em, tok):
        slow = sorted(slow + fast)
    for i in slow:
        try:
            got = reveal_row(traces[i], reference_keys[i], arms)
        except (KeyError, TypeError, ValueError, IndexError):
            ok[i] = False  # its rows stay NaN
            continue
        em[i] = [np.nan if v is None else v[0] for v in got]
        tok[i] = [np.nan if v is None else v[1] for v in got]
    return em, tok, ok


_TRACE_FIELDS = itemgetter("p", "s", "r", "a", "n")
_NUMBERS = frozenset((int, float))


def _reveal_flat(rows: list[int], ps: Sequence[list], stops_: Sequence[Any], reasons: Sequence[Any],
                 finals: Sequence[Any], final_n: Sequence[Any], refs: Sequence[str],
                 arms: Sequence[Arm], em: np.ndarray, tok: np.ndarray) -> bool:
    """Fill ``em``/``tok`` rows ``rows`` from the flattened probes; False (nothing written) when not canonical."""
    n_ev = len(rows)
    lens = list(map(len, ps))
    probes = list(chain.from_iterable(ps))
    n_pr = len(probes)
    del ps
    stop = np.array(stops_)
    fin_n = np.array(final_n)
    if stop.dtype.kind != "i" or fin_n.dtype.kind != "i" or stop.shape != (n_ev,) or fin_n.shape != (n_ev,):
        return False
    is_end = np.array([r == "end" for r in reasons], dtype=bool)
    if n_pr:
        # columns of the flattened [offset, confidence, answer, tokens] probes (exactly four fields each);
        # offsets and tokens must be ints and confidences ints or floats, as ProbeTrace writes them
        if set(map(len, probes)) != {4}:
            return False
        flat = list(chain.from_iterable(probes))
        del probes
        offs, confs, answers, ntoks = flat[0::4], flat[1::4], flat[2::4], flat[3::4]
        del flat
        if set(map(type, offs)) != {int} or set(map(type, ntoks)) != {int} or not set(map(type, confs)) <= _NUMBERS:
            return False  # text, None, booleans: reveal_row converts them its way
        try:
            off = np.fromiter(offs, dtype=np.int64, count=n_pr)
            ntok = np.fromiter(ntoks, dtype=np.int64, count=n_pr)
        except OverflowError:
            return False
        conf = np.fromiter(confs, dtype=np.float64, count=n_pr)
        if not np.isfinite(conf).all() or off.min() < 0:
            return False
    else:
        off = ntok = np.zeros(0, dtype=np.int64)
        conf = np.zeros(0)
        answers = []
    batch = ProbeBatch(off, conf, ntok, lens, answers)
    if n_pr > 1 and (np.diff(off)[batch.event[1:] == batch.event[:-1]] < 0).any():
        return False  # offsets out of order: reveal_row decides
    found = stops(batch, arms, stop, is_end, fin_n)
    refs_s = [refs[i].strip() for i in rows]
    for col in range(len(arms)):
        known = found.known[:, col]
        src_l = found.probe[:, col].tolist()
        out_em = [math.nan] * n_ev
        for e in np.flatnonzero(known).tolist():
            q = src_l[e]
            answer = answers[q] if q >= 0 else finals[e]
            ref = refs_s[e]
            out_em[e] = 1.0 if answer == ref or str(answer).strip() == ref else 0.0
        em[rows, col] = out_em
        tok[rows, col] = np.where(known, found.tokens[:, col], np.nan)
    return True


__all__ = ["reveal_row", "reveal_rows"]
