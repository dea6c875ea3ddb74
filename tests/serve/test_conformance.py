"""Conformance of ``stopbandit serve``: the official ``openai`` client and schemathesis against the real gateway.

The gateway runs as the installed command (``stopbandit serve`` in a
subprocess) in front of our decoder server (engine mode, tiny random Llama,
another subprocess); every request crosses real sockets twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, settings

from tests.serve.upstreams import Upstream, configured_gateway, require

openai = require("openai")
schemathesis = require("schemathesis")

CONFIG = """\
lam = 0.2
token_scale = 1000

[[arms]]
name = "full"
threshold = 1.01
max_think_tokens = 0

[[arms]]
name = "quick"
threshold = 0.3
max_think_tokens = 0

[[arms]]
name = "capped"
threshold = 1.01
max_think_tokens = 12

[gateway]
probe_every = 8
probe_tokens = 4
answer_tokens = 8
max_think_tokens = 32
"""
HEADERS = ("x-stopbandit-decision", "x-stopbandit-arm", "x-stopbandit-propensity")


@pytest.fixture(scope="module")
def gateway(tiny_upstream, tmp_path_factory) -> Iterator[Upstream]:
    with configured_gateway(tiny_upstream.url, CONFIG, tmp_path_factory.mktemp("conformance"),
                            engine="stopbandit", what="stopbandit serve") as (gw, _):
        yield gw


@pytest.fixture(scope="module")
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _check_ours(headers: httpx.Headers, ours: dict, arms=("full", "quick", "capped")) -> None:
    assert all(h in headers for h in HEADERS)
    assert ours["decision_id"] == headers["x-stopbandit-decision"] and ours["arm"] == headers["x-stopbandit-arm"]
    assert ours["arm"] in arms and 0 < float(headers["x-stopbandit-propensity"]) <= 1


@pytest.mark.parametrize("arm", [None, "full", "quick", "capped"])
def test_openai_client_chat(client, arm):
    extra = {"stopbandit": {"arm": arm}} if arm else None
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": "what is 12+34?"}], max_tokens=48, extra_body=extra
    )
    completion = raw.parse()
    ours = completion.model_extra["stopbandit"]
    _check_ours(raw.headers, ours)
    if arm:
        assert ours["arm"] == arm and ours["forced"] is True
    assert completion.object == "chat.completion" and completion.choices[0].message.role == "assistant"
    assert isinstance(completion.choices[0].message.content, str)
    assert completion.usage.completion_tokens == ours["tokens"]["total"] > 0


@pytest.mark.parametrize("arm", ["full", "quick", "capped"])
def test_openai_client_completions(client, arm):
    raw = client.completions.with_raw_response.create(
        model="tiny", prompt="12+34=", max_tokens=48, extra_body={"stopbandit": {"arm": arm}}
    )
    completion = raw.parse()
    ours = completion.model_extra["stopbandit"]
    _check_ours(raw.headers, ours)
    assert ours["arm"] == arm and completion.object == "text_completion"
    assert isinstance(completion.choices[0].text, str) and completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens == ours["tokens"]["total"]
    if arm == "quick":  # a threshold arm: the gateway's probe driver ran, and says how
        assert ours["mode"] == "probe" and "trace" in ours


@pytest.mark.parametrize("kind", ["chat", "completions"])
def test_openai_client_streaming(client, kind):
    if kind == "chat":
        with client.chat.completions.with_streaming_response.create(
            model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=40, stream=True,
            extra_body={"stopbandit": {"arm": "capped"}},
        ) as response:
            headers = response.headers
            chunks = list(response.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reference = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=40,
            extra_body={"stopbandit": {"arm": "capped"}},
        ).choices[0].message.content
    else:
        with client.completions.with_streaming_response.create(
            model="tiny", prompt="hello", max_tokens=40, stream=True, extra_body={"stopbandit": {"arm": "quick"}},
        ) as response:
            headers = response.headers
            chunks = list(response.parse())
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        reference = client.completions.create(
            model="tiny", prompt="hello", max_tokens=40, extra_body={"stopbandit": {"arm": "quick"}},
        ).choices[0].text
    assert all(h in headers for h in HEADERS)
    assert chunks and any(c.choices and c.choices[0].finish_reason for c in chunks)
    assert text == reference  # greedy: streaming and not streaming give the same answer


def test_rewards_unknown_and_conflicting(client, gateway):
    completion = client.completions.create(model="tiny", prompt="7+8=", max_tokens=32,
                                           extra_body={"stopbandit": {"arm": "quick"}})
    decision = completion.model_extra["stopbandit"]["decision_id"]
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        ok = http.post("/v1/rewards", json={"decision_id": decision, "em": 1.0})
        assert ok.status_code == 200 and ok.json()["trace"] is True
        again = http.post("/v1/rewards", json={"decision_id": decision, "em": 1.0})
        assert again.status_code == 200  # idempotent
        conflict = http.post("/v1/rewards", json={"decision_id": decision, "em": 0.0})
        assert conflict.status_code == 409 and conflict.json()["error"]["message"]
        unknown = http.post("/v1/rewards", json={"decision_id": "no-such-decision", "em": 1.0})
        assert unknown.status_code == 404 and "no-such-decision" in unknown.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "status", "match"),
    [
        ("/v1/chat/completions", b"{not json", 400, "JSON"),
        ("/v1/chat/completions", b"[1, 2]", 400, "object"),
        ("/v1/chat/completions", json.dumps({"messages": []}).encode(), 400, "messages"),
        ("/v1/chat/completions", json.dumps({"messages": "hi"}).encode(), 400, "messages"),
        ("/v1/completions", json.dumps({"prompt": "x", "stopbandit": {"arm": "nope"}}).encode(), 400, "nope"),
        ("/v1/completions", json.dumps({"prompt": "x", "max_tokens": "many"}).encode(), 400, "max_tokens"),
        ("/v1/chat/completions", b"{" + b" " * 2_000_000 + b"}", 413, "limit"),
    ],
)
def test_bad_input_is_an_openai_shaped_4xx(gateway, path, body, status, match):
    response = httpx.post(gateway.url + path, content=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert match in error["message"] and isinstance(error["type"], str)


# -- schemathesis: every operation of /openapi.json, generated inputs, no 5xx, responses match the schema ----------

def test_api_conforms_to_its_openapi_schema(gateway):
    """Generated inputs for every operation: no 5xx, documented status codes, bodies that match the schema.

    Driven through schemathesis's Python API (one hypothesis run per operation)
    rather than its pytest plugin, which does not load under this pytest.
    """
    from hypothesis import given
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

    schema = schemathesis.openapi.from_url(gateway.url + "/openapi.json")
    examples = int(os.environ.get("STOPBANDIT_SCHEMATHESIS_EXAMPLES", "12"))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case):
            case.call_and_validate(checks=[not_a_server_error, response_schema_conformance, status_code_conformance],
                                   timeout=120)

        check()


def test_schema_lists_every_endpoint(gateway):
    paths = httpx.get(gateway.url + "/openapi.json", timeout=10).json()["paths"]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/rewards", "/v1/lambda", "/healthz",
                 "/metrics"):
        assert path in paths, f"{path} missing from /openapi.json"
