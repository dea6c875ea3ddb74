"""The gateway's HTTP API over real sockets: completions, chat, streaming, rewards, λ, health, metrics, errors."""

from __future__ import annotations

import json

import httpx
import pytest

from stopbandit.bandit.trace import ProbeTrace

from tests.serve.toyengine import ToyEngine

DECISION_HEADERS = ("x-stopbandit-decision", "x-stopbandit-arm", "x-stopbandit-propensity")


def _client(gw, **kw) -> httpx.Client:
    return httpx.Client(base_url=gw.url, timeout=60, **kw)


def test_completion_answers_in_openai_shape_with_the_decision_in_headers_and_body(gateway, toy, selector):
    with gateway(upstream=toy.url, probe_every=16, max_think_tokens=48) as gw, _client(gw) as c:
        r = c.post("/v1/completions", json={"prompt": "What is 6*7?", "max_tokens": 100})
    assert r.status_code == 200, r.text
    body = r.json()
    assert all(h in r.headers for h in DECISION_HEADERS)
    ours = body["stopbandit"]
    assert ours["decision_id"] == r.headers["x-stopbandit-decision"]
    assert ours["arm"] == r.headers["x-stopbandit-arm"] in selector.arms.names
    assert float(r.headers["x-stopbandit-propensity"]) == pytest.approx(ours["propensity"], rel=1e-5)
    assert body["object"] == "text_completion" and isinstance(body["choices"][0]["text"], str)
    assert body["usage"]["completion_tokens"] == ours["tokens"]["total"] > 0


def test_chat_completion_uses_the_last_user_message_and_the_metadata_domain(gateway, toy, selector):
    with gateway(upstream=toy.url, probe_every=16, max_think_tokens=32) as gw, _client(gw) as c:
        r = c.post("/v1/chat/completions", json={
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "integrate x^2"}],
            "metadata": {"domain": "math"}, "stopbandit": {"arm": "full"}})
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "chat.completion"
    assert r.json()["choices"][0]["message"]["role"] == "assistant"
    selector.flush()
    decision = selector.store.get_decision(r.headers["x-stopbandit-decision"])
    assert decision["domain"] == "math"


@pytest.mark.parametrize("how", ["body", "header"])
def test_a_pinned_arm_is_served_and_logged_as_forced(gateway, toy, how):
    body = {"prompt": "hello", "max_tokens": 80}
    headers = {}
    if how == "body":
        body["stopbandit"] = {"arm": "careful"}
    else:
        headers["x-stopbandit-arm"] = "careful"
    with gateway(upstream=toy.url, probe_every=16, max_think_tokens=32) as gw, _client(gw) as c:
        r = c.post("/v1/completions", json=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["x-stopbandit-arm"] == "careful"
    assert r.headers["x-stopbandit-propensity"] == "1"
    assert r.json()["stopbandit"]["forced"] is True
    assert r.json()["stopbandit"]["policy_version"].startswith("forced/")


def test_pass_through_arm_forwards_the_body_without_our_fields(gateway, toy):
    with gateway(upstream=toy.url) as gw, _client(gw) as c:
        r = c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 7, "temperature": 0.5, "seed": 3,
                                            "stopbandit": {"arm": "full"}, "metadata": {"domain": "x"}})
    assert r.status_code == 200, r.text
    sent = toy.posted("/v1/completions")[-1]
    assert sent == {"prompt": "hi", "max_tokens": 7, "temperature": 0.5, "seed": 3, "model": "toy"}
    assert r.json()["usage"]["completion_tokens"] == 7


def test_models_are_passed_through(gateway, toy):
    with gateway(upstream=toy.url) as gw, _client(gw) as c:
        r = c.get("/v1/models")
    assert r.status_code == 200
    assert r.json()["data"][0]["id"] == "toy"


