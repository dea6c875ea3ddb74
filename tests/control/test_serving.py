"""ControlledSelector: routing, what it logs (propensities, experiment column), the reward contract, λ control."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from stopbandit import Selector
from stopbandit.control import Challenger, ControlledSelector, ControllerConfig, GuardrailConfig, LambdaController, Target
from stopbandit.errors import ConfigError, ConflictError, InputError, UnknownDecisionError
from stopbandit.replay.store import DECISIONS, OUTCOMES, ReplayStore
from stopbandit.sim import Simulator
from tests.control.sim_loop import serve


def rows(url: str) -> list:
    store = ReplayStore(url)
    with store.engine.connect() as conn:
        got = conn.execute(select(DECISIONS).order_by(DECISIONS.c.id)).mappings().all()
    store.dispose()
    return [dict(r) for r in got]


@pytest.fixture
def sel(sqlite_url):
    s = Selector.open(sqlite_url, lam=0.2, seed=11)
    yield s
    s.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scope": "all"}, r"scope must be one of \['unforced', 'served', 'policy'\], got 'all'"),
        ({"challenger_share": 0.2}, "challenger_share=0.2 needs a challenger snapshot version"),
        ({"challenger_share": 1.5}, r"challenger_share must be in \[0, 1\), got 1.5"),
        ({"controller": 0.5}, "controller must be a Target or a LambdaController, got float"),
        ({"guardrail": "on"}, "guardrail must be a GuardrailConfig or a Guardrail, got str"),
        ({"challenger": "v-missing", "challenger_share": 0.1}, "challenger snapshot 'v-missing' is not in the store"),
    ],
)
def test_invalid_arguments_name_field_and_value(sel, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ControlledSelector(sel, **kwargs)


def test_holdout_is_logged_as_full_arm_with_propensity_one(sel, sqlite_url):
    cs = ControlledSelector(sel, guardrail=GuardrailConfig(holdout_share=0.4), seed=1)
    served = serve(cs, Simulator(seed=1).stream(300))
    cs.flush()
    by_key = {r["request_key"]: r for r in rows(sqlite_url)}
    assert len(by_key) == 300
    full = sel.arms[sel.arms.most_conservative()].name
    n_hold = 0
    for s in served:
        r = by_key[s.decision_id]
        assert r["arm"] == s.arm and r["propensity"] == pytest.approx(s.probability)
        assert r["probabilities"][s.arm] == pytest.approx(r["propensity"])
        if cs.route_of(s.decision_id) == "holdout":
            n_hold += 1
            assert (r["experiment"], r["arm"], r["propensity"]) == ("holdout", full, 1.0)
            assert r["probabilities"] == {n: (1.0 if n == full else 0.0) for n in sel.arms.names}
            assert r["policy_version"] == f"holdout/{sel.policy_version}"[:64]
        else:
            assert r["experiment"] == "champion" and cs.experiment_of(s.decision_id) == "champion"
    assert 80 < n_hold < 160 and cs.health().routes["holdout"] == n_hold
    store = ReplayStore(sqlite_url)
    assert store.counts()["outcomes"] == 300  # the wrapper's own outcomes are stored too
    store.dispose()
    cs.close()


def test_challenger_decisions_carry_the_challengers_own_probabilities(sel, sqlite_url):
    serve(sel, Simulator(seed=2).stream(400))
    version = sel.snapshot()
    serve(sel, Simulator(seed=3).stream(200))  # the champion moves on; the challenger stays frozen
    cs = ControlledSelector(sel, challenger=version, challenger_share=0.5, seed=3)
    served = serve(cs, Simulator(seed=4).stream(200))
    cs.flush()
    ch = Challenger(sel.store, version, sel.config)
    logged = {r["request_key"]: r for r in rows(sqlite_url)}
    n_ch = 0
    for s in served:
        r = logged[s.decision_id]
        if cs.route_of(s.decision_id) != "challenger":
            assert r["experiment"] == "champion" and r["policy_version"] != version
            continue
        n_ch += 1
        assert (r["experiment"], r["policy_version"]) == ("challenger", version)
        want = dict(zip(sel.arms.names, ch.decide(r["features"], r["lam"])))
        assert r["probabilities"] == pytest.approx(want, abs=1e-9)
        assert r["propensity"] == pytest.approx(want[r["arm"]], abs=1e-9)
    assert 60 < n_ch < 140
    ch.close()
    cs.close()


def test_reward_contract_for_the_wrappers_own_decisions(sel):
    cs = ControlledSelector(sel, guardrail=GuardrailConfig(holdout_share=0.9), seed=5)
    d = cs.choose("What is 2 + 2?", domain="math", request_id="r-1")
    assert cs.route_of("r-1") == "holdout" and d.probability == 1.0
    with pytest.raises(InputError, match="already used"):
        cs.choose("again", request_id="r-1")
    with pytest.raises(InputError, match="em must be a finite number in \\[0, 1\\], got 2"):
        cs.reward("r-1", em=2, tokens=10)
    cs.reward("r-1", em=1.0, tokens=120)
    cs.reward("r-1", em=1.0, tokens=120)  # idempotent
    with pytest.raises(ConflictError, match="conflicting outcome for decision 'r-1'"):
        cs.reward("r-1", em=0.0, tokens=120)
    with pytest.raises(UnknownDecisionError, match="unknown decision id 'nope'"):
        cs.reward("nope", em=1.0, tokens=1)
    assert cs.health().rewards == 1
    cs.flush()
    store = ReplayStore(sel.store.url)
    with store.engine.connect() as conn:
        out = conn.execute(select(OUTCOMES.c.em, OUTCOMES.c.tokens).where(OUTCOMES.c.decision_key == "r-1")).all()
    assert [tuple(o) for o in out] == [(1.0, 120)]
    store.dispose()
    cs.close()


def test_controller_moves_lambda_through_logged_set_lambda_and_others_follow(sqlite_url):
    sel = Selector.open(sqlite_url, lam=0.1, seed=3)
    other = Selector.open(sqlite_url, seed=4)  # another serving process on the same store
    ctl = LambdaController(Target.token_budget(300), ControllerConfig(interval=25, max_step=0.1))
    cs = ControlledSelector(sel, controller=ctl, guardrail=GuardrailConfig(holdout_share=0.02), seed=3)
    serve(cs, Simulator(seed=5).stream(300))
    assert sel.lam > 0.5  # 300 tokens is far below what the policy spends: λ went up
    h = cs.health()
    assert sel.flush()  # λ changes are stored off the request path: wait until they are
    changes = [c for c in sel.store.lambda_history(1000) if c.who == "controller"]
    assert len(changes) == h.controller.moves >= 5
    assert changes[0].value == pytest.approx(sel.lam)
    assert "controller token_budget<=300" in changes[0].reason and "λ " in changes[0].reason
    deadline = time.monotonic() + 1.5
    while other.lam != sel.lam and time.monotonic() < deadline:
        time.sleep(0.05)
    assert other.lam == pytest.approx(sel.lam)
    assert h.controller.window_tokens > 300 and h.controller.last_error > 0
    other.close()
    cs.close()
    sel.close()


def test_feedforward_controller_gets_the_policys_model_and_logs_its_moves(sqlite_url):
    sel = Selector.open(sqlite_url, lam=0.2, seed=7)
    ctl = LambdaController(Target.token_budget(650), ControllerConfig(feedforward=True, contexts=400, calibration=800,
                                                                       model_warmup=400))
    cs = ControlledSelector(sel, controller=ctl, guardrail=GuardrailConfig(holdout_share=0.02), seed=7)
    serve(cs, Simulator(seed=8).stream(1600))
    st = cs.health().controller
    assert st.mode == "feedforward" and st.model_bias is not None and abs(st.model_bias) < 0.25
    assert sel.flush()  # λ changes are stored off the request path: wait until they are
    moves = [c for c in sel.store.lambda_history(1000) if c.who == "controller"]
    assert moves and len(moves) == st.moves
    assert all("model (" in c.reason and "contexts) predicted" in c.reason for c in moves)
    assert any("model warm-up" in c.reason for c in moves)
    assert any("(feedforward: model λ" in c.reason for c in moves)
    cs.close()


def test_feedforward_without_heads_stays_pi(sqlite_url):
    sel = Selector.open(sqlite_url, lam=0.2, seed=7, policy="vw-native")
    ctl = LambdaController(Target.token_budget(650), ControllerConfig(feedforward=True, interval=50))
    cs = ControlledSelector(sel, controller=ctl, seed=7)
    serve(cs, Simulator(seed=8).stream(300))
    st = cs.health().controller
    assert st.steps == 6 and st.mode == "pi" and st.model_bias is None
    cs.close()
    sel.close()
