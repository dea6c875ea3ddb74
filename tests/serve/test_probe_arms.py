"""Probe arms: chunked decoding equals one call, tokens count the probes, the trace reveals stricter arms."""

from __future__ import annotations

import math

import httpx
import pytest

from stopbandit import Selector
from stopbandit.bandit.arms import Arm
from stopbandit.bandit.trace import ProbeTrace, counterfactual
from stopbandit.serve import GatewayConfig, GatewayServer, create_app
from stopbandit.bandit.stoprule import stop_reason
from stopbandit.bandit.trace import Probe
from stopbandit.serve.probe import confidence

from tests.serve.toyengine import ToyEngine

PROMPTS = ["What is 6*7?", "the cat sat", "abba ab ba", "Wait, why?", "hello world", "x", "2+2=", "banana"]
# thresholds chosen inside the toy model's range of trial-answer confidences (about 0.2 to 0.5)
ARMS = [Arm("full", 1.01, 0), Arm("careful", 0.45, 0), Arm("balanced", 0.3, 0), Arm("quick", 0.25, 40),
        Arm("capped", 1.01, 24), Arm("agree", 1.01, 0, agreement=2)]


@pytest.fixture
def probe_selector(db_url):
    sel = Selector.open(db_url, arms=ARMS, seed=0, follow=False)
    yield sel
    sel.close()


def _one_call(url: str, prompt: str, n: int) -> dict:
    return httpx.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": n, "temperature": 0,
                                                     "stop": ["</think>"]}).json()


