"""A trivially fast OpenAI-compatible upstream: canned answers, no model (gateway overhead benchmarks).

Usage::

    python -m benchmarks.gateway_upstream --port 0     # prints {"url": "http://127.0.0.1:PORT"} once bound

A real HTTP/1.1 server (asyncio streams, keep-alive) that answers
``POST /v1/chat/completions`` and ``POST /v1/completions`` with a fixed
response of the right shape (``usage`` with ``reasoning_tokens``), and
``GET /v1/models``. Answering takes a few tens of microseconds, so what a
benchmark measures through the gateway is the gateway's own work. It reads
the request body (and fails the request when it is not JSON) but decodes
nothing; streaming requests get one content chunk, a finish chunk and
``[DONE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

MODEL = "canned"


def _completion(chat: bool, max_tokens: int) -> bytes:
    tokens = max(1, min(max_tokens, 8))
    usage = {
        "prompt_tokens": 12,
        "completion_tokens": tokens,
        "total_tokens": 12 + tokens,
        "completion_tokens_details": {"reasoning_tokens": tokens - 1},
    }
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": "42"}, "logprobs": None, "finish_reason": "stop"}
    else:
        choice = {"index": 0, "text": " 42", "logprobs": None, "finish_reason": "stop"}
    body = {
        "id": "cmpl-canned",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [choice],
        "usage": usage,
    }
    return json.dumps(body).encode()


def _stream(chat: bool) -> bytes:
    kind = "chat.completion.chunk" if chat else "text_completion"
    events = []
    for text, finish in (("42", None), ("", "stop")):
        if chat:
            choice = {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish}
        events.append({"id": "cmpl-canned", "object": kind, "created": int(time.time()), "model": MODEL, "choices": [choice]})
    data = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    return data.encode()


MODELS = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "benchmark"}]}).encode()


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
            length = int(headers.get("content-length", "0"))
            raw = await reader.readexactly(length) if length else b""
            status, ctype, payload = 200, "application/json", b""
            if method == "GET" and path.startswith("/v1/models"):
                payload = MODELS
            elif method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    status, payload = 400, b'{"error": {"message": "body is not JSON", "type": "invalid_request_error"}}'
                else:
                    chat = path == "/v1/chat/completions"
                    if body.get("stream"):
                        ctype, payload = "text/event-stream", _stream(chat)
                    else:
                        limit = body.get("max_completion_tokens") or body.get("max_tokens") or 16
                        payload = _completion(chat, int(limit))
            else:
                status, payload = 404, b'{"error": {"message": "no such path", "type": "invalid_request_error"}}'
            reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                break
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def _main(host: str, port: int) -> None:
    server = await asyncio.start_server(_handle, host, port, backlog=1024)
    bound = server.sockets[0].getsockname()
    print(json.dumps({"url": f"http://{bound[0]}:{bound[1]}", "model": MODEL}), flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gateway_upstream", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        asyncio.run(_main(args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
