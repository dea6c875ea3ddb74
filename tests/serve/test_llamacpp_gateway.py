"""End to end on a third-party engine: ``stopbandit serve`` in front of llama-cpp-python's server + SmolLM2.

Both run as subprocesses; the gateway detects the engine itself
(``--engine auto``). Covered: a budget arm (this engine has no budget field,
so the two-call fallback runs), a probe arm (DEER probes with logprobs,
chunks continued from text cut where it round-trips), the thinking decoded
in chunks equal to one direct call, the OpenAI client, and a reward whose
probe trace lands in the replay store.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from stopbandit.bandit.trace import ProbeTrace
from stopbandit.replay.store import ReplayStore
from tests.serve.upstreams import LLAMACPP_GREEDY, Upstream, configured_gateway, require

CONFIG = """\
lam = 0.2
token_scale = 1000

[[arms]]
name = "full"
threshold = 1.01
max_think_tokens = 0

[[arms]]
name = "deer"
threshold = 0.5
max_think_tokens = 0

[[arms]]
name = "cap16"
threshold = 1.01
max_think_tokens = 16

[gateway]
probe_every = 16
probe_tokens = 8
answer_tokens = 16
max_think_tokens = 48
answer_suffix = "\\nFinal answer: "
answer_stop = ["\\n"]
"""
QUESTION = "What is 17 * 23? Explain step by step."
#: The same question as a completions prompt, in SmolLM2's chat template (ChatML).
PROMPT = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def stack(llamacpp_upstream, tmp_path_factory) -> Iterator[tuple[Upstream, str]]:
    with configured_gateway(llamacpp_upstream.url, CONFIG, tmp_path_factory.mktemp("llamacpp-gateway"),
                            what="stopbandit serve in front of llama-cpp-python") as stack:
        yield stack


def post(gw: Upstream, path: str, body: dict) -> httpx.Response:
    return httpx.post(gw.url + path, json=body, timeout=300)


def test_engine_is_detected_as_llama_cpp_python(stack):
    gw, _ = stack
    health = httpx.get(gw.url + "/healthz", timeout=30).json()
    assert health["upstream"]["engine"] == "llamacpp-python" and health["chunking"] == "text"


def test_budget_arm_runs_the_two_call_fallback(stack):
    gw, _ = stack
    r = post(gw, "/v1/chat/completions", {"messages": [{"role": "user", "content": QUESTION}],
                                          "stopbandit": {"arm": "cap16"}})
    assert r.status_code == 200, r.text
    ours, usage = r.json()["stopbandit"], r.json()["usage"]
    assert ours["mode"] == "fallback" and ours["tokens"]["thinking"] <= 16
    assert usage["completion_tokens"] == ours["tokens"]["total"] == ours["tokens"]["thinking"] + ours["tokens"]["answer"]
    assert r.headers["x-stopbandit-arm"] == "cap16"


def test_probe_arm_probes_with_logprobs_and_the_reward_logs_its_trace(stack):
    gw, db = stack
    r = post(gw, "/v1/completions", {"prompt": PROMPT, "stopbandit": {"arm": "deer"}})
    assert r.status_code == 200, r.text
    ours = r.json()["stopbandit"]
    assert ours["mode"] == "probe" and ours["chunking"] == "text"
    trace = ProbeTrace.from_json(ours["trace"])
    assert trace.probes and all(0.0 <= p.confidence <= 1.0 for p in trace.probes)
    assert ours["tokens"]["probes"] == sum(p.tokens for p in trace.probes if p.offset < trace.stop_offset)
    spent = ours["tokens"]
    assert spent["thinking"] + spent["probes"] + spent["answer"] == trace.total_tokens
    # what the engine reported: the trace's tokens plus those decoded past a chunk's cut and decoded again
    assert r.json()["usage"]["completion_tokens"] == spent["total"]
    assert 0 <= spent["total"] - trace.total_tokens < 16 * (len(trace.probes) + 1)
    reward = post(gw, "/v1/rewards", {"decision_id": ours["decision_id"], "em": 1.0, "reference": "391"})
    assert reward.status_code == 200 and reward.json()["trace"] is True
    store = ReplayStore(db)
    try:
        outcome = store.get_outcome(ours["decision_id"])
        for _ in range(100):  # the gateway's background writer commits in batches
            if outcome is not None:
                break
            time.sleep(0.1)
            outcome = store.get_outcome(ours["decision_id"])
        assert outcome is not None and outcome["trace"] is not None
        assert store.get_decision(ours["decision_id"])["arm"] == "deer"
    finally:
        store.dispose()


def test_thinking_decoded_in_chunks_equals_one_direct_call(stack, llamacpp_upstream):
    gw, _ = stack
    r = post(gw, "/v1/completions", {"prompt": PROMPT, "stopbandit": {"arm": "deer"}})
    assert r.status_code == 200, r.text
    ours = r.json()["stopbandit"]
    assert ours["tokens"]["thinking"] > 0
    one = httpx.post(llamacpp_upstream.url + "/v1/completions", json={
        "prompt": PROMPT, "max_tokens": ours["tokens"]["thinking"], **LLAMACPP_GREEDY}, timeout=300).json()
    assert r.json()["choices"][0]["reasoning_content"] == one["choices"][0]["text"]


def test_openai_client_through_the_gateway(stack):
    openai = require("openai")
    gw, _ = stack
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    chat = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": QUESTION}],
                                          extra_body={"stopbandit": {"arm": "deer"}})
    assert isinstance(chat.choices[0].message.content, str) and chat.model_extra["stopbandit"]["arm"] == "deer"
    chunks = list(client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": QUESTION}],
                                                 stream=True, extra_body={"stopbandit": {"arm": "cap16"}}))
    assert chunks and any(c.choices and c.choices[0].finish_reason for c in chunks)