def _chunked_by_text(url: str, prompt: str, n: int, every: int) -> str:
    """What continuing from the text at every chunk boundary gives (the way that fails)."""
    text = prompt
    for _ in range(n // every):
        choice = httpx.post(url + "/v1/completions", json={"prompt": text, "max_tokens": every, "temperature": 0,
                                                           "stop": ["</think>"]}).json()["choices"][0]
        text += choice["text"]
        if choice["finish_reason"] != "length":
            break
    return text[len(prompt):]


@pytest.mark.parametrize("chunking", ["tokens", "text"])
def test_chunked_decoding_gives_the_same_tokens_as_one_call(probe_selector, chunking):
    with ToyEngine("vllm") as toy, GatewayServer(create_app(probe_selector, GatewayConfig(
            upstream=toy.url, probe_every=8, max_think_tokens=64, probe_all=True, chunking=chunking))) as gw:
        naive_differs = 0
        for prompt in PROMPTS:
            r = httpx.post(gw.url + "/v1/completions", json={"prompt": prompt, "stopbandit": {"arm": "full"}},
                           timeout=60)
            assert r.status_code == 200, r.text
            one = _one_call(toy.url, prompt, 64)
            ours = r.json()["stopbandit"]
            assert ours["chunking"] == chunking
            assert r.json()["choices"][0]["reasoning_content"] == one["choices"][0]["text"], prompt
            assert ours["tokens"]["thinking"] == one["usage"]["completion_tokens"]
            assert len(ours["trace"]["p"]) >= 1
            naive_differs += _chunked_by_text(toy.url, prompt, 64, 8) != one["choices"][0]["text"]
    assert naive_differs >= 1, "the toy model re-tokenizes differently somewhere, as real BPE models do"


def test_tokens_are_what_the_engine_reported_probes_included(probe_selector):
    with ToyEngine("vllm") as toy, GatewayServer(create_app(probe_selector, GatewayConfig(
            upstream=toy.url, probe_every=16, max_think_tokens=64))) as gw:
        r = httpx.post(gw.url + "/v1/completions", json={"prompt": "hello", "stopbandit": {"arm": "careful"}},
                       timeout=60)
        calls = toy.posted("/v1/completions")
    ours = r.json()["stopbandit"]
    trace = ProbeTrace.from_json(ours["trace"])
    probe_calls = [c for c in calls if c.get("logprobs") and c.get("max_tokens") == 20]
    assert len(probe_calls) == len(trace.probes)
    assert all(c["temperature"] == 0 for c in calls)
    tokens = ours["tokens"]
    assert tokens["total"] == r.json()["usage"]["completion_tokens"]
    spent_on_probes = sum(p.tokens for p in trace.probes)
    if ours["stop_reason"] == "confidence":  # the last probe is the answer
        assert tokens["answer"] == trace.probes[-1].tokens
        assert tokens["probes"] == spent_on_probes - trace.probes[-1].tokens
    else:
        assert tokens["probes"] == spent_on_probes
    assert tokens["total"] == tokens["thinking"] + tokens["probes"] + tokens["answer"]  # token chunking: no waste
    assert trace.total_tokens == tokens["total"]


def _serve_every_prompt(selector, arm: str) -> list[tuple[dict, ProbeTrace]]:
    """Each of ``PROMPTS`` served on ``arm`` through a gateway probing every 8 tokens: (response, its trace)."""
    with ToyEngine("vllm") as toy, GatewayServer(create_app(selector, GatewayConfig(
            upstream=toy.url, probe_every=8, max_think_tokens=128))) as gw:
        served = []
        for prompt in PROMPTS:
            r = httpx.post(gw.url + "/v1/completions", json={"prompt": prompt, "stopbandit": {"arm": arm}},
                           timeout=60).json()
            served.append((r, ProbeTrace.from_json(r["stopbandit"]["trace"])))
    return served


def test_a_confident_probe_stops_thinking_and_gives_the_answer(probe_selector):
    reasons = []
    for r, trace in _serve_every_prompt(probe_selector, "quick"):
        ours = r["stopbandit"]
        reasons.append(ours["stop_reason"])
        if ours["stop_reason"] == "confidence":
            assert trace.probes[-1].confidence >= 0.25
            assert all(p.confidence < 0.25 for p in trace.probes[:-1])
            assert r["choices"][0]["text"] == trace.probes[-1].answer == trace.answer
        elif ours["stop_reason"] == "budget":
            assert trace.stop_offset == 40
    assert "confidence" in reasons


def test_a_lenient_trace_reveals_each_stricter_arm_exactly(probe_selector):
    """The outcome the lenient run's trace predicts for an arm is what serving that arm gives."""
    with ToyEngine("vllm") as toy, GatewayServer(create_app(probe_selector, GatewayConfig(
            upstream=toy.url, probe_every=8, max_think_tokens=96, probe_all=True))) as gw:
        checked = 0
        for prompt in PROMPTS[:5]:
            lenient = httpx.post(gw.url + "/v1/completions", json={"prompt": prompt, "stopbandit": {"arm": "full"}},
                                 timeout=60).json()["stopbandit"]
            trace = ProbeTrace.from_json(lenient["trace"])
            for arm in ARMS[1:]:
                cf = counterfactual(trace, arm)
                if cf is None:
                    continue
                served = httpx.post(gw.url + "/v1/completions",
                                    json={"prompt": prompt, "stopbandit": {"arm": arm.name}}, timeout=60).json()
                ours = served["stopbandit"]
                assert ours["tokens"]["thinking"] == cf.stop_offset, (prompt, arm.name)
                assert served["choices"][0]["text"] == cf.answer, (prompt, arm.name)
                assert ours["tokens"]["total"] == cf.tokens, (prompt, arm.name)
                checked += 1
    assert checked >= 10


def test_the_trace_is_logged_with_the_reward_and_every_revealed_arm_is_learned(probe_selector):
    with ToyEngine("vllm") as toy, GatewayServer(create_app(probe_selector, GatewayConfig(
            upstream=toy.url, probe_every=8, max_think_tokens=64, probe_all=True))) as gw:
        r = httpx.post(gw.url + "/v1/completions", json={"prompt": "the cat sat", "stopbandit": {"arm": "full"}},
                       timeout=60).json()
        ours = r["stopbandit"]
        reward = httpx.post(gw.url + "/v1/rewards", json={"decision_id": ours["decision_id"], "em": 1.0,
                                                          "reference": r["choices"][0]["text"]})
    assert reward.status_code == 200 and reward.json()["trace"] is True
    probe_selector.flush()
    row = probe_selector.store.get_outcome(ours["decision_id"])
    stored = ProbeTrace.from_json(row["trace"])
    assert stored == ProbeTrace.from_json(ours["trace"]).hashed()
    assert row["tokens"] == ours["tokens"]["total"]


@pytest.mark.parametrize(("logprobs", "mean", "expected"), [
    ({"token_logprobs": [math.log(0.5), math.log(0.9)]}, "arithmetic", 0.7),
    ({"token_logprobs": [math.log(0.5), math.log(0.9)]}, "geometric", math.sqrt(0.45)),
    ({"token_logprobs": [math.log(0.2)], "top_logprobs": [{"a": math.log(0.6), "b": math.log(0.2)}]}, "arithmetic",
     0.6),
    ({"token_logprobs": []}, "arithmetic", 0.0),
    (None, "geometric", 0.0),
])
def test_confidence_is_the_mean_max_probability(logprobs, mean, expected):
    assert confidence(logprobs, mean) == pytest.approx(expected)


def test_the_online_stop_check_is_the_packages_stop_rule():
    arm = Arm("a", 0.8, 32)
    assert stop_reason(arm, [Probe(8, 0.5, "x", 3)], 8) is None
    assert stop_reason(arm, [Probe(8, 0.5, "x", 3), Probe(16, 0.85, "y", 3)], 16) == "confidence"
    assert stop_reason(arm, [], 32) == "budget"


def test_an_agreement_arm_stops_when_consecutive_trial_answers_agree(probe_selector):
    reasons = []
    for r, trace in _serve_every_prompt(probe_selector, "agree"):
        ours = r["stopbandit"]
        assert ours["mode"] == "probe"
        reasons.append(ours["stop_reason"])
        if ours["stop_reason"] == "agreement":
            assert trace.probes[-1].answer == trace.probes[-2].answer == r["choices"][0]["text"]
            assert all(a.answer != b.answer for a, b in zip(trace.probes[:-2], trace.probes[1:-1]))
            assert trace.stop_offset == trace.probes[-1].offset
    assert "agreement" in reasons