@pytest.mark.parametrize("arm", ["full", "balanced"])
@pytest.mark.parametrize("chat", [False, True])
def test_streaming_gives_sse_chunks_ending_in_done_and_records_tokens(gateway, toy, arm, chat):
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body = {"stream": True, "max_tokens": 60, "stopbandit": {"arm": arm}}
    body.update({"messages": [{"role": "user", "content": "count"}]} if chat else {"prompt": "count"})
    with gateway(upstream=toy.url, probe_every=16, max_think_tokens=32) as gw, _client(gw) as c:
        with c.stream("POST", path, json=body) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            decision = r.headers["x-stopbandit-decision"]
            lines = [line for line in r.iter_lines() if line.startswith("data:")]
        assert lines[-1] == "data: [DONE]"
        events = [json.loads(line[5:]) for line in lines[:-1]]
        usage = [e["usage"] for e in events if e.get("usage")]
        assert usage and usage[-1]["completion_tokens"] > 0
        reward = c.post("/v1/rewards", json={"decision_id": decision, "em": 1.0})
    assert reward.status_code == 200, reward.text
    assert reward.json()["tokens"] == usage[-1]["completion_tokens"]


def test_reward_uses_the_engine_reported_tokens_and_the_trace(gateway, toy, selector):
    with gateway(upstream=toy.url, probe_every=16, max_think_tokens=48) as gw, _client(gw) as c:
        r = c.post("/v1/completions", json={"prompt": "q", "stopbandit": {"arm": "careful"}})
        ours = r.json()["stopbandit"]
        ok = c.post("/v1/rewards", json={"decision_id": ours["decision_id"], "em": 1.0})
        again = c.post("/v1/rewards", json={"decision_id": ours["decision_id"], "em": 1.0})
        conflict = c.post("/v1/rewards", json={"decision_id": ours["decision_id"], "em": 0.0})
        unknown = c.post("/v1/rewards", json={"decision_id": "no-such-decision", "em": 1.0})
        unknown_with_tokens = c.post("/v1/rewards", json={"decision_id": "no-such-decision", "em": 1.0,
                                                          "tokens": 5})
    assert ok.status_code == 200, ok.text
    assert ok.json()["tokens"] == ours["tokens"]["total"] == r.json()["usage"]["completion_tokens"]
    assert ok.json()["trace"] is True
    assert again.status_code == 200
    assert conflict.status_code == 409 and conflict.json()["error"]["type"] == "conflict_error"
    for resp in (unknown, unknown_with_tokens):
        assert resp.status_code == 404
        assert "no-such-decision" in resp.json()["error"]["message"]
    selector.flush()
    row = selector.store.get_outcome(ours["decision_id"])
    assert row["tokens"] == ours["tokens"]["total"]
    assert ProbeTrace.from_json(row["trace"]).stop_offset == ours["tokens"]["thinking"]


def test_lambda_get_and_put_with_reason(gateway, toy, selector):
    with gateway(upstream=toy.url) as gw, _client(gw) as c:
        assert c.get("/v1/lambda").json() == {"lambda": 0.2}
        r = c.put("/v1/lambda", json={"lambda": 0.35, "reason": "budget cut"})
        assert r.status_code == 200 and r.json()["lambda"] == 0.35
        assert c.get("/v1/lambda").json() == {"lambda": 0.35}
        missing = c.put("/v1/lambda", json={"lambda": 0.4})
        negative = c.put("/v1/lambda", json={"lambda": -1, "reason": "x"})
    assert selector.lam == 0.35
    assert missing.status_code == 400 and "reason" in missing.json()["error"]["message"]
    assert negative.status_code == 400


def test_healthz_metrics_and_openapi(gateway, toy):
    with gateway(upstream=toy.url, probe_every=16, max_think_tokens=32) as gw, _client(gw) as c:
        c.post("/v1/completions", json={"prompt": "x", "stopbandit": {"arm": "balanced"}})
        health = c.get("/healthz")
        metrics = c.get("/metrics")
        spec = c.get("/openapi.json")
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["selector"]["store_ok"] is True
    assert health.json()["upstream"]["engine"] == "vllm"
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'stopbandit_gateway_requests_total{arm="balanced",mode="probe",status="200"} 1.0' in text
    assert "stopbandit_gateway_tokens_total{kind=\"probe\"}" in text
    assert "stopbandit_store_ok 1.0" in text
    paths = spec.json()["paths"]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/rewards", "/v1/lambda", "/healthz",
                 "/metrics"):
        assert path in paths


