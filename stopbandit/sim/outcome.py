"""Running an arm on a simulated request: stop point, tokens, EM and probe trace.

The stop rule and the token accounting are exactly those of
:mod:`stopbandit.bandit.trace` (DEER-style probes, arXiv 2504.15895):

* stop at the first probe ``k`` with offset ``k·N < cap`` whose confidence
  reaches the arm's threshold (reason ``confidence``); otherwise at the cap
  when ``cap < think_len`` (``budget``); otherwise at ``think_len`` (``end``);
* the answer is the trial answer at the stop offset ``s``;
* ``tokens = s + answer_tokens·#(probes at offsets < s) + answer_tokens``,
  and the probes at offsets < s are those at ``N, 2N, …``, i.e.
  ``(s − 1) // N`` of them -- probe tokens are always counted, also by the
  ``full`` arm, whose probes are what reveal every stricter arm.

The run's trace holds every probe at an offset ``<= s``, so
``counterfactual(run(r, a).trace, b) == run(r, b)`` for every arm ``b`` at
most as lenient as ``a`` whose cap is uncapped, a multiple of ``N``, or equal
to ``a``'s stop (the nested-feedback invariant the learner relies on).

:func:`outcomes` and :func:`outcome_table` compute the same stop points for
many arms (and requests) at once without building traces: the first probe that
reaches a threshold ``t`` is the first index where the running maximum of the
confidences reaches ``t``, so one ``maximum.accumulate`` serves every arm.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stopbandit.bandit.arms import Arm, ArmSet
from stopbandit.bandit.trace import ProbeTrace, em_of
from stopbandit.errors import InputError
from stopbandit.sim.answers import REFERENCE
from stopbandit.sim.request import SimRequest, answer_codes

_CHUNK = 2048


@dataclass(frozen=True, slots=True)
class SimOutcome:
    """What running one arm on one request produced.

    ``tokens = think_tokens + probe_tokens + answer_tokens`` (every token spent).
    """

    em: float
    tokens: int
    think_tokens: int
    probe_tokens: int
    answer_tokens: int
    stop_reason: str
    answer: str
    trace: ProbeTrace


@dataclass(frozen=True, slots=True)
class ArmOutcomes:
    """Outcomes of every arm, without traces.

    For one request the arrays have shape (n_arms,); from :func:`outcome_table`
    shape (n_requests, n_arms). ``em`` is float64 (0/1), ``tokens`` and
    ``think_tokens`` are int64.
    """

    em: np.ndarray
    tokens: np.ndarray
    think_tokens: np.ndarray


def _arm_tuple(arms: Sequence[Arm] | ArmSet) -> tuple[Arm, ...]:
    arm_list = tuple(arms)
    if not arm_list or not all(isinstance(a, Arm) for a in arm_list):
        raise InputError(f"arms must be a non-empty sequence of Arm, got {arms!r}")
    return arm_list


def _arm_arrays(arms: Sequence[Arm] | ArmSet) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds (float) and caps (int, 0 = none), shape (n_arms,)."""
    arm_list = _arm_tuple(arms)
    thr = np.array([a.threshold for a in arm_list], dtype=float)
    cap = np.array([a.max_think_tokens for a in arm_list], dtype=np.int64)
    return thr, cap


def _check_request(request: SimRequest) -> None:
    if not isinstance(request, SimRequest):
        raise InputError(f"request must be a SimRequest, got {type(request).__name__}")


