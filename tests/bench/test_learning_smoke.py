"""Smoke test of benchmarks/learning.py: its core on a tiny stream, structure and sanity only.

No expected figures are hard-coded: the checks are invariants that hold for
any seed (the oracle is an upper bound per request, the best static arm in
hindsight beats every static arm, nested feedback reveals more outcomes, the
Selector runs wrote one decision and one outcome per request to their store).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.learning import DRIFT_KEYS, MAIN_KEYS, MATCHED_KEYS, Plan, render, run_benchmark
from benchmarks.learning_lib import analysis
from benchmarks.learning_lib.metrics import first_sustained, gap_closed, recovery, trailing_mean
from benchmarks.learning_lib.prototypes import LenientSquareCB
from benchmarks.learning_lib.streams import ARMS

N = 1500
PLAN = Plan(n=N, seeds=(0,), held_n=100, window=500, search_n=800, search_lams=(0.25, 0.5), matched_n=800,
            protos=("nested-lenient", "nested-graph-iw10", "nested-graph-lr0.5"), jobs=1)
SELECTOR_KEYS = ("plain", "nested", "native", "nested-graph", "nested-lenient", "nested-graph-iw10",
                 "nested-graph-lr0.5")


@pytest.fixture(scope="module")
def res():
    return run_benchmark(PLAN, log=lambda _msg: None)


def test_every_policy_played_every_request(res):
    trajs = res.trajs["main"][0]
    expected = set(MAIN_KEYS) | {"nested-lenient", "nested-graph-iw10", "nested-graph-lr0.5", "oracle",
                                 "best-static"} \
        | {f"static-{a.name}" for a in ARMS}
    assert expected <= set(trajs)
    stream = res.streams["main"][0]
    rows = np.arange(N)
    for key, t in trajs.items():
        assert t.arm.shape == t.em.shape == t.tokens.shape == (N,), key
        assert set(np.unique(t.arm)) <= set(range(len(ARMS))), key
        # what the policy got is exactly the tabulated outcome of the arm it chose (sim.run == outcome_table)
        np.testing.assert_array_equal(t.em, stream.em[rows, t.arm], err_msg=key)
        np.testing.assert_array_equal(t.tokens, stream.tokens[rows, t.arm], err_msg=key)


def test_selector_runs_wrote_a_real_store(res):
    for key in SELECTOR_KEYS:
        store = res.trajs["main"][0][key].store
        assert store["decisions"] == store["outcomes"] == N, (key, store)
    drift = res.trajs["drift"][0]["nested"].store
    assert drift["lambda_changes"] >= 2  # the initial λ and the set_lambda of the schedule


def test_oracle_bounds_every_policy_and_best_static_bounds_static_arms(res):
    for section in ("main", "drift", "matched"):
        for seed, trajs in res.trajs[section].items():
            stream = res.streams[section][seed]
            r_oracle = trajs["oracle"].rewards(stream)
            for key, t in trajs.items():
                r = t.rewards(stream)
                assert np.all(r <= r_oracle + 1e-12), (section, key)
                assert r.mean() <= r_oracle.mean() + 1e-12
            best = trajs["best-static"].rewards(stream).mean()
            for a in ARMS:
                assert best >= trajs[f"static-{a.name}"].rewards(stream).mean() - 1e-12, (section, a.name)


def test_nested_learner_learns_more_outcomes_than_plain(res):
    for section in ("main", "drift"):
        trajs = res.trajs[section][0]
        assert trajs["plain"].revealed == N
        assert trajs["nested"].revealed > trajs["plain"].revealed
        assert trajs["fullinfo"].revealed == N * len(ARMS) if "fullinfo" in trajs else True


def test_gap_closed_is_zero_for_full_and_one_for_the_oracle(res):
    stream = res.streams["main"][0]
    r = stream.rewards()
    r_full, r_or = r[:, analysis.FULL], r.max(axis=1)
    assert gap_closed(r_full, r_full, r_or) == 0.0
    assert gap_closed(r_or, r_full, r_or) == pytest.approx(1.0)


def test_held_out_curves(res):
    cs = analysis.curve_stats(res.helds, res.trajs["main"], ["plain", "nested", "fullinfo", "thompson"], PLAN.lam)
    assert cs is not None and cs.at == list(PLAN.checkpoints)
    for key, v in cs.value.items():
        assert v.shape == (1, len(PLAN.checkpoints)) and np.all(np.isfinite(v)), key
        assert np.all(v <= cs.v_oracle[:, None] + 1e-12), key
        assert np.all(cs.greedy[key] <= cs.v_oracle[:, None] + 1e-12), key
    assert np.all(cs.ceiling >= cs.v_best_static - 1e-12)


def test_matched_and_drift_sections(res):
    assert min(PLAN.search_lams) <= res.lam_star <= max(PLAN.search_lams)
    assert 0.0 < res.search_target < 1.0
    assert set(MATCHED_KEYS) <= set(res.trajs["matched"][0])
    assert set(DRIFT_KEYS) <= set(res.trajs["drift"][0])
    stream = res.streams["drift"][0]
    assert stream.lam[PLAN.lam_at - 1] == PLAN.lam and stream.lam[PLAN.lam_at] == PLAN.drift_lam
    assert [lo for lo, _ in stream.phases()] == [0, PLAN.shift_at, PLAN.lam_at]


def test_render_prints_every_section(res):
    text = render(res, "python benchmarks/learning.py --test")
    for title in ("### Online reward", "### Held-out learning curves", "### Prototypes", "### Matched savings",
                  "### Drift"):
        assert title in text
    assert "Requests needed, plain vs the prototypes" in text and "Exploration's share of the plateau" in text
    assert "nan" not in text.lower()
    assert text.count("\n|---") >= 6


def test_metrics_on_known_inputs():
    x = np.arange(10, dtype=float)
    np.testing.assert_allclose(trailing_mean(x, 3)[:4], [0.0, 0.5, 1.0, 2.0])
    assert first_sustained([1, 2, 3, 4], [0.5, 0.95, 0.8, 0.92], 0.9) == 4
    assert first_sustained([1, 2, 3], [0.1, 0.2, 0.3], 0.9) is None
    regret = np.concatenate([np.full(1000, 0.1), np.full(300, 0.5), np.full(1700, 0.1)])
    rec, g_ss, dip = recovery(regret, 1000, 3000, window=100, steady=500, x=0.01, step=10)
    assert g_ss == pytest.approx(0.1) and dip == pytest.approx(0.4)
    assert rec == 400  # the trailing window leaves the bad stretch at 300 + 100


def test_lenient_prototype_is_a_distribution_that_spares_revealed_arms():
    # (the library's graph-aware SquareCB is tested in tests/bandit/test_exploration.py)
    ex = LenientSquareCB.of_arms(ARMS)
    rng = np.random.default_rng(0)
    for t in (1, 10, 1000):
        for _ in range(50):
            scores = rng.normal(size=len(ARMS)).tolist()
            p = ex.probabilities(scores, t)
            assert math.isclose(sum(p), 1.0) and min(p) >= 0.0
            best = int(np.argmax(scores))
            for a in ARMS.revealed_by(best):
                if a != best:
                    assert p[a] == 0.0  # revealed by the greedy run's trace: never explored
            assert {i for i, x in enumerate(p) if x > 0} <= {best, ARMS.most_conservative()}


def test_requests_ratio_table(res):
    cs = analysis.curve_stats(res.helds, res.trajs["main"], ["plain", "nested", "nested-graph", "fullinfo"], PLAN.lam)
    header, rows = analysis.ratio_table(cs, "plain", ["nested", "nested-graph"], (0.5, 0.9))
    assert header == ["target", "plain", "nested", "plain / nested", "nested-graph", "plain / nested-graph"]
    assert [r[0] for r in rows] == ["50% of reachable gap", "90% of reachable gap", "90% of oracle gap",
                                    "same quality as plain @end"]
    # the plain learner is at its own final value at its last checkpoint, by definition
    assert not rows[-1][1].startswith("not reached") and "–" not in rows[-1][1], rows[-1]


def test_greedy_table_splits_exploration_from_learning(res):
    keys = ["plain", "nested-graph", "nested-graph-iw10", "fullinfo"]
    cs = analysis.curve_stats(res.helds, res.trajs["main"], keys, PLAN.lam)
    header, rows = analysis.greedy_table(cs, keys, {}, last=2)
    assert header[:4] == ["policy", "served (last 2 checkpoints)", "greedy", "exploration cost"]
    assert [r[0] for r in rows] == keys
    served = {k: cs.value[k][:, -2:].mean() for k in keys}
    greedy = {k: cs.greedy[k][:, -2:].mean() for k in keys}
    for row, k in zip(rows, keys):
        assert row[1].startswith(f"{served[k]:.4f}") and row[2].startswith(f"{greedy[k]:.4f}")
        assert row[3].startswith(f"{greedy[k] - served[k]:.4f}")
    assert served["fullinfo"] == greedy["fullinfo"]  # greedy, no exploration: nothing to split


def test_learning_rate_prototype_runs_the_heads_at_the_old_default_rate():
    from stopbandit.bandit.exploration import SquareCB
    from stopbandit.bandit.policy import EM_ARGS, POLICIES, TOKEN_ARGS, make_policy

    from benchmarks.learning_lib.prototypes import register_policies

    register_policies()
    assert "heads-lr0.5" in POLICIES
    pol = make_policy("heads-lr0.5", ARMS, SquareCB(), 1000.0)
    try:
        assert " -l 0.25" in EM_ARGS and " -l 0.25" in TOKEN_ARGS  # the library default since issue 9
        args = pol.vw_args()
        assert args == {"em": EM_ARGS.replace(" -l 0.25", "") + " -l 0.5",
                        "tokens": TOKEN_ARGS.replace(" -l 0.25", "") + " -l 0.5"}
        assert args["em"].count("-l ") == 1
    finally:
        pol.close()
