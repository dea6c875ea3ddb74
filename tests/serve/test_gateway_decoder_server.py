"""The gateway in front of a real model: our decoder server (engine mode, tiny random Llama) as a subprocess."""

from __future__ import annotations

import json

import httpx
import pytest

from stopbandit import Selector
from stopbandit.bandit.arms import Arm
from stopbandit.bandit.trace import ProbeTrace, counterfactual
from stopbandit.serve import GatewayConfig, GatewayServer, create_app

ARMS = [Arm("full", 1.01, 0), Arm("careful", 0.5, 0), Arm("quick", 0.3, 0), Arm("capped", 1.01, 12)]
PROMPTS = ["12+34=", "hello world", "the cat", "zz top"]


@pytest.fixture
def sel(db_url):
    s = Selector.open(db_url, arms=ARMS, seed=0, follow=False)
    yield s
    s.close()


def _gateway(selector, upstream, **settings):
    return GatewayServer(create_app(selector, GatewayConfig(upstream=upstream.url, **settings)))


def test_engine_is_detected_and_pass_through_tokens_are_the_servers(sel, tiny_upstream):
    with _gateway(sel, tiny_upstream) as gw, httpx.Client(base_url=gw.url, timeout=120) as c:
        r = c.post("/v1/completions", json={"prompt": "12+34=", "max_tokens": 24, "stopbandit": {"arm": "full"}})
        health = c.get("/healthz").json()
    assert r.status_code == 200, r.text
    assert health["upstream"]["engine"] == "stopbandit" and health["chunking"] == "tokens"
    assert r.json()["stopbandit"]["mode"] == "pass"
    assert 0 < r.json()["usage"]["completion_tokens"] == r.json()["stopbandit"]["tokens"]["total"] <= 24


@pytest.mark.parametrize("chat", [False, True])
def test_budget_arm_uses_the_servers_thinking_token_budget(sel, tiny_upstream, chat):
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body = {"messages": [{"role": "user", "content": "hello"}]} if chat else {"prompt": "hello"}
    body.update(max_tokens=40, stopbandit={"arm": "capped"})
    with _gateway(sel, tiny_upstream) as gw:
        r = httpx.post(gw.url + path, json=body, timeout=120)
    assert r.status_code == 200, r.text
    ours, usage = r.json()["stopbandit"], r.json()["usage"]
    assert ours["mode"] == "budget" and ours["tokens"]["total"] == usage["completion_tokens"]
    if chat:
        assert usage["completion_tokens_details"]["reasoning_tokens"] <= 12 + 1


@pytest.mark.parametrize("chunking", ["tokens", "text"])
def test_probe_driver_on_a_real_model_decodes_the_same_tokens_as_one_call(sel, tiny_upstream, chunking):
    with _gateway(sel, tiny_upstream, probe_every=8, max_think_tokens=48, probe_all=True, chunking=chunking) as gw:
        for prompt in PROMPTS:
            r = httpx.post(gw.url + "/v1/completions", json={"prompt": prompt, "stopbandit": {"arm": "full"}},
                           timeout=120)
            assert r.status_code == 200, r.text
            one = httpx.post(tiny_upstream.url + "/v1/completions", json={
                "prompt": prompt, "max_tokens": 48, "temperature": 0, "stop": ["</think>"]}, timeout=120).json()
            ours = r.json()["stopbandit"]
            assert ours["chunking"] == chunking
            assert r.json()["choices"][0]["reasoning_content"] == one["choices"][0]["text"], prompt
            if ours["stop_reason"] == "budget":
                assert ours["tokens"]["thinking"] == one["usage"]["completion_tokens"] == 48


def test_probe_arms_on_a_real_model_stop_where_the_lenient_trace_says(sel, tiny_upstream):
    with _gateway(sel, tiny_upstream, probe_every=8, max_think_tokens=48, probe_all=True) as gw, \
            httpx.Client(base_url=gw.url, timeout=120) as c:
        checked = 0
        for prompt in PROMPTS:
            full = c.post("/v1/completions", json={"prompt": prompt, "stopbandit": {"arm": "full"}}).json()
            trace = ProbeTrace.from_json(full["stopbandit"]["trace"])
            assert full["stopbandit"]["tokens"]["total"] == full["usage"]["completion_tokens"]
            for arm in ARMS[1:]:
                cf = counterfactual(trace, arm)
                if cf is None:
                    continue
                served = c.post("/v1/completions", json={"prompt": prompt, "stopbandit": {"arm": arm.name}}).json()
                assert served["stopbandit"]["tokens"]["thinking"] == cf.stop_offset
                assert served["choices"][0]["text"] == cf.answer
                assert served["stopbandit"]["tokens"]["total"] == cf.tokens
                checked += 1
            reward = c.post("/v1/rewards", json={"decision_id": full["stopbandit"]["decision_id"], "em": 1.0,
                                                 "reference": full["choices"][0]["text"]})
            assert reward.status_code == 200 and reward.json()["trace"] is True
    assert checked >= 4


def test_streaming_through_to_the_real_server(sel, tiny_upstream):
    with _gateway(sel, tiny_upstream) as gw, httpx.Client(base_url=gw.url, timeout=120) as c:
        with c.stream("POST", "/v1/completions", json={"prompt": "hello", "max_tokens": 12, "stream": True,
                                                        "stopbandit": {"arm": "full"}}) as r:
            assert r.status_code == 200
            events = [line[5:].strip() for line in r.iter_lines() if line.startswith("data:")]
            decision = r.headers["x-stopbandit-decision"]
        assert events[-1] == "[DONE]"
        usage = [json.loads(e)["usage"] for e in events[:-1] if json.loads(e).get("usage")]
        assert 0 < usage[-1]["completion_tokens"] <= 12
        reward = c.post("/v1/rewards", json={"decision_id": decision, "em": 0.0})
    assert reward.json()["tokens"] == usage[-1]["completion_tokens"]