def stop_of(request: SimRequest, arm: Arm) -> tuple[int, str]:
    """(stop offset, reason) of ``arm`` on ``request`` -- the rule of :func:`stopbandit.bandit.trace.stop_point`.

    The first probe reaching the threshold is found by bisection on the
    request's running maximum of confidences (the first index where the
    running maximum reaches ``t`` is the first probe whose confidence does).
    """
    spacing, length, k = request.probe_spacing, request.think_len, request.n_probes
    cap = arm.max_think_tokens
    usable = k if cap == 0 else min(k, (cap - 1) // spacing)  # probes at offsets < cap
    if arm.threshold <= 1.0 and usable > 0:
        first = bisect_left(request.running_max(), arm.threshold)
        if first < usable:
            return (first + 1) * spacing, "confidence"
    return (cap, "budget") if 0 < cap < length else (length, "end")


def run(request: SimRequest, arm: Arm) -> SimOutcome:
    """Run ``arm`` on ``request``: the outcome and the probe trace a decoder would log."""
    _check_request(request)
    if not isinstance(arm, Arm):
        raise InputError(f"arm must be an Arm, got {type(arm).__name__}")
    stop, reason = stop_of(request, arm)
    spacing = request.probe_spacing
    n_ans = request.answer_tokens
    probe_tokens = n_ans * ((stop - 1) // spacing)
    answer = request.answer_at(stop)
    trace = ProbeTrace(request.probes(min(stop // spacing, request.n_probes)), stop, reason, answer, n_ans)
    em = em_of(answer, request.reference)
    return SimOutcome(
        em=float(em) if em is not None else 0.0,
        tokens=stop + probe_tokens + n_ans,
        think_tokens=stop,
        probe_tokens=probe_tokens,
        answer_tokens=n_ans,
        stop_reason=reason,
        answer=answer,
        trace=trace,
    )


def _stops(
    running_max: np.ndarray,
    n_probes: np.ndarray,
    think_len: np.ndarray,
    spacing: np.ndarray,
    thr: np.ndarray,
    cap: np.ndarray,
) -> np.ndarray:
    """Stop offsets, shape (n, A), from running maxima of confidences, shape (n, K) (padded rows carry on).

    ``first`` = number of running-max entries below the threshold = index of
    the first probe reaching it; it counts only when below the probes usable
    under the cap.
    """
    first = (running_max[:, None, :] < thr[None, :, None]).sum(axis=2)  # (n, A)
    n = n_probes[:, None]
    usable = np.where(cap[None, :] == 0, n, np.minimum(n, (cap[None, :] - 1) // spacing[:, None]))
    by_conf = (first < usable) & (thr[None, :] <= 1.0)
    capped = (cap[None, :] > 0) & (cap[None, :] < think_len[:, None])
    fallback = np.where(capped, cap[None, :], think_len[:, None])
    return np.where(by_conf, (first + 1) * spacing[:, None], fallback)


def _table(requests: Sequence[SimRequest], thr: np.ndarray, cap: np.ndarray) -> ArmOutcomes:
    n = len(requests)
    n_probes = np.fromiter((r.n_probes for r in requests), dtype=np.int64, count=n)
    width = max(1, int(n_probes.max(initial=0)))
    conf = np.full((n, width), -1.0)
    segments = np.zeros((n, width + 1), dtype=np.int64)
    for i, r in enumerate(requests):
        k = r.n_probes
        conf[i, :k] = r.probe_confidence
        segments[i, : k + 1] = r.segment_answer
    running_max = np.maximum.accumulate(conf, axis=1)
    think_len = np.fromiter((r.think_len for r in requests), dtype=np.int64, count=n)
    spacing = np.fromiter((r.probe_spacing for r in requests), dtype=np.int64, count=n)
    stop = _stops(running_max, n_probes, think_len, spacing, thr, cap)
    seg = np.take_along_axis(segments, np.minimum(stop // spacing[:, None], n_probes[:, None]), axis=1)
    settle = np.fromiter((r.settle_offset for r in requests), dtype=np.int64, count=n)[:, None]
    relapse = np.fromiter((r.relapse_offset for r in requests), dtype=np.int64, count=n)[:, None]
    solvable = np.fromiter((r.solvable for r in requests), dtype=bool, count=n)[:, None]
    n_ans = np.fromiter((r.answer_tokens for r in requests), dtype=np.int64, count=n)[:, None]
    codes = answer_codes(stop, settle, relapse, solvable, seg)
    tokens = stop + n_ans * ((stop - 1) // spacing[:, None]) + n_ans
    return ArmOutcomes((codes == REFERENCE).astype(np.float64), tokens, stop)


def outcomes(request: SimRequest, arms: Sequence[Arm] | ArmSet) -> ArmOutcomes:
    """EM, tokens and thinking tokens of every arm on one request, arrays of shape (n_arms,).

    Equal to ``[run(request, a) for a in arms]`` field by field, without
    traces; plain Python over the arms beats array code on arrays this small.
    """
    _check_request(request)
    spacing, n_ans = request.probe_spacing, request.answer_tokens
    em, tokens, think = [], [], []
    for arm in _arm_tuple(arms):
        stop, _ = stop_of(request, arm)
        em.append(1.0 if request.answer_code(stop) == REFERENCE else 0.0)
        tokens.append(stop + n_ans * ((stop - 1) // spacing) + n_ans)
        think.append(stop)
    return ArmOutcomes(np.array(em), np.array(tokens, dtype=np.int64), np.array(think, dtype=np.int64))


def outcome_table(requests: Sequence[SimRequest], arms: Sequence[Arm] | ArmSet) -> ArmOutcomes:
    """:func:`outcomes` for many requests at once: arrays of shape (n_requests, n_arms).

    Vectorised over padded chunks of requests; this is what oracle and
    hindsight baselines over tens of thousands of requests should call.
    """
    reqs = list(requests)
    for r in reqs:
        _check_request(r)
    thr, cap = _arm_arrays(arms)
    if not reqs:
        empty_f = np.zeros((0, thr.size))
        empty_i = np.zeros((0, thr.size), dtype=np.int64)
        return ArmOutcomes(empty_f, empty_i, empty_i.copy())
    parts = [_table(reqs[i : i + _CHUNK], thr, cap) for i in range(0, len(reqs), _CHUNK)]
    return ArmOutcomes(
        np.concatenate([p.em for p in parts]),
        np.concatenate([p.tokens for p in parts]),
        np.concatenate([p.think_tokens for p in parts]),
    )


__all__ = ["ArmOutcomes", "SimOutcome", "outcome_table", "outcomes", "run", "stop_of"]
