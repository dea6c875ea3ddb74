"""The stop rule: one kernel for traces, the simulator, the replay log, the decoder and the online check.

Agreement arms (Dynasor's certainty window) are checked against a plain
reading of the rule written here, independently of the kernel.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from stopbandit.bandit.arms import DEFAULT_ARMS, Arm, ArmSet, arms_from_config
from stopbandit.bandit.stoprule import ProbeBatch, stop_reason, stops, streaks
from stopbandit.bandit.trace import Probe, ProbeTrace, answer_key, counterfactual, em_of, revealed_outcomes
from stopbandit.errors import ConfigError, InputError
from stopbandit.sim import SimConfig, Simulator, outcome_table, outcomes, run

AGREE_ARMS = (
    Arm("agree2", 1.01, 0, 2),
    Arm("agree3", 1.01, 0, 3),
    Arm("agree3_t90", 0.90, 0, 3),
    Arm("agree2_cap256", 0.97, 256, 2),
    Arm("agree4_cap200", 1.01, 200, 4),  # off the probe grid
    Arm("agree5", 0.75, 0, 5),
)
ARMS = DEFAULT_ARMS + AGREE_ARMS


def _plain_stop(probes, arm, horizon, ended):
    """The rule read literally: first firing probe under the cap, else budget, else end (None: unknown)."""
    for j, p in enumerate(probes):
        if p.offset >= arm.cap:
            break
        if p.confidence >= arm.threshold:
            return p.offset, "confidence"
        k = arm.agreement
        if k and j + 1 >= k and len({q.answer.strip() for q in probes[j + 1 - k : j + 1]}) == 1:
            return p.offset, "agreement"
    if arm.cap < horizon or (arm.cap == horizon and not ended):
        return int(arm.cap), "budget"
    return (horizon, "end") if ended else None


# --------------------------------------------------------------------------- arms


@pytest.mark.parametrize("value, message", [
    (1, r"agreement must be 0 \(off\) or >= 2 consecutive probes, got 1"),
    (-2, r"agreement must be 0 \(off\) or >= 2 consecutive probes, got -2"),
    (2.0, r"agreement must be an integer, got 2.0"),
    (True, r"agreement must be an integer, got True"),
    ("3", r"agreement must be an integer, got '3'"),
])
def test_invalid_agreement_is_refused_naming_the_field(value, message):
    with pytest.raises(ConfigError, match=message):
        Arm("a", 0.9, 0, value)


def test_agreement_round_trips_and_is_omitted_when_off():
    arm = Arm("k3", 0.9, 128, 3)
    assert arm.to_dict() == {"name": "k3", "threshold": 0.9, "max_think_tokens": 128, "agreement": 3}
    assert Arm.from_dict(arm.to_dict()) == arm
    assert Arm("plain", 0.9).to_dict() == {"name": "plain", "threshold": 0.9, "max_think_tokens": 0}
    assert Arm.from_dict({"name": "plain", "threshold": 0.9}).agreement == 0
    arms = arms_from_config([{"name": "full", "threshold": 1.01}, {"name": "k3", "threshold": 1.01, "agreement": 3}])
    assert arms[1].agreement == 3


def test_toml_arms_take_agreement(tmp_path):
    from stopbandit.config import load_config

    path = tmp_path / "c.toml"
    path.write_text('[[arms]]\nname = "full"\nthreshold = 1.01\n\n'
                    '[[arms]]\nname = "dynasor"\nthreshold = 1.01\nagreement = 3\n')
    config = load_config(path)
    assert [a.agreement for a in config.arms] == [0, 3]


@pytest.mark.parametrize("a, b, stricter", [
    (Arm("a", 0.9, 0, 2), Arm("b", 0.9, 0, 3), True),
    (Arm("a", 0.9, 0, 3), Arm("b", 0.9, 0, 2), False),
    (Arm("a", 0.9, 0, 3), Arm("b", 0.9, 0, 0), True),  # b never stops on agreement
    (Arm("a", 0.9, 0, 0), Arm("b", 0.9, 0, 3), False),  # b may stop on agreement before a
    (Arm("a", 0.95, 0, 2), Arm("b", 0.9, 0, 3), False),
    (Arm("a", 0.9, 512, 2), Arm("b", 0.9, 256, 3), False),
    (Arm("a", 0.9, 256, 3), Arm("b", 0.97, 512, 3), True),
])
def test_strictness_order_with_agreement(a, b, stricter):
    assert a.at_most_as_lenient_as(b) is stricter


def test_reveal_structure_and_most_conservative_with_agreement():
    arms = ArmSet((Arm("full", 1.01), Arm("k2", 1.01, 0, 2), Arm("k4", 1.01, 0, 4), Arm("t90", 0.9)))
    assert arms.revealed_by(0) == [0, 1, 2, 3]
    assert arms.revealed_by(2) == [1, 2]
    assert arms.revealed_by(1) == [1]
    assert arms.revealed_by(3) == [3]
    assert arms.most_conservative() == 0


# --------------------------------------------------------------------------- kernel


def test_streaks_count_equal_answers_within_each_run_only():
    event = np.array([0, 0, 0, 1, 1, 2])
    assert streaks(["x", " x", "y", "y", "y", "y"], event).tolist() == [1, 2, 1, 1, 2, 1]
    assert streaks(np.array([5, 5, 5, 5, 6, 6]), event).tolist() == [1, 2, 3, 1, 1, 1]
    assert streaks([], np.zeros(0, dtype=np.int64)).tolist() == []


def _probes(*rows):
    return tuple(Probe(o, c, a, t) for o, c, a, t in rows)


def test_stop_reason_online():
    probes = _probes((8, 0.2, "4", 2), (16, 0.3, "5", 2), (24, 0.3, "5", 2), (32, 0.95, "5", 2))
    assert stop_reason(Arm("k2", 1.01, 0, 2), probes[:2], 16) is None
    assert stop_reason(Arm("k2", 1.01, 0, 2), probes[:3], 24) == "agreement"
    assert stop_reason(Arm("k3", 1.01, 0, 3), probes[:3], 24) is None
    assert stop_reason(Arm("k3", 1.01, 0, 3), probes, 32) == "agreement"
    assert stop_reason(Arm("t90", 0.9), probes, 32) == "confidence"
    assert stop_reason(Arm("t90k3", 0.9, 0, 3), probes, 32) == "confidence"  # both fire: confidence
    assert stop_reason(Arm("cap20", 1.01, 20), probes[:2], 19) is None
    assert stop_reason(Arm("cap20", 1.01, 20), probes[:2], 20) == "budget"
    assert stop_reason(Arm("cap24k2", 1.01, 24, 2), probes[:3], 24) == "budget"  # a probe at the cap never fires
    assert stop_reason(Arm("none", 1.01), (), 0) is None


def test_kernel_equals_the_plain_rule_on_random_traces():
    rng = np.random.default_rng(0)
    arms = ARMS + (Arm("cap24", 0.5, 24, 2), Arm("cap7", 1.01, 7, 3))
    runs, horizons, ended = [], [], []
    for _ in range(400):
        n = int(rng.integers(0, 9))
        offsets = np.sort(rng.choice(np.arange(1, 60), size=n, replace=False)) if n else []
        runs.append(_probes(*[(int(o), float(np.round(rng.random(), 2)), str(rng.integers(0, 2)), int(rng.integers(1, 4)))
                              for o in offsets]))
        horizons.append(int(offsets[-1]) + int(rng.integers(0, 3)) if n else int(rng.integers(0, 30)))
        ended.append(bool(rng.random() < 0.5))
    found = stops(ProbeBatch.of(runs), arms, horizons, ended, 3)
    for e, run_ in enumerate(runs):
        for col, arm in enumerate(arms):
            want = _plain_stop(run_, arm, horizons[e], ended[e])
            if want is None:
                assert found.reason[e, col] == 0
                continue
            assert (int(found.offset[e, col]), ["", "confidence", "budget", "end", "agreement"][found.reason[e, col]]) == want


# --------------------------------------------------------------------------- consumers


@pytest.fixture(scope="module")
def requests():
    return Simulator(seed=21).take(500) + Simulator(SimConfig(min_think_tokens=1), seed=22).take(100)


def test_simulator_stops_agreement_arms_by_the_plain_rule(requests):
    stopped_on_agreement = 0
    for req in requests:
        for arm in AGREE_ARMS:
            out = run(req, arm)
            want = _plain_stop(req.probes(), arm, req.think_len, True)
            assert (out.think_tokens, out.stop_reason) == want, (req.request_id, arm.name)
            assert out.tokens == out.trace.total_tokens
            stopped_on_agreement += out.stop_reason == "agreement"
    assert stopped_on_agreement > 100


def test_outcome_table_and_outcomes_equal_runs_with_agreement_arms(requests):
    table = outcome_table(requests, ARMS)
    for i, req in enumerate(requests[:200]):
        one = outcomes(req, ARMS)
        for k, arm in enumerate(ARMS):
            out = run(req, arm)
            assert (table.em[i, k], table.tokens[i, k], table.think_tokens[i, k]) == (out.em, out.tokens, out.think_tokens)
            assert (one.em[k], one.tokens[k], one.think_tokens[k]) == (out.em, out.tokens, out.think_tokens)


def test_lenient_trace_reveals_stricter_agreement_arms_exactly(requests):
    checked = 0
    for req in requests:
        reruns = {a.name: run(req, a) for a in ARMS}
        for lead in ARMS:
            stored = ProbeTrace.from_json(reruns[lead.name].trace.to_json())
            revealed = revealed_outcomes(stored, ARMS, req.reference)
            for k, arm in enumerate(ARMS):
                cf = counterfactual(stored, arm)
                assert (k in revealed) == (cf is not None)
                if not arm.at_most_as_lenient_as(lead):
                    if cf is not None:  # revealed anyway: then exactly right, never a guess
                        rb = reruns[arm.name]
                        assert (cf.stop_offset, cf.tokens, em_of(cf.answer, req.reference)) == (
                            rb.think_tokens, rb.tokens, rb.em)
                    continue
                rb = reruns[arm.name]
                if cf is None:
                    assert arm.max_think_tokens % req.probe_spacing != 0  # only off-grid caps stay unknown
                    continue
                assert (cf.stop_offset, cf.tokens, em_of(cf.answer, req.reference), cf.reason) == (
                    rb.think_tokens, rb.tokens, rb.em, rb.stop_reason), (req.request_id, lead.name, arm.name)
                checked += 1
    assert checked > 10_000


def test_agreement_stop_reason_is_a_valid_trace_reason():
    trace = ProbeTrace(_probes((8, 0.1, "a", 1), (16, 0.1, "a", 1)), 16, "agreement", "a", 1)
    assert ProbeTrace.from_json(trace.to_json()) == trace
    with pytest.raises(InputError, match="stop_reason must be one of confidence/agreement/budget/end"):
        ProbeTrace((), 3, "tired", "a", 1)
    # hashed answers agree exactly when the texts do: the stored form reveals the same stop
    cf = counterfactual(trace.hashed(), Arm("k2", 1.01, 0, 2))
    assert cf is not None and cf.answer == answer_key("a") and cf.reason == "agreement"


def test_replay_reveal_of_stored_traces_covers_agreement_arms(requests):
    from stopbandit.replay.reveal import reveal_row, reveal_rows

    traces, refs = [], []
    for req in requests[:300]:
        for lead in (DEFAULT_ARMS[0], AGREE_ARMS[1], DEFAULT_ARMS[2]):
            traces.append(run(req, lead).trace.hashed().to_json())
            refs.append(answer_key(req.reference))
    em, tok, ok = reveal_rows(traces, refs, ARMS)
    assert ok.all()
    for i, (tr, ref) in enumerate(zip(traces, refs)):
        row = reveal_row(tr, ref, ARMS)
        hashed = ProbeTrace.from_json(tr)
        for k, arm in enumerate(ARMS):
            cf = counterfactual(hashed, arm)
            want = None if cf is None else (em_of(cf.answer, ref), cf.tokens)
            assert row[k] == want
            got = None if math.isnan(em[i, k]) else (em[i, k], tok[i, k])
            assert got == want


# --------------------------------------------------------------------------- scalar form


def _random_run(rng, n_probes, answers_as_codes):
    """One run's probes: non-decreasing offsets (ties and zero included), confidences with NaN and exact ties."""
    offsets = np.sort(rng.choice([0, 64, 128, 200, 256, 256, 300, 512, 1024], size=n_probes)).tolist()
    conf = rng.choice([0.0, 0.5, 0.75, 0.9, 0.95, 0.97, 0.99, 1.0, float("nan")], size=n_probes).tolist()
    conf = [c if rng.random() < 0.6 else float(rng.random()) for c in conf]
    tokens = rng.integers(0, 12, size=n_probes).tolist()
    codes = rng.integers(0, 3, size=n_probes)
    answers = codes if answers_as_codes else [f" {c} " if rng.random() < 0.3 else str(c) for c in codes.tolist()]
    return offsets, conf, tokens, answers


