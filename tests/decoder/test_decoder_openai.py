"""OpenAI-compatible adapter: arm <-> request mapping, and the client against our real HTTP server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from stopbandit.bandit.arms import Arm
from stopbandit.decoder.config import DecoderConfig
from stopbandit.decoder.hf import HFDecoder
from stopbandit.decoder.openai_client import OpenAIClient, RemoteError
from stopbandit.decoder.openai_request import DELIMITER_SLACK, NEVER_STOP, arm_from_request, arm_to_request
from stopbandit.decoder.server import DecoderServer
from stopbandit.errors import InputError

ANSWER = 4


@pytest.fixture(scope="module")
def decoder(llama, tokenizer):
    config = DecoderConfig(probe_every=4, max_answer_tokens=ANSWER, max_think_tokens=24, answer_end=(";",))
    return HFDecoder(llama, tokenizer, config, device="cpu")


@pytest.fixture(scope="module")
def server(decoder):
    with DecoderServer(decoder, model_name="tiny") as running:
        yield running


def test_arm_to_request_speaks_vllm():
    body = arm_to_request(Arm("aggressive", 0.75, 512), chat=True, max_answer_tokens=16, stop=["\n"])
    assert body["thinking_token_budget"] == 512
    assert body["chat_template_kwargs"] == {"thinking_budget": 512}
    assert body["max_tokens"] == 512 + 16 + DELIMITER_SLACK
    assert body["stop"] == ["\n"] and body["temperature"] == 0
    assert body["stopbandit"] == {"arm": "aggressive", "threshold": 0.75, "max_think_tokens": 512}
    open_ended = arm_to_request(Arm("full", 1.01, 0), default_max_tokens=2048)
    assert "thinking_token_budget" not in open_ended and open_ended["max_tokens"] == 2048


def test_arm_round_trips_through_a_request():
    for arm in (Arm("aggressive", 0.75, 512), Arm("careful", 0.97, 0)):
        back = arm_from_request(arm_to_request(arm, max_answer_tokens=16, default_max_tokens=100_000), max_answer_tokens=16)
        assert (back.name, back.threshold) == (arm.name, arm.threshold)
        assert back.max_think_tokens == (arm.max_think_tokens or 100_000 - 16)
    assert arm_from_request({"reasoning_budget": 7}, max_answer_tokens=4).max_think_tokens == 7
    assert arm_from_request({"max_tokens": 10}, max_answer_tokens=4).max_think_tokens == 6
    assert arm_from_request({}, max_answer_tokens=4) == Arm("request", NEVER_STOP, 0)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"thinking_token_budget": -3}, "thinking_token_budget"),
        ({"thinking_budget": "many"}, "thinking_budget"),
        ({"max_tokens": 4}, "max_tokens"),
        ({"stopbandit": {"threshold": "high"}}, "stopbandit.threshold"),
        ({"stopbandit": {"threshold": 7.0}}, "threshold"),
        ({"stopbandit": [1]}, "stopbandit"),
    ],
)
def test_arm_from_request_rejects(body, match):
    with pytest.raises(InputError, match=match):
        arm_from_request(body, max_answer_tokens=4)


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_client_against_real_server_matches_local_decoder(server, decoder, prompts, chat):
    client = OpenAIClient(server.url, "tiny", chat=chat, max_answer_tokens=ANSWER)
    arms = [Arm("full", 1.01, 0), Arm("cap8", 1.01, 8), Arm("t30", 0.30, 0), Arm("t20c12", 0.2, 12)]
    for prompt, arm in zip(prompts, arms):
        remote = client.complete(prompt, arm)
        (local,) = decoder.run([prompt], arm)
        assert remote.answer == local.answer
        assert remote.tokens == local.total_tokens == remote.trace.total_tokens
        assert remote.reasoning_tokens == local.think_tokens
        assert remote.stop_reason == local.stop_reason
        assert remote.trace.to_json() == local.trace.to_json()
        assert remote.prompt_tokens == len(decoder.encode(prompt))
        if arm.max_think_tokens:
            assert local.think_tokens <= arm.max_think_tokens  # the budget is honored


def test_server_batches_a_prompt_list_and_reports_usage(server, decoder, prompts):
    body = {"model": "tiny", "prompt": prompts[:3], "thinking_token_budget": 8, "stop": ["r"]}
    request = urllib.request.Request(
        server.url + "/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        data = json.loads(response.read())
    local = decoder.run(prompts[:3], Arm("request", NEVER_STOP, 8))
    assert [c["text"] for c in data["choices"]] == [r.answer.split("r")[0] for r in local]
    assert data["usage"]["completion_tokens"] == sum(r.total_tokens for r in local)
    assert data["usage"]["completion_tokens_details"]["probe_tokens"] == sum(r.probe_tokens for r in local)
    assert all(c["stopbandit"]["stop_reason"] == "budget" for c in data["choices"])


def test_server_rejects_bad_requests_with_400(server):
    client = OpenAIClient(server.url, "tiny")
    with pytest.raises(InputError, match="prompt"):
        client._post("/v1/completions", {"model": "tiny", "prompt": 3})
    with pytest.raises(InputError, match="max_tokens"):
        client._post("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 2})
    with urllib.request.urlopen(server.url + "/health", timeout=10) as response:
        assert json.loads(response.read()) == {"status": "ok"}


def _raw_post(url: str, data: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/v1/completions", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(("data", "needle"), [
    (b'{"prompt": "\xff\xfe"}', "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (json.dumps({"model": "tiny", "prompt": ["x"] * 5000}).encode(), "at most 64 per request"),
])
def test_server_answers_every_bad_body_with_400(server, data, needle):
    status, body = _raw_post(server.url, data)
    assert status == 400 and needle in body["error"]["message"]


def test_server_drops_a_client_that_stops_sending(decoder):
    import socket

    with DecoderServer(decoder, model_name="tiny", client_timeout=1.0) as slow:
        host, port = slow.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")  # half a body
            sock.settimeout(30)
            assert sock.recv(1024) == b""  # the server closes the connection instead of waiting forever


def test_client_reports_unreachable_server():
    with _closed_port() as url:
        with pytest.raises(RemoteError, match="cannot reach"):
            OpenAIClient(url, "m", timeout=2).complete("hi", Arm("full", 1.01))


class _closed_port:
    """A loopback URL on which nothing listens."""

    def __enter__(self) -> str:
        import socket

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        return None


def test_client_validates_base_url():
    with pytest.raises(InputError, match="base_url"):
        OpenAIClient("localhost:8000", "m")
