"""Online training of the learned stop rule inside the Selector: labels, batches, snapshots, λ at runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stopbandit import Selector
from stopbandit.bandit.arms import STOP_POLICY_ARMS, Arm
from stopbandit.bandit.learned_stop import CONTEXT_FEATURES, LearnedInputs, LearnedStop, stop_context
from stopbandit.bandit.stop_eval import evaluate, labelled_stop_data
from stopbandit.config import LearningConfig
from stopbandit.errors import ConfigError
from stopbandit.sim import SimConfig, Simulator, run

FULL = STOP_POLICY_ARMS[0]


def _serve(sel: Selector, reqs, *, graded=True, force=None):
    """Serve every request through the Selector, the simulator running the chosen arm; returns what was fed."""
    fed = []
    for r in reqs:
        d = sel.choose(r.prompt, domain=r.domain) if force is None else sel.choose_forced(r.prompt, arm=force,
                                                                                           domain=r.domain)
        out = run(r, d.arm, sel.stop_inputs(d) if d.arm.learned else None)
        ref = r.reference if graded else None
        sel.reward(d.decision_id, em=out.em, tokens=out.tokens, trace=out.trace, reference=ref)
        fed.append((out.trace, ref, stop_context(d.features)))
    return fed


def _offline(fed, batch):
    """The same rule trained offline: the ended traces, in order, fitted batch by batch."""
    ended = [f for f in fed if f[0].stop_reason == "end"]
    rule = LearnedStop(len(CONTEXT_FEATURES), "graded")
    for k in range(0, len(ended) - len(ended) % batch, batch):
        part = ended[k : k + batch]
        data, _ = labelled_stop_data([t for t, _, _ in part], [r for _, r, _ in part], np.stack([c for _, _, c in part]))
        rule = rule.copy().fit(data)
    return rule


@pytest.mark.parametrize("graded", [True, False])
def test_traced_rewards_train_the_rule_exactly_as_offline_batches(sqlite_url, graded):
    reqs = list(Simulator(SimConfig.named("overthinking"), seed=3).stream(120))
    learning = LearningConfig(stop_batch=10)
    with Selector.open(sqlite_url, arms=list(STOP_POLICY_ARMS), learning=learning, seed=1, lam=0.3) as sel:
        assert sel.stop_learner is not None and not sel.stop_learner.rule.trained
        fed = _serve(sel, reqs, graded=graded)
        state = sel.stop_learner.state()
        rule = sel.stop_learner.rule
    ended = sum(t.stop_reason == "end" for t, _, _ in fed)
    assert ended >= 20 and state["updates"] == ended // 10 and state["buffered"] == ended % 10
    kind, other = ("graded", "agreement") if graded else ("agreement", "graded")
    assert state["labelled"][kind] == 10 * (ended // 10) and state["labelled"][other] == 0
    assert state["labelled"]["unused"] == len(fed) - ended  # traces stopped early teach nothing
    want = _offline(fed, 10)
    assert rule.rows == want.rows > 0
    for k in ("now", "end", "rest"):
        np.testing.assert_allclose(rule.w[k], want.w[k], rtol=1e-9, atol=1e-12)
    if not graded:  # agreement labels: the run's own end is right by construction, p_end is fitted to 1
        t, _, c = next(f for f in fed if f[0].stop_reason == "end")
        p_end = rule.estimates(labelled_stop_data([t], [None], c[None])[0].features)[1]
        assert (p_end > 0.9).all()


def test_online_rule_learns_to_save_tokens_on_held_out_requests(sqlite_url):
    cfg = SimConfig.named("overthinking")
    reqs = list(Simulator(cfg, seed=5).stream(700))
    train, held = reqs[:500], reqs[500:]
    with Selector.open(sqlite_url, arms=list(STOP_POLICY_ARMS), learning=LearningConfig(stop_batch=25),
                       seed=2, lam=0.3) as sel:
        _serve(sel, train, force="full")  # every trace reaches the end: the rule sees every request
        rule = sel.stop_learner.rule
        with Selector.open(sqlite_url, arms=list(STOP_POLICY_ARMS), follow=False, snapshot=None) as fresh:
            blank = fresh.stop_learner.rule
    traces = [run(r, FULL).trace for r in held]
    refs = [r.reference for r in held]
    ctx = np.stack([stop_context(sel.extractor.extract(r.prompt, r.domain)) for r in held])
    arm = (FULL, Arm("l1", 1.01, 0, 0, 1.0))
    trained = evaluate(traces, refs, arm, LearnedInputs(rule, 0.3, ctx))
    untrained = evaluate(traces, refs, arm, LearnedInputs(blank, 0.3, ctx))
    # the untrained rule never fires (the arm runs like full); the trained one stops earlier and earns more
    # of the reward it trades for, EM − λ·tokens/1000 at λ = 0.3
    assert (untrained.tokens[:, 1] == untrained.tokens[:, 0]).all()
    reward = (trained.em - 0.3 * trained.tokens / 1000.0).mean(axis=0)
    print("tokens", trained.tokens.mean(axis=0), "em", trained.em.mean(axis=0), "reward", reward)
    assert trained.tokens[:, 1].mean() < 0.8 * trained.tokens[:, 0].mean()
    assert reward[1] > reward[0] + 0.02


def test_rule_rides_in_snapshots_and_checkpoints_and_lambda_stays_a_knob(sqlite_url):
    reqs = list(Simulator(SimConfig.named("conservative"), seed=7).stream(80))
    learning = LearningConfig(stop_batch=8)
    with Selector.open(sqlite_url, arms=list(STOP_POLICY_ARMS), learning=learning, seed=3, lam=0.3,
                       checkpoint_every=1) as sel:
        _serve(sel, reqs[:60], force="full")
        version = sel.snapshot()
        served = json.dumps(sel.stop_learner.rule.to_json())
        d = sel.choose(reqs[60].prompt, domain=reqs[60].domain)
        before = sel.stop_inputs(d)
        sel.set_lambda(1.5, reason="test")
        d2 = sel.choose(reqs[60].prompt, domain=reqs[60].domain)
        after = sel.stop_inputs(d2)
        assert (before.lam, after.lam) == (0.3, 1.5) and after.rule is before.rule  # no retraining
        assert (after.context == before.context).all()
        _serve(sel, reqs[61:80], force="full")  # more updates after the snapshot: the checkpoint holds them
        newer = json.dumps(sel.stop_learner.rule.to_json())
    assert newer != served
    stored = Selector.open(sqlite_url, arms=list(STOP_POLICY_ARMS), learning=learning, follow=False,
                           snapshot=version)
    try:
        assert json.dumps(stored.stop_learner.rule.to_json()) == served
    finally:
        stored.close()
    with Selector.open(sqlite_url, arms=list(STOP_POLICY_ARMS), learning=learning, follow=False) as resumed:
        assert resumed.policy_version.startswith("ckpt-")  # the checkpoint written at close
        assert json.dumps(resumed.stop_learner.rule.to_json()) == newer


def test_stop_learning_settings_and_when_a_selector_has_a_rule(sqlite_url):
    with pytest.raises(ConfigError, match="stop_rule"):
        LearningConfig(stop_rule="sometimes")
    with pytest.raises(ConfigError, match="stop_label"):
        LearningConfig(stop_label="vibes")
    with pytest.raises(ConfigError, match="stop_batch"):
        LearningConfig(stop_batch=0)
    with Selector.open(sqlite_url, follow=False) as plain:  # no learned arm: no rule, unless asked for
        assert plain.stop_learner is None and plain.stop_inputs(plain.choose("2+2?")) is None
    with Selector.open(sqlite_url, follow=False, snapshot=None, learning=LearningConfig(stop_rule="on")) as on:
        assert on.stop_learner is not None and on.stop_learner.train
    with Selector.open(sqlite_url, arms="stop-policies", follow=False, snapshot=None,
                       learning=LearningConfig(stop_rule="off")) as off:
        assert off.stop_learner is not None and not off.stop_learner.train
        reqs = list(Simulator(SimConfig.named("conservative"), seed=1).stream(30))
        _serve(off, reqs, force="full")
        assert off.stop_learner.rule.rows == 0


def test_a_named_arm_set_in_the_config_and_the_guardrails_holdout_over_stop_policies(sqlite_url, tmp_path):
    from stopbandit.config import load_config
    from stopbandit.control import ControlledSelector
    from stopbandit.control.guardrail import GuardrailConfig

    path = tmp_path / "c.toml"
    path.write_text('arms = "stop-policies"\n\n[learning]\nstop_batch = 4\n', encoding="utf-8")
    cfg = load_config(path)
    assert cfg.arms.arms == STOP_POLICY_ARMS and cfg.learning.stop_batch == 4
    # full stops last on every request: its trace reveals every stop policy (nested feedback, graph OPE)
    assert cfg.arms.revealed_by(cfg.arms.index("full")) == list(range(len(STOP_POLICY_ARMS)))
    path.write_text('arms = "sometimes"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown arm set 'sometimes'"):
        load_config(path)
    # the guardrail's holdout serves full and reads the champion's choice (learned levels included) off its trace
    reqs = list(Simulator(SimConfig.named("overthinking"), seed=2).stream(60))
    sel = Selector.open(sqlite_url, config=cfg, seed=5, follow=False)
    with ControlledSelector(sel, guardrail=GuardrailConfig(holdout_share=0.5, min_n=10), seed=1,
                            owns_selector=True) as ctl:
        for r in reqs:
            d = ctl.choose(r.prompt, domain=r.domain)
            out = run(r, d.arm, sel.stop_inputs(d) if d.arm.learned else None)
            ctl.reward(d.decision_id, em=out.em, tokens=out.tokens, trace=out.trace, reference=r.reference)
        assert sel.stop_learner.rule.trained
        assert ctl.health().routes["holdout"] > 10


def test_a_snapshot_whose_rule_reads_another_context_is_refused(sqlite_url):
    from stopbandit.bandit.snapshot import pack
    from stopbandit.errors import SnapshotError

    with Selector.open(sqlite_url, arms="stop-policies", follow=False, snapshot=None) as sel:
        live = sel.policy
        packed = pack(live, lam=0.2, feature_config=sel.config.features.to_dict(),
                      stop_rule=LearnedStop(3, "graded"), version="vbad")
        sel.store.save_snapshot(packed.version, packed.model, packed.meta, packed.checksum, role="candidate")
        before = sel.stop_learner.rule
        with pytest.raises(SnapshotError, match="reads 3 context columns"):
            sel.load_snapshot("vbad")
        assert sel.stop_learner.rule is before and sel.policy_version != "vbad"