def _equal(a, b):
    for field in ("offset", "reason", "probe", "known", "tokens"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and x.shape == y.shape, field
        assert np.array_equal(x, y), (field, x, y)


def test_scalar_form_equals_the_batch_kernel_on_random_and_edge_runs():
    from stopbandit.bandit.stoprule import _rules, _stops_batch, _stops_one

    rng = np.random.default_rng(7)
    arm_pool = ARMS + (Arm("cap0_edge", 1.01, 64), Arm("cap_at_probe", 0.5, 256), Arm("t_low", 1e-9, 0),
                       Arm("cap1", 0.99, 1, 2))
    checked = 0
    for case in range(3000):
        n_probes = int(rng.integers(0, 9))
        offsets, conf, tokens, answers = _random_run(rng, n_probes, answers_as_codes=bool(case % 2))
        last = offsets[-1] if offsets else 0
        horizon = int(rng.choice([last, last + 1, last + 100, 256, 1024, 0]) if case % 5 else last)
        horizon = max(horizon, last)
        ended = bool(rng.integers(0, 2))
        final = int(rng.integers(0, 20))
        k = int(rng.integers(0, len(arm_pool) + 1))
        arms = tuple(arm_pool[i] for i in rng.permutation(len(arm_pool))[:k])
        batch = ProbeBatch(offsets, conf, tokens, [n_probes], answers)
        want = _stops_batch(batch, arms, _rules(arms), [horizon], [ended], [final], None)
        _equal(_stops_one(ProbeBatch(offsets, conf, tokens, [n_probes], answers), arms, horizon, ended, final), want)
        _equal(stops(ProbeBatch(offsets, conf, tokens, [n_probes], answers), arms, [horizon], [ended], [final]), want)
        checked += 1
    assert checked == 3000


def test_scalar_form_equals_the_batch_kernel_on_simulated_requests_and_traces(requests):
    from stopbandit.bandit.stoprule import _rules, _stops_batch
    from stopbandit.bandit.trace import _reveal
    from stopbandit.sim.outcome import _grid

    arms = tuple(ARMS)
    for r in requests[:150]:
        grid = _grid(r)
        _equal(stops(grid, arms, [r.think_len], [True], [r.answer_tokens]),
               _stops_batch(grid, arms, _rules(arms), [r.think_len], [True], [r.answer_tokens], None))
        trace = run(r, DEFAULT_ARMS[0]).trace
        batch = ProbeBatch.of([trace.probes])
        _equal(_reveal(trace, arms), _stops_batch(batch, arms, _rules(arms), [trace.stop_offset],
                                                  [trace.stop_reason == "end"], [trace.answer_tokens], None))


def test_scalar_form_refuses_what_the_batch_refuses():
    batch = ProbeBatch([0, 64], [0.1, 0.2], [3, 3], [2])  # no trial answers
    with pytest.raises(ValueError, match="agreement needs the trial answers of all 2 probes, got 0"):
        stops(batch, (Arm("agree2", 1.01, 0, 2),), [64], [True])
