"""The decoder server's engine mode: plain greedy /v1/completions with logprobs and prefix reuse, over real sockets.

The central property: decoding in chunks -- each call continuing from the
token ids of the previous ones, with probes and unrelated requests in
between -- gives exactly the tokens (and log-probabilities) of one call.
"""

from __future__ import annotations

import json
import math
import urllib.request

import pytest

from stopbandit.decoder.chartok import build_char_tokenizer
from stopbandit.decoder.config import DecoderConfig
from stopbandit.decoder.hf import HFDecoder
from stopbandit.decoder.server import DecoderServer, tiny_decoder
from stopbandit.decoder.tiny import tiny_causal_lm
from tests.serve.upstreams import post_json

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 +=;,"
PROMPTS = ["hello world", "12+34=", "the cat sat", "zz top"]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def server(request):
    tokenizer = build_char_tokenizer(ALPHABET)
    if request.param == "llama":
        model = tiny_causal_lm(len(tokenizer), arch="llama", seed=0, init_std=0.2)
    else:
        model = tiny_causal_lm(len(tokenizer), arch="gpt2", seed=1, init_std=0.3)
    decoder = HFDecoder(model, tokenizer, DecoderConfig(max_answer_tokens=4), device="cpu")
    with DecoderServer(decoder, model_name="tiny", mode="engine", cache_entries=4) as running:
        yield running


def complete(server, **body):
    status, data = post_json(server.url + "/v1/completions", {"model": "tiny", **body})
    assert status == 200, data
    return data


def one_call(server, prompt, n):
    """Generated ids and logprobs of one call (stopping at EOS like any engine)."""
    data = complete(server, prompt=prompt, max_tokens=n, logprobs=3, return_token_ids=True)
    choice = data["choices"][0]
    return choice["prompt_token_ids"], choice["token_ids"], choice["logprobs"]["token_logprobs"]


@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_chunked_decoding_with_probes_gives_the_tokens_of_one_call(server, chunk):
    for prompt in PROMPTS:
        prompt_ids, want, want_lp = one_call(server, prompt, 40)
        got, got_lp = [], []
        while len(got) < len(want):
            data = complete(server, prompt=prompt_ids + got, max_tokens=min(chunk, len(want) - len(got)), logprobs=3,
                            return_token_ids=True)
            choice = data["choices"][0]
            assert data["usage"]["prompt_tokens_details"]["cached_tokens"] == len(prompt_ids) + len(got) - 1
            got += choice["token_ids"]
            got_lp += choice["logprobs"]["token_logprobs"]
            # a probe branches off the reasoning (think_end = id 4, then up to 4 answer tokens) ...
            complete(server, prompt=prompt_ids + got + [4], max_tokens=4, logprobs=1)
            # ... and an unrelated request takes another cache entry
            complete(server, prompt="qq " + prompt, max_tokens=3)
        assert got == want
        assert got_lp == want_lp  # bit for bit: every position is computed by the same one-token step


def test_a_fresh_server_and_a_warm_one_agree(server):
    """What an earlier request left in the cache does not change the answer."""
    tokenizer = server.decoder.tokenizer
    cold = DecoderServer(server.decoder, model_name="tiny", mode="engine")
    with cold:
        for prompt in PROMPTS:
            a = complete(cold, prompt=prompt, max_tokens=20, logprobs=0, return_token_ids=True)["choices"][0]
            b = complete(server, prompt=prompt, max_tokens=20, logprobs=0, return_token_ids=True)["choices"][0]
            assert a["token_ids"] == b["token_ids"] and a["logprobs"] == b["logprobs"]
            assert a["prompt_token_ids"] == tokenizer.encode(prompt)


def test_logprobs_have_openai_completions_shape(server):
    data = complete(server, prompt="the cat", max_tokens=12, logprobs=2, return_token_ids=True)
    choice = data["choices"][0]
    lp = choice["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    n = len(choice["token_ids"])
    assert data["usage"]["completion_tokens"] == n and data["usage"]["total_tokens"] == n + data["usage"]["prompt_tokens"]
    assert all(len(lp[k]) == n for k in lp)
    assert "".join(lp["tokens"]) == choice["text"]  # no stop string; an end-of-text token's piece is ""
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(n)]
    for value, top in zip(lp["token_logprobs"], lp["top_logprobs"]):
        assert len(top) == 2 and max(top.values()) == value  # greedy: the best one
        assert value <= 0 and math.isfinite(value)
    ids_as_tokens = complete(server, prompt="the cat", max_tokens=3, logprobs=0, return_tokens_as_token_ids=True)
    assert ids_as_tokens["choices"][0]["logprobs"]["tokens"] == [f"token_id:{t}" for t in choice["token_ids"][:3]]


def test_stop_strings_cut_the_text_but_not_the_tokens(server):
    full = complete(server, prompt="hello world", max_tokens=30, logprobs=0, return_token_ids=True)["choices"][0]
    text = full["text"]
    stop = text[5:7]
    cut = complete(server, prompt="hello world", max_tokens=30, stop=[stop, "never"], return_token_ids=True)["choices"][0]
    assert cut["text"] == text[: text.index(stop)] and cut["finish_reason"] == "stop"
    k = len(cut["token_ids"])
    assert cut["token_ids"] == full["token_ids"][:k] and len("".join(full["logprobs"]["tokens"][:k])) >= text.index(stop) + len(stop)


