"""Shadow mode (serve a baseline, log and learn the policy's choice) and a store that is down."""

from __future__ import annotations

import httpx
import pytest

from stopbandit import Selector
from stopbandit.bandit.arms import Arm
from stopbandit.bandit.trace import ProbeTrace, counterfactual
from stopbandit.serve import GatewayConfig, GatewayServer, create_app

from tests.serve.toyengine import ToyEngine

ARMS = [Arm("full", 1.01, 0), Arm("careful", 0.45, 0), Arm("balanced", 0.3, 0), Arm("capped", 1.01, 24)]
PROMPTS = ["What is 6*7?", "the cat sat", "abba ab ba", "Wait, why?", "hello world", "x", "2+2=", "banana"]


def test_shadow_serves_the_baseline_logs_the_policy_and_rewards_its_revealed_outcome(db_url):
    sel = Selector.open(db_url, arms=ARMS, seed=3, follow=False)
    try:
        with ToyEngine("vllm") as toy, GatewayServer(create_app(sel, GatewayConfig(
                upstream=toy.url, shadow="full", probe_every=8, max_think_tokens=64))) as gw, \
                httpx.Client(base_url=gw.url, timeout=60) as c:
            seen = []
            for prompt in PROMPTS * 2:
                r = c.post("/v1/completions", json={"prompt": prompt})
                assert r.status_code == 200, r.text
                assert r.headers["x-stopbandit-arm"] == "full"
                policy_arm = r.headers.get("x-stopbandit-policy-arm", "full")
                ours = r.json()["stopbandit"]
                trace = ProbeTrace.from_json(ours["trace"])
                answer = r.json()["choices"][0]["text"]
                reward = c.post("/v1/rewards", json={"decision_id": ours["decision_id"], "em": 1.0,
                                                     "reference": answer})
                assert reward.status_code == 200, reward.text
                cf = counterfactual(trace, next(a for a in ARMS if a.name == policy_arm))
                if cf is not None:
                    assert reward.json()["status"] == "ok"
                    assert reward.json()["tokens"] == cf.tokens
                    assert reward.json()["em"] == (1.0 if cf.answer == answer else 0.0)
                seen.append((ours["decision_id"], policy_arm, cf))
            health = c.get("/healthz").json()
            metrics = c.get("/metrics").text
            pinned = c.post("/v1/completions", json={"prompt": "x", "stopbandit": {"arm": "balanced"}})
        assert pinned.headers["x-stopbandit-arm"] == "balanced", "a pinned arm is served even in shadow mode"
        agreement = sum(arm == "full" for _, arm, _ in seen) / len(seen)
        assert health["shadow"]["baseline"] == "full"
        assert health["shadow"]["requests"] == len(seen)
        assert health["shadow"]["agreement"] == pytest.approx(agreement)
        assert f"stopbandit_shadow_agreement {agreement}" in metrics
        assert len({arm for _, arm, _ in seen}) > 1, "the policy explores other arms than the baseline"
        sel.flush()
        for decision_id, policy_arm, cf in seen:
            logged = sel.store.get_decision(decision_id)
            assert logged["arm"] == policy_arm, "the log holds the policy's choice"
            assert not logged["policy_version"].startswith("forced/")
            if cf is not None:
                assert sel.store.get_outcome(decision_id)["tokens"] == cf.tokens
    finally:
        sel.close()


def test_shadow_arm_must_exist(selector):
    with pytest.raises(ValueError, match="unknown arm 'nope'"):
        create_app(selector, GatewayConfig(shadow="nope"))


def test_a_store_that_is_down_never_fails_a_request(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the spill goes to a private directory under the working directory
    pytest.importorskip("psycopg")
    sel = Selector.open("postgresql+psycopg://nobody:secret@127.0.0.1:9/none", seed=0, follow=False)
    try:
        with ToyEngine("vllm") as toy, GatewayServer(create_app(sel, GatewayConfig(
                upstream=toy.url, probe_every=16, max_think_tokens=32))) as gw, \
                httpx.Client(base_url=gw.url, timeout=60) as c:
            for arm in ("full", "balanced", None):
                body = {"prompt": "hi", "max_tokens": 60}
                if arm:
                    body["stopbandit"] = {"arm": arm}
                r = c.post("/v1/completions", json=body)
                assert r.status_code == 200, r.text
                reward = c.post("/v1/rewards", json={"decision_id": r.headers["x-stopbandit-decision"], "em": 1})
                assert reward.status_code == 200, reward.text
            lam = c.put("/v1/lambda", json={"lambda": 0.3, "reason": "during the outage"})
            health = c.get("/healthz")
            metrics = c.get("/metrics").text
        assert lam.status_code == 200
        assert health.status_code == 200, "the gateway still serves"
        assert health.json()["selector"]["store_ok"] is False
        assert "stopbandit_store_ok 0.0" in metrics
    finally:
        sel.close()
