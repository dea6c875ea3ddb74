"""The nested-feedback invariant: a lenient run's trace reveals every stricter arm exactly."""

from __future__ import annotations

import numpy as np
import pytest

from stopbandit.bandit.arms import DEFAULT_ARMS, Arm
from stopbandit.bandit.trace import ProbeTrace, counterfactual, em_of, stop_point
from stopbandit.errors import InputError
from stopbandit.sim import SimConfig, SimRequest, Simulator, outcome_table, outcomes, run

SPACING = 64
EXTRA_ARMS = (
    Arm("cap64", 0.5, 64),
    Arm("cap100", 0.75, 100),  # off the probe grid
    Arm("cap256", 0.90, 256),
    Arm("cap200", 0.97, 200),  # off the probe grid
    Arm("cap512_full", 1.01, 512),
    Arm("cap1024", 1.01, 1024),
    Arm("t050", 0.50, 0),
    Arm("t099_cap2048", 0.99, 2048),
)
ARMS = DEFAULT_ARMS + EXTRA_ARMS


@pytest.fixture(scope="module")
def requests() -> list[SimRequest]:
    # a few very short items too (no probe at all, caps beyond the end)
    short = Simulator(SimConfig(min_think_tokens=1), seed=11).take(200)
    return Simulator(seed=3).take(1200) + short


def _key(stop: int, tokens: int, em: float | None, reason: str) -> tuple:
    return stop, tokens, em, reason


def test_trace_of_lenient_run_reveals_every_stricter_arm_exactly(requests: list[SimRequest]) -> None:
    checked = unrevealed = 0
    for req in requests:
        runs = [run(req, a) for a in ARMS]
        for a, ra in zip(ARMS, runs):
            stored = ProbeTrace.from_json(ra.trace.to_json())
            for b, rb in zip(ARMS, runs):
                if not b.at_most_as_lenient_as(a):
                    continue
                cf = counterfactual(stored, b)
                if cf is None:
                    # only an off-grid cap short of the logged stop may stay unknown ...
                    assert b.max_think_tokens % SPACING != 0, (req.request_id, a, b)
                    assert stop_point(stored, b) is None
                    unrevealed += 1
                    continue
                assert _key(cf.stop_offset, cf.tokens, em_of(cf.answer, req.reference), cf.reason) == _key(
                    rb.think_tokens, rb.tokens, rb.em, rb.stop_reason
                ), (req.request_id, a, b)
                hashed = counterfactual(stored.hashed(), b)  # the compact stored form reveals the same EM
                assert hashed is not None and em_of(hashed.answer, req.reference) == rb.em
                checked += 1
    assert checked > 50_000
    assert unrevealed > 0  # the off-grid caps did exercise the "unknown" branch


def test_run_accounts_every_token(requests: list[SimRequest]) -> None:
    for req in requests[:300]:
        for arm in ARMS:
            out = run(req, arm)
            assert out.tokens == out.think_tokens + out.probe_tokens + out.answer_tokens
            assert out.tokens == out.trace.total_tokens
            assert out.probe_tokens == req.answer_tokens * ((out.think_tokens - 1) // SPACING)
            assert out.trace.answer == out.answer == req.answer_at(out.think_tokens)
            assert out.em == em_of(out.answer, req.reference)
            assert 0 < out.think_tokens <= req.think_len
            if arm.max_think_tokens:
                assert out.think_tokens <= arm.max_think_tokens
            if out.stop_reason == "confidence":
                assert out.trace.probes[-1].offset == out.think_tokens
                assert out.trace.probes[-1].confidence >= arm.threshold


def test_full_arm_runs_to_the_end_and_answers_per_solvability(requests: list[SimRequest]) -> None:
    for req in requests:
        out = run(req, DEFAULT_ARMS[0])
        assert out.stop_reason == "end" and out.think_tokens == req.think_len
        assert len(out.trace.probes) == req.n_probes
        expect = 1.0 if req.solvable and req.relapse_offset > req.think_len else 0.0
        assert out.em == expect


def test_outcomes_and_table_match_run(requests: list[SimRequest]) -> None:
    table = outcome_table(requests, ARMS)
    assert table.em.shape == table.tokens.shape == (len(requests), len(ARMS))
    for i, req in enumerate(requests):
        one = outcomes(req, ARMS)
        runs = [run(req, a) for a in ARMS]
        np.testing.assert_array_equal(one.em, [r.em for r in runs])
        np.testing.assert_array_equal(one.tokens, [r.tokens for r in runs])
        np.testing.assert_array_equal(one.think_tokens, [r.think_tokens for r in runs])
        np.testing.assert_array_equal(table.em[i], one.em)
        np.testing.assert_array_equal(table.tokens[i], one.tokens)
        np.testing.assert_array_equal(table.think_tokens[i], one.think_tokens)


def test_confidence_is_a_function_of_request_and_offset(requests: list[SimRequest]) -> None:
    """Greedy semantics: every arm sees the same probe at the same offset."""
    req = max(requests, key=lambda r: r.n_probes)
    by_offset: dict[int, tuple[float, str]] = {}
    for arm in ARMS:
        for p in run(req, arm).trace.probes:
            seen = by_offset.setdefault(p.offset, (p.confidence, p.answer))
            assert seen == (p.confidence, p.answer)
            assert 0.0 <= p.confidence <= 1.0 and round(p.confidence, 6) == p.confidence


def test_wrong_answers_never_match_the_reference(requests: list[SimRequest]) -> None:
    for req in requests[:400]:
        for offset in range(1, req.think_len + 1, 37):
            answer = req.answer_at(offset)
            correct = offset >= req.settle_offset and req.solvable and offset < req.relapse_offset
            assert (answer.strip() == req.reference) == correct


def test_empty_table_and_bad_inputs() -> None:
    empty = outcome_table([], DEFAULT_ARMS)
    assert empty.em.shape == (0, len(DEFAULT_ARMS))
    req = Simulator(seed=0).take(1)[0]
    with pytest.raises(InputError, match="arm must be an Arm"):
        run(req, "balanced")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="request must be a SimRequest"):
        run("r-1", DEFAULT_ARMS[0])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="arms must be a non-empty sequence of Arm"):
        outcomes(req, [])
