"""Seeded streams, drift schedules and degradation."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import stopbandit.sim.answers
import stopbandit.sim.generator
from stopbandit.bandit.arms import DEFAULT_ARMS
from stopbandit.errors import ConfigError
from stopbandit.sim import Degradation, DomainShift, SimConfig, SimRequest, Simulator, outcome_table

FULL = DEFAULT_ARMS[0]


def _fingerprint(r: SimRequest) -> tuple:
    return (
        r.request_id,
        r.prompt,
        r.domain,
        r.difficulty,
        r.think_len,
        r.reference,
        r.solvable,
        r.settle_offset,
        r.relapse_offset,
        r.answer_tokens,
        r.probe_confidence.tobytes(),
        r.segment_answer.tobytes(),
    )


def test_same_seed_same_stream_however_it_is_sliced() -> None:
    a = Simulator(seed=42).take(1100)
    sim = Simulator(seed=42)
    b = list(sim.stream(7)) + sim.take(600) + list(sim.stream(493))
    assert sim.position == 1100
    assert [_fingerprint(r) for r in a] == [_fingerprint(r) for r in b]


def test_different_seeds_differ() -> None:
    a = Simulator(seed=1).take(50)
    b = Simulator(seed=2).take(50)
    assert sum(x.prompt == y.prompt for x, y in zip(a, b)) < 3
    assert [r.request_id for r in a][:2] == ["sim1-0", "sim1-1"]


def test_request_arrays_are_read_only() -> None:
    req = Simulator(seed=0).take(1)[0]
    with pytest.raises(ValueError):
        req.probe_confidence[0] = 1.0


def test_prompts_carry_noisy_difficulty_signal() -> None:
    reqs = Simulator(seed=5).take(3000)
    difficulty = np.array([r.difficulty for r in reqs])
    words = np.array([len(r.prompt.split()) for r in reqs])
    corr = np.corrcoef(np.argsort(np.argsort(difficulty)), np.argsort(np.argsort(words)))[0, 1]
    assert 0.5 < corr < 0.9  # signal, not a giveaway
    for r in reqs[:50]:
        spec = next(d for d in SimConfig().domains if d.name == r.domain)
        assert any(term in r.prompt.split() for term in spec.terms) or len(r.prompt.split()) < 12


def test_domain_shift_changes_the_mix_and_difficulty() -> None:
    cfg = SimConfig(schedule=(DomainShift(at=1500, mix={"trivia": 1.0}), DomainShift(at=3000, difficulty_shift=1.5)))
    reqs = Simulator(cfg, seed=9).take(4500)
    before, trivia_only, harder = reqs[:1500], reqs[1500:3000], reqs[3000:]
    assert {r.domain for r in before} == {"math", "science", "code", "trivia"}
    assert {r.domain for r in trivia_only} == {"trivia"}
    assert {r.domain for r in harder} == {"trivia"}  # the mix carries over when a shift leaves it out
    mean_x = [np.mean([r.difficulty for r in part]) for part in (trivia_only, harder)]
    assert mean_x[1] > mean_x[0] + 0.15
    em = [outcome_table(part, DEFAULT_ARMS).em[:, 0].mean() for part in (trivia_only, harder)]
    assert em[1] < em[0] - 0.1


@pytest.mark.parametrize("via", ["config", "method"])
def test_degradation_lowers_one_domain_from_an_index_on(via: str) -> None:
    n, start = 6000, 2000
    base = Simulator(seed=4).take(n)
    if via == "config":
        degraded = Simulator(SimConfig(degradations=(Degradation("math", start, 0.5),)), seed=4).take(n)
    else:
        sim = Simulator(seed=4)
        head = sim.take(start)
        sim.degrade("math", from_request=start, em_factor=0.5)
        degraded = head + sim.take(n - start)
    for x, y in zip(base, degraded):  # common random numbers: only solvability of late math items changes
        assert (x.prompt, x.think_len, x.probe_confidence.tobytes()) == (y.prompt, y.think_len, y.probe_confidence.tobytes())
        if y.degraded:
            assert y.domain == "math" and y.index >= start and x.solvable and not y.solvable
    em_base = outcome_table(base, [FULL, DEFAULT_ARMS[2]]).em[:, 0]
    em_deg = outcome_table(degraded, [FULL, DEFAULT_ARMS[2]]).em[:, 0]
    math_late = np.array([r.domain == "math" and r.index >= start for r in base])
    others = ~math_late
    assert em_deg[others].mean() == em_base[others].mean()
    ratio = em_deg[math_late].mean() / em_base[math_late].mean()
    assert 0.4 < ratio < 0.6


def test_degrade_cannot_rewrite_requests_already_handed_out() -> None:
    sim = Simulator(seed=0)
    sim.take(10)
    with pytest.raises(ConfigError, match="from_request must be >= 10"):
        sim.degrade("math", from_request=5, em_factor=0.5)
    with pytest.raises(ConfigError, match="unknown domain 'poetry'"):
        sim.degrade("poetry", from_request=20, em_factor=0.5)
    with pytest.raises(ConfigError, match=r"em_factor must be in \[0, 1\]"):
        sim.degrade("math", from_request=20, em_factor=1.5)


def test_stream_validates_n_eagerly() -> None:
    with pytest.raises(ConfigError, match="n must be a non-negative integer, got -1"):
        Simulator(seed=0).stream(-1)


def test_doctests() -> None:
    for module in (stopbandit.sim.answers, stopbandit.sim.generator):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0
