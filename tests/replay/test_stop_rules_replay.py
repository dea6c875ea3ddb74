"""A bandit over stop policies end to end on the simulator, and the stop rules read exactly off its log:
``replay train`` trains and stores the learned rule, ``replay evaluate``/``sweep`` show the exact trace
evaluation next to the off-policy estimates."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from stopbandit import Selector
from stopbandit.bandit.arms import STOP_POLICY_ARMS
from stopbandit.bandit.learned_stop import LearnedInputs
from stopbandit.bandit.snapshot import stop_rule_of
from stopbandit.bandit.stop_eval import evaluate
from stopbandit.bandit.trace import answer_key, revealed_outcomes
from stopbandit.config import LearningConfig
from stopbandit.replay.cli_commands import replay
from stopbandit.replay.stop_rules import traced_events
from stopbandit.replay.store import ReplayStore
from stopbandit.sim import SimConfig, Simulator, run

N = 360


def _cli(*args: str) -> dict:
    res = CliRunner().invoke(replay, [*args, "--json", "--no-progress", "--jobs", "1"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The stop-policy bandit serving simulated requests: the simulator runs each chosen policy (learned ones
    with the Selector's rule at the decision's λ), and every reward carries the run's trace and reference."""
    url = f"sqlite:///{tmp_path_factory.mktemp('stoppol') / 'log.db'}"
    reqs = list(Simulator(SimConfig.named("overthinking"), seed=11).stream(N))
    chosen, revealed = [], []
    with Selector.open(url, arms="stop-policies", lam=0.3, seed=4, learning=LearningConfig(stop_batch=16),
                       checkpoint_every=0, checkpoint_interval_s=0) as sel:
        for r in reqs:
            d = sel.choose(r.prompt, domain=r.domain)
            inputs = sel.stop_inputs(d)
            out = run(r, d.arm, inputs if d.arm.learned else None)
            # nested feedback: the outcome of every stop policy this trace reveals, exactly
            got = revealed_outcomes(out.trace, sel.arms.arms, r.reference, inputs)
            revealed.append(len(got))
            sel.reward(d.decision_id, em=out.em, tokens=out.tokens, trace=out.trace, reference=r.reference)
            chosen.append(d.arm.name)
        rule_rows = sel.stop_learner.rule.rows
        version = sel.snapshot()
        sel.flush()
    return url, reqs, chosen, revealed, rule_rows, version


def test_the_bandit_serves_every_kind_of_stop_policy_and_traces_reveal_the_rest(served):
    url, reqs, chosen, revealed, rule_rows, version = served
    kinds = {name.rstrip("0123456789.") for name in chosen}
    assert {"full", "deer", "agree", "budget", "learned"} <= kinds
    assert rule_rows > 0  # the rule was trained online while serving
    assert max(revealed) == len(STOP_POLICY_ARMS)  # a full run reveals every stop policy
    assert np.mean(revealed) > 2.0  # nested feedback: most runs reveal more than their own policy
    store = ReplayStore(url)
    try:
        meta = store.get_snapshot(version).meta
    finally:
        store.dispose()
    assert stop_rule_of(meta).rows == rule_rows


def test_replay_evaluate_shows_the_exact_evaluation_next_to_the_estimates(served):
    url, reqs, chosen, _, _, version = served
    out = _cli("evaluate", "--db", url, "--policy", version, "--lam", "0.3")
    assert {"ips", "dr", "graph-ips", "graph-dr"} <= set(out["estimates"])
    exact = out["exact_stop_rules"]
    assert exact["traced_events"] == N and exact["graded_events"] == N
    rules = {r["rule"]: r for r in exact["rules"]}
    assert set(rules) == {a.name for a in STOP_POLICY_ARMS}
    # exact = the kernel on the stored traces: recompute each rule's mean EM on the common events directly
    store = ReplayStore(url)
    try:
        rule = stop_rule_of(store.get_snapshot(version).meta)
    finally:
        store.dispose()
    store = ReplayStore(url)
    try:
        ev = traced_events(store)
    finally:
        store.dispose()
    assert ev.references == [answer_key(r.reference) for r in reqs]
    direct = evaluate(ev.traces, ev.references, STOP_POLICY_ARMS, LearnedInputs(rule, 0.3, ev.context))
    known = direct.known.all(axis=1)
    assert exact["common_events"] == int(known.sum()) > 0
    for j, arm in enumerate(STOP_POLICY_ARMS):
        assert rules[arm.name]["revealed"] == int(direct.known[:, j].sum())
        assert rules[arm.name]["common_on"]["em"]["mean"] == pytest.approx(direct.em[known, j].mean(), abs=1e-12)
        assert rules[arm.name]["common_on"]["tokens"]["mean"] == pytest.approx(direct.tokens[known, j].mean())
    # and the traces' own requests agree: on a full-run trace, the revealed EM is the simulator's truth
    ctx = ev.context
    for i in np.flatnonzero(known)[:40]:
        for j, arm in enumerate(STOP_POLICY_ARMS):
            truth = run(reqs[i], arm, LearnedInputs(rule, 0.3, ctx[i]) if arm.learned else None)
            assert direct.em[i, j] == truth.em and direct.tokens[i, j] == truth.tokens


def test_replay_train_stores_the_learned_rule_and_sweep_shows_it_per_lambda(served):
    url, *_ = served
    out = _cli("train", "--db", url, "--test-frac", "0.3", "--lam", "0.3", "--dry-run")
    st = out["stop_rule"]
    assert st["rows"] > 0 and st["graded"] > 0 and st["agreement"] == 0  # every event stored its reference
    assert st["graded"] + st["unused"] == st["traced_events"]
    exact = out["exact_stop_rules"]
    assert exact["learned_rule"]["rows"] == st["rows"]
    assert {r["rule"] for r in exact["rules"]} >= {"learned1", "deer95", "full"}
    saved = _cli("train", "--db", url, "--test-frac", "0.3", "--lam", "0.3", "--candidate")
    store = ReplayStore(url)
    try:
        assert stop_rule_of(store.get_snapshot(saved["snapshot"]).meta).rows == saved["stop_rule"]["rows"]
    finally:
        store.dispose()
    sweep = _cli("sweep", "--db", url, "--policy", saved["snapshot"], "--lambdas", "0.1,1")
    per_lam = sweep["exact_stop_rules"]
    assert [r["lam"] for r in per_lam] == [0.1, 1.0]
    tok = [{r["rule"]: r["revealed_on"]["tokens"]["mean"] for r in rep["rules"]} for rep in per_lam]
    assert tok[1]["learned1"] < tok[0]["learned1"]  # λ moves the learned rule's stops, no retraining
    assert tok[1]["deer95"] == tok[0]["deer95"]


def test_traced_events_read_at_most_their_limit(served):
    url, reqs, *_ = served
    store = ReplayStore(url)
    try:
        some = traced_events(store, limit=50)
        every = traced_events(store, limit=None)
    finally:
        store.dispose()
    assert some.n == 50 and some.truncated and some.context.shape == (50, every.context.shape[1])
    assert every.n == N and not every.truncated
    assert [t.to_json() for t in some.traces] == [t.to_json() for t in every.traces[:50]]