def test_thinking_token_budget_forces_the_end_of_thinking(server):
    data = complete(server, prompt="12+34=", max_tokens=20, thinking_token_budget=6, return_token_ids=True)
    choice = data["choices"][0]
    ids = choice["token_ids"]
    free = complete(server, prompt="12+34=", max_tokens=6, return_token_ids=True)["choices"][0]["token_ids"]
    think_end = server.engine.spec.think_end
    assert think_end == (4,) and 4 not in free and 1 not in free  # the test's premise: thinking still open after 6
    assert ids[:6] == free and ids[6] == 4 and "</think>" in choice["text"]
    assert data["usage"]["completion_tokens"] == len(ids) <= 20
    assert data["usage"]["completion_tokens_details"]["reasoning_tokens"] <= 6 + len(think_end)


def test_streaming_sends_the_same_text_and_usage(server):
    want = complete(server, prompt="zz top", max_tokens=15, stop=["x"])
    body = {"model": "tiny", "prompt": "zz top", "max_tokens": 15, "stop": ["x"], "stream": True,
            "stream_options": {"include_usage": True}}
    request = urllib.request.Request(server.url + "/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        events = [line[6:] for line in response.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == want["choices"][0]["text"]
    assert chunks[-2]["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == want["usage"]["completion_tokens"]


def test_chat_completion_splits_reasoning_at_think_end(server):
    status, data = post_json(server.url + "/v1/chat/completions", {
        "model": "tiny", "messages": [{"role": "user", "content": "12+34="}], "max_tokens": 20,
        "thinking_token_budget": 5, "logprobs": True, "top_logprobs": 1,
    })
    assert status == 200, data
    message = data["choices"][0]["message"]
    text = complete(server, prompt="12+34=", max_tokens=20, thinking_token_budget=5)["choices"][0]["text"]  # no chat template
    assert message["role"] == "assistant" and message["reasoning_content"] is not None
    assert message["reasoning_content"] + "</think>" + message["content"] == text
    assert "</think>" not in message["reasoning_content"]
    assert len(data["choices"][0]["logprobs"]["content"]) == data["usage"]["completion_tokens"]


@pytest.mark.parametrize(
    ("body", "status", "match"),
    [
        ({"prompt": "x", "temperature": 0.7}, 400, "temperature"),
        ({"prompt": "x", "n": 2}, 400, "request field n"),
        ({"prompt": "x", "echo": True}, 400, "echo"),
        ({"prompt": [-1, 3]}, 400, "token ids"),
        ({"prompt": []}, 400, "prompt"),
        ({"prompt": 3}, 400, "prompt"),
        ({"prompt": "x", "logprobs": 21}, 400, "logprobs"),
        ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"prompt": "x", "max_tokens": 5000}, 400, "context"),
        ({"prompt": "x", "stop": [""]}, 400, "stop"),
        ({"prompt": "x", "thinking_budget_tokens": 5}, 400, "thinking_token_budget"),
        ({"prompt": "x", "stream_options": 3}, 400, "stream_options"),
    ],
)
def test_bad_requests_are_openai_shaped_400s(server, body, status, match):
    got, data = post_json(server.url + "/v1/completions", body)
    assert got == status and data["error"]["code"] == status
    assert match in data["error"]["message"]


def test_models_tokenize_and_detokenize(server):
    with urllib.request.urlopen(server.url + "/v1/models", timeout=10) as response:
        models = json.loads(response.read())
    entry = models["data"][0]
    assert entry["id"] == "tiny" and entry["stopbandit"]["think_end"] == "</think>" and entry["max_model_len"] == 1024
    status, tok = post_json(server.url + "/tokenize", {"prompt": "12+3</think>"})
    assert status == 200 and tok["count"] == 5 and tok["tokens"][-1] == 4
    status, text = post_json(server.url + "/detokenize", {"tokens": tok["tokens"]})
    assert status == 200 and text["prompt"] == "12+3</think>"


def test_prefix_cache_keeps_its_size_and_counts_hits():
    decoder = tiny_decoder(seed=3)
    with DecoderServer(decoder, mode="engine", cache_entries=2) as srv:
        for prompt in ("aaa", "bbb", "ccc", "aaa"):
            complete(srv, prompt=prompt, max_tokens=2)
        cache = srv.engine.completer.cache
        assert len(cache) == 2 and cache.hits == 0  # "aaa" was evicted before it came back
        complete(srv, prompt="aaab", max_tokens=2)
        assert cache.hits == 1 and cache.reused_tokens == 3
        with urllib.request.urlopen(srv.url + "/health", timeout=10) as response:
            health = json.loads(response.read())
        assert health == {"status": "ok", "completions": 5, "prefix_cache": {"entries": 2, "hits": 1, "reused_tokens": 3}}


@pytest.mark.parametrize("budget", [3, None], ids=["think-end-forced", "no-think-end"])
def test_chat_streaming_splits_reasoning_like_the_whole_response(server, budget):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "the cat"}], "max_tokens": 16}
    if budget:
        body["thinking_token_budget"] = budget
    status, whole = post_json(server.url + "/v1/chat/completions", body)
    assert status == 200, whole
    request = urllib.request.Request(server.url + "/v1/chat/completions", data=json.dumps({**body, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        events = [json.loads(line[6:]) for line in response.read().decode().splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    deltas = [e["choices"][0]["delta"] for e in events]
    message = whole["choices"][0]["message"]
    assert deltas[0]["role"] == "assistant"
    assert "".join(d.get("reasoning_content", "") for d in deltas) == message["reasoning_content"]
    assert "".join(d.get("content", "") for d in deltas) == message["content"]
    text = complete(server, prompt="the cat", max_tokens=16, **({"thinking_token_budget": budget} if budget else {}))
    reasoning, _, content = text["choices"][0]["text"].partition("</think>")
    assert (message["reasoning_content"], message["content"]) == (reasoning, content)  # all reasoning without "</think>"