@pytest.mark.parametrize(("path", "content", "status", "needle"), [
    ("/v1/completions", b"{not json", 400, "not valid JSON"),
    ("/v1/completions", b"[1, 2]", 400, "JSON object"),
    ("/v1/completions", b"", 400, "empty"),
    ("/v1/completions", b'{"prompt": 5}', 400, "prompt"),
    ("/v1/completions", b'{"max_tokens": 5}', 400, "prompt"),
    ("/v1/completions", b'{"prompt": "x", "stream": "yes"}', 400, "stream"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": -3}', 400, "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "stopbandit": {"arm": "nope"}}', 400, "unknown arm 'nope'"),
    ("/v1/completions", b'{"prompt": "x", "stopbandit": "full"}', 400, "stopbandit"),
    ("/v1/chat/completions", b'{"model": "m"}', 400, "messages"),
    ("/v1/chat/completions", b'{"messages": []}', 400, "messages"),
    ("/v1/chat/completions", b'{"messages": [{"content": "x"}]}', 400, "role"),
    ("/v1/chat/completions", b'{"messages": "hi"}', 400, "messages"),
    ("/v1/rewards", b'{"em": 1}', 400, "decision_id"),
    ("/v1/rewards", b'{"decision_id": "x", "em": "yes"}', 400, "em"),
    ("/v1/rewards", b'{"decision_id": "x", "em": 1, "tokens": 1.5}', 400, "tokens"),
    ("/v1/nope", b"{}", 404, "no such path"),
])
def test_bad_input_gets_an_openai_shaped_4xx_naming_the_problem(gateway, toy, path, content, status, needle):
    with gateway(upstream=toy.url) as gw, _client(gw) as c:
        r = c.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status


def test_oversize_body_is_refused_with_413(gateway, toy):
    with gateway(upstream=toy.url, max_body_bytes=1000) as gw, _client(gw) as c:
        r = c.post("/v1/completions", json={"prompt": "x" * 5000})
        chunked = c.post("/v1/completions", content=iter([b'{"prompt": "', b"y" * 3000, b'"}']))
    for resp in (r, chunked):
        assert resp.status_code == 413
        assert "limit of 1000 bytes" in resp.json()["error"]["message"] or "1000" in resp.json()["error"]["message"]


def test_api_key_guards_rewards_lambda_and_completions(gateway, toy):
    with gateway(upstream=toy.url, api_key="s3cret") as gw, _client(gw) as c:
        assert c.post("/v1/completions", json={"prompt": "x"}).status_code == 401
        assert c.put("/v1/lambda", json={"lambda": 0.1, "reason": "r"}).status_code == 401
        assert c.post("/v1/rewards", json={"decision_id": "a", "em": 1}).status_code == 401
        wrong = c.get("/v1/lambda", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
        auth = {"Authorization": "Bearer s3cret"}
        r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 5, "stopbandit": {"arm": "full"}},
                   headers=auth)
        assert r.status_code == 200
        assert c.post("/v1/rewards", json={"decision_id": r.headers["x-stopbandit-decision"], "em": 1},
                      headers=auth).status_code == 200
        assert c.get("/healthz").status_code == 200  # health and metrics stay open for probes
    with gateway(upstream=toy.url, api_key="s3cret", guard_completions=False) as gw, _client(gw) as c:
        assert c.post("/v1/completions", json={"prompt": "x", "max_tokens": 5,
                                               "stopbandit": {"arm": "full"}}).status_code == 200
        assert c.get("/v1/lambda").status_code == 401


def test_gateway_binds_loopback_by_default(gateway, toy):
    with gateway(upstream=toy.url) as gw:
        assert gw.host == "127.0.0.1"


