"""Running an arm on a simulated request: stop point, tokens, EM and probe trace.

The stop rule and the token accounting are those of
:mod:`stopbandit.bandit.stoprule`, applied to the request's probe grid (the
whole reasoning is known, so every stop is known):

* stop at the first probe ``k`` with offset ``k·N < cap`` whose confidence
  reaches the arm's threshold (reason ``confidence``) or whose trial answer
  ends a run of ``agreement`` equal answers (``agreement``); otherwise at the
  cap when ``cap < think_len`` (``budget``); otherwise at ``think_len`` (``end``);
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
many arms (and requests) at once without building traces: one batch of the
stop-rule kernel over the requests' flattened probe grids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stopbandit.bandit.arms import Arm, ArmSet
from stopbandit.bandit.learned_stop import LearnedInputs
from stopbandit.bandit.stoprule import REASON_NAMES, ProbeBatch, Stops, stops
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


def _check_request(request: SimRequest) -> None:
    if not isinstance(request, SimRequest):
        raise InputError(f"request must be a SimRequest, got {type(request).__name__}")


def _probe_batch(requests: Sequence[SimRequest]) -> ProbeBatch:
    """The requests' probe grids as one :class:`ProbeBatch` (answers as codes, built only for agreement arms)."""
    n = len(requests)
    count = np.fromiter((r.n_probes for r in requests), dtype=np.int64, count=n)
    total = int(count.sum())
    if n == 1:
        r = requests[0]
        offsets, conf = r.probe_offsets, r.probe_confidence
        tokens = np.full(total, r.answer_tokens, dtype=np.int64)
    else:
        offsets = np.concatenate([r.probe_offsets for r in requests]) if total else np.zeros(0, np.int64)
        conf = np.concatenate([r.probe_confidence for r in requests]) if total else np.zeros(0)
        tokens = np.repeat(np.fromiter((r.answer_tokens for r in requests), dtype=np.int64, count=n), count)

    def codes() -> np.ndarray:
        seg = np.concatenate([r.segment_answer[1 : r.n_probes + 1] for r in requests]) if total else np.zeros(0, np.int64)

        def per_probe(values) -> np.ndarray:
            return np.repeat(np.fromiter(values, dtype=np.int64, count=n), count)

        settle = per_probe(r.settle_offset for r in requests)
        relapse = per_probe(r.relapse_offset for r in requests)
        solvable = np.repeat(np.fromiter((r.solvable for r in requests), dtype=bool, count=n), count)
        return answer_codes(offsets, settle, relapse, solvable, seg)

    return ProbeBatch(offsets, conf, tokens, count, codes)


def _grid(request: SimRequest) -> ProbeBatch:
    """The request's own probe batch, built once (runs of many arms on one request share it)."""
    batch = request._cache.get("probe_batch")
    if batch is None:
        batch = request._cache["probe_batch"] = _probe_batch([request])
    return batch


def _stops_of(request: SimRequest, arms: Sequence[Arm], learned: LearnedInputs | None = None) -> Stops:
    return stops(_grid(request), arms, [request.think_len], [True], [request.answer_tokens], learned=learned)


def stop_of(request: SimRequest, arm: Arm) -> tuple[int, str]:
    """(stop offset, reason) of ``arm`` on ``request``: the stop-rule kernel on the request's probe grid."""
    found = _stops_of(request, (arm,))
    return int(found.offset[0, 0]), REASON_NAMES[int(found.reason[0, 0])]


