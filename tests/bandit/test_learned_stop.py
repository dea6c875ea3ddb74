"""The learned stop rule: exact evaluation off traces, λ at decision time, online API, storage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stopbandit.bandit.arms import Arm, ArmSet
from stopbandit.bandit.learned_stop import PROBE_FEATURES, LearnedInputs, LearnedStop, StopData
from stopbandit.bandit.snapshot import pack, stop_rule_of
from stopbandit.bandit.stop_eval import evaluate, stop_data
from stopbandit.bandit.stoprule import ProbeBatch, stop_reason, stops
from stopbandit.bandit.trace import counterfactual
from stopbandit.errors import InputError, SnapshotError
from stopbandit.sim import SimConfig, Simulator, run

FULL = Arm("full", 1.01)
LEARNED = tuple(Arm(f"l{k:g}", 1.01, 0, 0, k) for k in (0.1, 0.5, 2.0, 8.0))
MIXED = (Arm("l1c256", 1.01, 256, 0, 1.0), Arm("l1t9", 0.9, 0, 0, 1.0), Arm("l1a3", 1.01, 0, 3, 1.0))


def _setup(n=400, seed=0, calibration="overthinking"):
    cfg = SimConfig.named(calibration)
    reqs = list(Simulator(cfg, seed=seed).stream(n))
    names = list(cfg.domain_names)
    ctx = np.zeros((n, len(names)))
    for i, r in enumerate(reqs):
        ctx[i, names.index(r.domain)] = 1.0
    traces = [run(r, FULL).trace for r in reqs]
    refs = [r.reference for r in reqs]
    rule = LearnedStop(len(names), "graded").fit(stop_data(traces[: n // 2], refs[: n // 2], ctx[: n // 2]))
    return reqs, traces, refs, ctx, rule


def test_trace_evaluation_equals_running_each_rule_on_the_request():
    reqs, traces, refs, ctx, rule = _setup()
    arms = LEARNED + MIXED
    for lam in (0.1, 1.0):
        exact = evaluate(traces, refs, arms, LearnedInputs(rule, lam, ctx))
        assert exact.known.all()
        for i in range(0, len(reqs), 7):
            r = reqs[i]
            grid = ProbeBatch.of([r.probes()])
            again = stops(grid, arms, [r.think_len], [True], [r.answer_tokens], LearnedInputs(rule, lam, ctx[i]))
            assert again.tokens[0].tolist() == exact.tokens[i].tolist()
            for j, arm in enumerate(arms):
                truth = 1.0 if r.answer_at(int(again.offset[0, j])) == r.reference else 0.0
                assert exact.em[i, j] == truth
                cf = counterfactual(traces[i], arm, LearnedInputs(rule, lam, ctx[i]))
                assert cf.tokens == exact.tokens[i, j]


def test_lambda_moves_the_stops_without_retraining():
    _, traces, refs, ctx, rule = _setup()
    before = json.dumps(rule.to_json())
    tokens = [evaluate(traces, refs, LEARNED[1:2], LearnedInputs(rule, lam, ctx)).tokens.mean() for lam in (0.0, 0.3, 3.0)]
    assert tokens[0] >= tokens[1] >= tokens[2] and tokens[0] > tokens[2]
    assert json.dumps(rule.to_json()) == before
    # higher aggressiveness stops no later, so a more aggressive learned arm is revealed by a less aggressive one
    t = evaluate(traces, refs, LEARNED, LearnedInputs(rule, 0.3, ctx)).tokens
    assert (np.diff(t, axis=1) <= 0).all()
    assert LEARNED[3].at_most_as_lenient_as(LEARNED[0]) and not LEARNED[0].at_most_as_lenient_as(LEARNED[3])
    assert all(a.at_most_as_lenient_as(FULL) and not FULL.at_most_as_lenient_as(a) for a in LEARNED)


def test_learning_beats_an_untrained_rule_on_held_out_requests():
    _, traces, refs, ctx, rule = _setup(n=800)
    held = slice(400, None)
    blank = LearnedStop(ctx.shape[1], "graded")
    arm = (Arm("l", 1.01, 0, 0, 1.0),)
    p_now, _, _ = rule.estimates(stop_data(traces[held], refs[held], ctx[held]).features)
    data = stop_data(traces[held], refs[held], ctx[held])
    brier = float(np.mean((p_now - data.correct_now) ** 2))
    brier0 = float(np.mean((blank.estimates(data.features)[0] - data.correct_now) ** 2))
    assert brier < 0.8 * brier0
    assert evaluate(traces[held], refs[held], arm, LearnedInputs(rule, 0.3, ctx[held])).tokens.mean() > 0


def test_online_stop_reason_is_the_kernel():
    reqs, traces, _, ctx, rule = _setup(n=60)
    arm = LEARNED[2]
    learned_stops = 0
    for i, r in enumerate(reqs[:30]):
        probes = r.probes()
        cf = counterfactual(traces[i], arm, LearnedInputs(rule, 0.3, ctx[i]))
        # the online check, asked after every probe, stops exactly where the trace says
        stopped = None
        for k, p in enumerate(probes):
            if stop_reason(arm, probes[: k + 1], p.offset, LearnedInputs(rule, 0.3, ctx[i])) is not None:
                stopped = p.offset
                break
        assert stopped == (cf.stop_offset if cf.reason == "learned" else None)
        learned_stops += stopped is not None
    assert learned_stops >= 5
    with pytest.raises(InputError, match="learned"):
        stop_reason(arm, reqs[0].probes(), 64)


def test_rule_is_json_in_snapshots_and_refuses_bad_state():
    _, _, _, _, rule = _setup(n=80)
    from stopbandit.bandit.exploration import exploration_from_config
    from stopbandit.bandit.policy import make_policy

    arms = ArmSet((FULL,) + LEARNED)
    policy = make_policy("heads", arms, exploration_from_config(None), 1000.0, None, None)
    packed = pack(policy, lam=0.3, feature_config={}, stop_rule=rule)
    json.dumps(packed.meta)  # plain JSON, no pickle
    back = stop_rule_of(packed.meta)
    assert back.to_json() == rule.to_json()
    assert ArmSet.of(packed.meta["arms"]) == arms
    assert stop_rule_of({"version": "x"}) is None
    bad = dict(packed.meta, stop_rule={"format": 1, "context_size": 4, "label": "graded", "l2": 1.0, "rows": 1,
                                       "weights": {"now": [0.0]}})
    with pytest.raises(SnapshotError, match="stop_rule"):
        stop_rule_of(bad)
    with pytest.raises(InputError, match="label"):
        LearnedStop(2, "vibes")
    with pytest.raises(InputError, match="context"):
        LearnedInputs(rule, 0.3, np.zeros((1, 9)))


def test_stored_state_is_bounded_and_the_precision_round_trips():
    _, traces, refs, ctx, rule = _setup(n=80)
    back = LearnedStop.from_json(json.loads(json.dumps(rule.to_json())))
    for k in ("now", "end", "rest"):
        assert (back.precision[k] == rule.precision[k]).all() and (back.w[k] == rule.w[k]).all()
    with pytest.raises(InputError, match="context_size"):  # a hostile size never reaches an allocation
        LearnedStop.from_json(dict(rule.to_json(), context_size=10**7))
    bad = rule.to_json()
    bad["precision"] = dict(bad["precision"], now=[[1.0]])
    with pytest.raises(InputError, match="precision"):
        LearnedStop.from_json(bad)
    # a second batch updates from the first one's precision: two batches land near the one fit on both
    data = stop_data(traces, refs, ctx)
    half = len(data.rest) // 2
    def part(sl):
        return StopData(data.features[sl], data.correct_now[sl], data.correct_end[sl], data.rest[sl])

    both = LearnedStop(ctx.shape[1]).fit(data)
    seq = LearnedStop(ctx.shape[1]).fit(part(slice(0, half))).fit(part(slice(half, None)))
    np.testing.assert_allclose(seq.w["rest"], both.w["rest"], rtol=1e-8, atol=1e-10)  # exact recursive least squares
    gap = np.abs(seq.w["now"] - both.w["now"]).max()
    forget = LearnedStop(ctx.shape[1]).fit(part(slice(half, None)))  # the second batch alone
    assert gap < 0.5 * np.abs(forget.w["now"] - both.w["now"]).max()


def test_agreement_rule_reads_the_end_as_certain():
    """With agreement labels the final answer is right by construction: p_end is 1 before and after fitting,
    so the rule's gain is exactly the chance that the trial answer is not yet the final one."""
    rule = LearnedStop(0, "agreement")
    x = np.zeros((20, len(PROBE_FEATURES)))
    x[:, 0] = 1.0
    assert rule.estimates(x)[1] == pytest.approx(np.ones(20), abs=1e-9)
    now = np.array([1.0] * 17 + [0.0] * 3)
    rule.fit(StopData(x, now, np.ones(20), np.full(20, 6.0)))
    p_now, p_end, rest = rule.estimates(x)
    assert p_end == pytest.approx(np.ones(20), abs=1e-9)
    assert 0.75 < p_now[0] < 0.95
    # a trial answer that is the final one 17 times in 20 does not stop a run whose rest is free (λ = 0) ...
    assert not rule.fires(x, np.array([1.0]), 0.0, 1000.0).any()
    # ... and does once the rest costs more than the 1 − p_now it would gain
    assert rule.fires(x, np.array([1.0]), 1.0, rest[0] / (2.0 * (1.0 - p_now[0]))).all()
