"""Budget arms: the engine's own per-request field (one row per engine), and the universal two-call fallback."""

from __future__ import annotations

import httpx
import pytest

from stopbandit import Selector
from stopbandit.bandit.arms import Arm
from stopbandit.serve import GatewayConfig, GatewayServer, create_app
from stopbandit.serve.engines import TABLE, detect, effort_for, engine

from tests.serve.toyengine import ToyEngine

ARMS = [Arm("full", 1.01, 0), Arm("capped", 1.01, 24), Arm("balanced", 0.9, 0)]


@pytest.fixture
def budget_selector(db_url):
    sel = Selector.open(db_url, arms=ARMS, seed=0, follow=False)
    yield sel
    sel.close()


def _serve(selector, **settings):
    return GatewayServer(create_app(selector, GatewayConfig(**settings)))


@pytest.mark.parametrize(("flavour", "chat", "expected"), [
    ("vllm", False, {"thinking_token_budget": 24}),
    ("vllm", True, {"thinking_token_budget": 24}),
    ("sglang", False, {"custom_params": {"thinking_budget": 24}}),
    ("sglang", True, {"custom_params": {"thinking_budget": 24},
                      "chat_template_kwargs": {"enable_thinking": True, "thinking_budget": 24}}),
    ("llamacpp", True, {"thinking_budget_tokens": 24}),
    ("openai", True, {"reasoning_effort": "low", "max_completion_tokens": 24 + 64}),
])
def test_budget_arm_sends_the_engines_own_field_and_counts_what_the_engine_reports(budget_selector, flavour, chat,
                                                                                   expected):
    with ToyEngine(flavour) as toy, _serve(budget_selector, upstream=toy.url) as gw:  # engine auto-detected
        path = "/v1/chat/completions" if chat else "/v1/completions"
        body = {"messages": [{"role": "user", "content": "think"}]} if chat else {"prompt": "think"}
        body.update(max_tokens=200, stopbandit={"arm": "capped"})
        r = httpx.post(gw.url + path, json=body, timeout=30)
    assert r.status_code == 200, r.text
    sent = toy.posted(path)[-1]
    for key, value in expected.items():
        assert sent[key] == value
    others = {"thinking_token_budget", "custom_params", "thinking_budget_tokens", "reasoning_effort"} - set(expected)
    assert not others & set(sent), "only the engine's own field is sent"
    assert "stopbandit" not in sent and sent["max_tokens"] == 200
    usage = r.json()["usage"]
    ours = r.json()["stopbandit"]
    assert ours["mode"] == "budget"
    assert ours["tokens"]["total"] == usage["completion_tokens"]
    if flavour != "openai":  # the stand-in honours the budget of the engine it plays
        assert usage["completion_tokens_details"]["reasoning_tokens"] <= 24 + 1
        assert ours["tokens"]["thinking"] == usage["completion_tokens_details"]["reasoning_tokens"]


@pytest.mark.parametrize("chat", [False, True])
def test_two_call_fallback_decodes_thinking_up_to_the_budget_then_asks_for_the_answer(budget_selector, chat):
    with ToyEngine("vllm") as toy, _serve(budget_selector, upstream=toy.url, budget="fallback") as gw:
        path = "/v1/chat/completions" if chat else "/v1/completions"
        body = {"messages": [{"role": "user", "content": "abc"}]} if chat else {"prompt": "abc"}
        body["stopbandit"] = {"arm": "capped"}
        r = httpx.post(gw.url + path, json=body, timeout=30)
        one = httpx.post(toy.url + "/v1/completions", json={"prompt": "abc", "max_tokens": 24, "temperature": 0,
                                                            "stop": ["</think>"]}).json()
    assert r.status_code == 200, r.text
    ours = r.json()["stopbandit"]
    assert ours["mode"] == "fallback"
    calls = toy.posted("/v1/completions")[:-1]
    assert len(calls) == 2, "thinking, then the answer"
    assert calls[0]["max_tokens"] == 24 and calls[0]["stop"] == ["</think>"]
    assert not any(k in c for c in calls for k in ("thinking_token_budget", "logprobs"))
    reasoning = r.json()["choices"][0]["message" if chat else "reasoning_content"]
    reasoning = reasoning["reasoning_content"] if chat else reasoning
    assert reasoning == one["choices"][0]["text"]
    assert ours["tokens"]["thinking"] == one["usage"]["completion_tokens"]
    assert ours["stop_reason"] in ("budget", "end") and ours["trace"]["p"] == []


def test_engine_table_and_detection():
    assert set(TABLE) == {"vllm", "sglang", "llamacpp", "llamacpp-python", "openai", "stopbandit"}
    assert engine("vllm").budget_request(100, allowance=16, chat=False) == {"thinking_token_budget": 100}
    assert engine("stopbandit").budget_request(7, allowance=16, chat=True) == {"thinking_token_budget": 7}
    assert [effort_for(b) for b in (10, 1024, 5000, 20000)] == ["low", "low", "medium", "high"]
    assert detect({"data": [{"id": "m", "owned_by": "vllm"}]}) == "vllm"
    assert detect({"data": [{"id": "m", "owned_by": "sglang"}]}) == "sglang"
    assert detect({"data": [{"id": "m", "owned_by": "llamacpp"}]}) == "llamacpp"
    assert detect({"data": [{"id": "m", "object": "model"}]}, "llama.cpp") == "llamacpp"
    assert detect({"data": [{"id": "gpt", "owned_by": "openai"}]}) == "openai"
    assert detect(None) == "openai"
    with pytest.raises(ValueError, match="unknown engine 'tgi'"):
        engine("tgi")


@pytest.mark.parametrize(("settings", "needle"), [
    ({"upstream": "localhost:8000"}, "gateway.upstream"),
    ({"engine": "tgi"}, "gateway.engine"),
    ({"probe_every": 0}, "gateway.probe_every"),
    ({"confidence_mean": "harmonic"}, "gateway.confidence_mean"),
    ({"chunking": "bytes"}, "gateway.chunking"),
    ({"budget": "soft"}, "gateway.budget"),
    ({"read_timeout_s": -1}, "gateway.read_timeout_s"),
    ({"answer_stop": "}"}, "gateway.answer_stop"),
    ({"think_end": ""}, "gateway.think_end"),
])
def test_gateway_config_errors_name_the_field(settings, needle):
    with pytest.raises(ValueError, match=needle):
        GatewayConfig(**settings)


def test_gateway_config_strips_v1_from_the_upstream():
    assert GatewayConfig(upstream="http://h:1/v1/").upstream == "http://h:1"