@pytest.mark.parametrize("arm", ["full", "balanced"])
def test_upstream_failure_is_a_502_logged_with_the_decision(gateway, toy, arm, caplog):
    with gateway(upstream=toy.url, probe_every=16, max_think_tokens=32) as gw, _client(gw) as c:
        toy.status = 500
        r = c.post("/v1/completions", json={"prompt": "x", "stopbandit": {"arm": arm}})
        health = c.get("/healthz")
        toy.status = None
    assert r.status_code == 502
    assert r.json()["error"]["type"] == "upstream_error" and "500" in r.json()["error"]["message"]
    assert r.json()["stopbandit"]["decision_id"] == r.headers["x-stopbandit-decision"]
    assert "Traceback" not in r.text
    assert health.status_code == 200  # the engine answers /v1/models again
    assert any(r.headers["x-stopbandit-decision"] in rec.getMessage() for rec in caplog.records)


def test_upstream_timeout_is_a_504(gateway, toy):
    with gateway(upstream=toy.url, read_timeout_s=0.3) as gw, _client(gw) as c:
        toy.delay_s = 1.0
        r = c.post("/v1/completions", json={"prompt": "x", "stopbandit": {"arm": "full"}})
        toy.delay_s = 0.0
    assert r.status_code == 504
    assert "timed out" in r.json()["error"]["message"]


def test_unreachable_upstream_gives_502_and_an_unhealthy_gateway(gateway):
    with ToyEngine() as gone:
        url = gone.url
    with gateway(upstream=url, engine="vllm", connect_timeout_s=1.0) as gw, _client(gw) as c:
        r = c.post("/v1/completions", json={"prompt": "x", "stopbandit": {"arm": "full"}})
        health = c.get("/healthz")
    assert r.status_code == 502 and "cannot reach upstream" in r.json()["error"]["message"]
    assert health.status_code == 503 and health.json()["upstream"]["ok"] is False


@pytest.mark.parametrize("arm", ["full", "balanced"])
def test_a_stream_whose_upstream_fails_before_answering_gets_an_openai_shaped_502(gateway, toy, arm):
    with gateway(upstream=toy.url, probe_every=16, max_think_tokens=32) as gw, _client(gw) as c:
        toy.status = 503
        r = c.post("/v1/completions", json={"prompt": "x", "stream": True, "stopbandit": {"arm": arm}})
        toy.status = None
    assert r.status_code == 502
    assert r.headers["content-type"].startswith("application/json")
    assert "503" in r.json()["error"]["message"]


def test_an_upstream_4xx_is_passed_on_with_its_reason(gateway, toy):
    with gateway(upstream=toy.url) as gw, _client(gw) as c:
        toy.status = 422
        r = c.post("/v1/completions", json={"prompt": "x", "stopbandit": {"arm": "full"}})
        toy.status = None
    assert r.status_code == 422
    assert "upstream rejected the request (422): toy engine failure" in r.json()["error"]["message"]


def test_rewards_follow_the_selectors_reward_window(db_url, toy):
    from stopbandit import Selector
    from tests.serve.conftest import running

    sel = Selector.open(db_url, seed=0, follow=False, reward_window_s=30, reward_aggregation="sum")
    try:
        with running(sel, upstream=toy.url) as gw, _client(gw) as c:
            r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 5, "stopbandit": {"arm": "full"}})
            decision = r.headers["x-stopbandit-decision"]
            first = c.post("/v1/rewards", json={"decision_id": decision, "em": 0.5})
            second = c.post("/v1/rewards", json={"decision_id": decision, "em": 0.25})
        assert first.status_code == second.status_code == 200, second.text
        assert sel.health().pending_rewards == 1, "the window is still open, aggregating"
    finally:
        sel.close()
    assert sel.store.get_outcome(decision)["em"] == 0.75


def test_the_domain_header_is_logged_with_the_decision(gateway, toy, selector):
    with gateway(upstream=toy.url) as gw, _client(gw) as c:
        r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 3, "stopbandit": {"arm": "full"}},
                   headers={"x-stopbandit-domain": "code"})
    selector.flush()
    assert selector.store.get_decision(r.headers["x-stopbandit-decision"])["domain"] == "code"