def run(request: SimRequest, arm: Arm, learned: LearnedInputs | None = None) -> SimOutcome:
    """Run ``arm`` on ``request``: the outcome and the probe trace a decoder would log.

    ``learned`` (the learned stop rule, λ and the request's context row) is needed when ``arm`` stops on it.
    """
    _check_request(request)
    if not isinstance(arm, Arm):
        raise InputError(f"arm must be an Arm, got {type(arm).__name__}")
    found = _stops_of(request, (arm,), learned)
    stop, reason, tokens = int(found.offset[0, 0]), REASON_NAMES[int(found.reason[0, 0])], int(found.tokens[0, 0])
    n_ans = request.answer_tokens
    answer = request.answer_at(stop)
    trace = ProbeTrace(request.probes(min(stop // request.probe_spacing, request.n_probes)), stop, reason, answer, n_ans)
    em = em_of(answer, request.reference)
    return SimOutcome(
        em=float(em) if em is not None else 0.0,
        tokens=tokens,
        think_tokens=stop,
        probe_tokens=tokens - stop - n_ans,
        answer_tokens=n_ans,
        stop_reason=reason,
        answer=answer,
        trace=trace,
    )


def _table(requests: Sequence[SimRequest], arms: tuple[Arm, ...]) -> ArmOutcomes:
    n = len(requests)
    found = stops(_probe_batch(requests), arms,
                  np.fromiter((r.think_len for r in requests), dtype=np.int64, count=n), np.ones(n, dtype=bool),
                  np.fromiter((r.answer_tokens for r in requests), dtype=np.int64, count=n))
    stop = found.offset
    n_probes = np.fromiter((r.n_probes for r in requests), dtype=np.int64, count=n)
    width = max(1, int(n_probes.max(initial=0)))
    segments = np.zeros((n, width + 1), dtype=np.int64)
    for i, r in enumerate(requests):
        segments[i, : r.n_probes + 1] = r.segment_answer
    spacing = np.fromiter((r.probe_spacing for r in requests), dtype=np.int64, count=n)
    seg = np.take_along_axis(segments, np.minimum(stop // spacing[:, None], n_probes[:, None]), axis=1)
    settle = np.fromiter((r.settle_offset for r in requests), dtype=np.int64, count=n)[:, None]
    relapse = np.fromiter((r.relapse_offset for r in requests), dtype=np.int64, count=n)[:, None]
    solvable = np.fromiter((r.solvable for r in requests), dtype=bool, count=n)[:, None]
    codes = answer_codes(stop, settle, relapse, solvable, seg)
    return ArmOutcomes((codes == REFERENCE).astype(np.float64), found.tokens, stop)


def outcomes(request: SimRequest, arms: Sequence[Arm] | ArmSet) -> ArmOutcomes:
    """EM, tokens and thinking tokens of every arm on one request, arrays of shape (n_arms,).

    Equal to ``[run(request, a) for a in arms]`` field by field, without traces.
    """
    _check_request(request)
    arm_list = _arm_tuple(arms)
    found = _stops_of(request, arm_list)
    stop = found.offset[0]
    em = np.array([1.0 if request.answer_code(int(s)) == REFERENCE else 0.0 for s in stop.tolist()])
    return ArmOutcomes(em, found.tokens[0].copy(), stop.copy())


def outcome_table(requests: Sequence[SimRequest], arms: Sequence[Arm] | ArmSet) -> ArmOutcomes:
    """:func:`outcomes` for many requests at once: arrays of shape (n_requests, n_arms).

    Vectorised over padded chunks of requests; this is what oracle and
    hindsight baselines over tens of thousands of requests should call.
    """
    reqs = list(requests)
    for r in reqs:
        _check_request(r)
    arm_list = _arm_tuple(arms)
    if not reqs:
        empty_f = np.zeros((0, len(arm_list)))
        empty_i = np.zeros((0, len(arm_list)), dtype=np.int64)
        return ArmOutcomes(empty_f, empty_i, empty_i.copy())
    parts = [_table(reqs[i : i + _CHUNK], arm_list) for i in range(0, len(reqs), _CHUNK)]
    return ArmOutcomes(
        np.concatenate([p.em for p in parts]),
        np.concatenate([p.tokens for p in parts]),
        np.concatenate([p.think_tokens for p in parts]),
    )


__all__ = ["ArmOutcomes", "SimOutcome", "outcome_table", "outcomes", "run", "stop_of"]
