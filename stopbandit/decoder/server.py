"""A small OpenAI-compatible HTTP server for our own models, in one of two modes.

Standard library only (``http.server.ThreadingHTTPServer``), meant for local
use, tests, benchmarks and demos, not for production traffic: requests are
decoded one at a time under a lock.

``mode="engine"`` (the command line's default) makes it a plain inference
engine, the upstream the gateway (``stopbandit serve``) runs arms on: greedy
continuation of a text or token-id prompt with ``max_tokens``, ``stop``,
``logprobs``, vLLM's ``thinking_token_budget``, streaming, and reuse of the
longest previously computed prefix (:mod:`stopbandit.decoder.engine_api`).
Extra endpoints ``POST /tokenize`` and ``POST /detokenize`` (vLLM's).

``mode="arms"`` runs our early-exit decoder on each request: the request
names an arm and the server thinks, probes and answers (a completions request
with a list of prompts is decoded as one batch). Endpoints:

* ``POST /v1/completions`` -- ``prompt`` (string or list of strings)
* ``POST /v1/chat/completions`` -- ``messages`` (the tokenizer's chat
  template when it has one, else the message contents joined by newlines)
* ``GET /v1/models``, ``GET /health``

The arm comes from the request (:func:`arm_from_request`: thinking budget
fields, ``max_tokens``, ``stopbandit.threshold``). ``usage.completion_tokens``
is every token the decoder spent -- thinking, probes and answer -- with the
split in ``completion_tokens_details``; each choice also carries a
``stopbandit`` object with the stop reason and the probe trace. ``stop``
strings truncate the returned answer text (token counts are unchanged).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from stopbandit.decoder.config import DecoderConfig
from stopbandit.decoder.engine_api import EngineAPI
from stopbandit.decoder.hf import HFDecoder
from stopbandit.decoder.openai_request import arm_from_request
from stopbandit.decoder.result import DecodeResult
from stopbandit.errors import ConfigError, InputError

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_PROMPTS = 64  # prompts in one request: one request holds the decode lock for its whole batch
CLIENT_TIMEOUT_S = 30.0  # a client that sends nothing for this long loses its connection (and its thread)
MODES = ("arms", "engine")


class DecoderServer:
    """Serves ``decoder`` on ``host:port`` (port 0 = any free port) in a background thread.

    ``mode``: ``"arms"`` (the request's arm runs in our early-exit decoder) or
    ``"engine"`` (plain greedy completions with prefix reuse; ``cache_entries``
    sequences are kept).

    >>> # with DecoderServer(decoder) as server: OpenAIClient(server.url, "m").complete("hi", arm)
    """

    def __init__(
        self,
        decoder: HFDecoder,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model_name: str = "stopbandit",
        mode: str = "arms",
        cache_entries: int = 16,
        client_timeout: float = CLIENT_TIMEOUT_S,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"server mode must be one of {list(MODES)}, got {mode!r}")
        self.decoder = decoder
        self.model_name = model_name
        self.mode = mode
        self.engine = EngineAPI(decoder, model_name, cache_entries=cache_entries) if mode == "engine" else None
        self._lock = threading.Lock()
        # the socket timeout: a client that sends nothing for this long loses its connection and its thread
        handler = type("Handler", (_Handler,), {"app": self, "timeout": client_timeout})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> DecoderServer:
        """Start serving in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="stopbandit-decoder-server", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> DecoderServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- request handling (called by the handler) ---------------------------------------

    def complete(self, body: Mapping[str, Any], chat: bool) -> dict[str, Any]:
        """The OpenAI response object for one request body."""
        prompts = self._prompts(body, chat)
        arm = arm_from_request(body, max_answer_tokens=self.decoder.config.max_answer_tokens)
        stop = body.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise InputError(f"request field stop must be a string or a list of strings, got {body.get('stop')!r}")
        prompt_ids = [self.decoder.encode(p) for p in prompts]
        with self._lock:
            results = self.decoder.run_ids(prompt_ids, arm)
        choices = [self._choice(i, r, stop, chat) for i, r in enumerate(results)]
        prompt_tokens = sum(len(p) for p in prompt_ids)
        completion = sum(r.total_tokens for r in results)
        return {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
                "completion_tokens_details": {
                    "reasoning_tokens": sum(r.think_tokens for r in results),
                    "probe_tokens": sum(r.probe_tokens for r in results),
                    "answer_tokens": sum(r.answer_tokens for r in results),
                },
            },
        }

    def _prompts(self, body: Mapping[str, Any], chat: bool) -> list[str]:
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages or not all(
                isinstance(m, Mapping) and isinstance(m.get("content"), str) for m in messages
            ):
                raise InputError(f"request field messages must be a non-empty list of {{role, content}} objects, got {messages!r}")
            tokenizer = self.decoder.tokenizer
            if getattr(tokenizer, "chat_template", None):
                return [tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)]
            return ["\n".join(m["content"] for m in messages)]
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) > MAX_PROMPTS:
                raise InputError(f"request field prompt lists {len(prompt)} prompts; at most {MAX_PROMPTS} per request")
            return list(prompt)
        raise InputError(f"request field prompt must be a string or a non-empty list of strings, got {prompt!r}")

    def _choice(self, index: int, result: DecodeResult, stop: Sequence[str], chat: bool) -> dict[str, Any]:
        text = result.answer
        for s in stop:
            cut = text.find(s)
            if cut >= 0:
                text = text[:cut]
        reasoning = self.decoder.tokenizer.decode(list(result.think_ids), skip_special_tokens=True)
        finish = "stop" if result.answer_complete else "length"
        ours = {"stop_reason": result.stop_reason, "arm": result.arm.to_dict(), "trace": result.trace.to_json()}
        if chat:
            message = {"role": "assistant", "content": text, "reasoning_content": reasoning}
            return {"index": index, "message": message, "finish_reason": finish, "stopbandit": ours}
        return {
            "index": index,
            "text": text,
            "reasoning_content": reasoning,
            "logprobs": None,
            "finish_reason": finish,
            "stopbandit": ours,
        }


class _Handler(BaseHTTPRequestHandler):
    app: DecoderServer
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: headers and body are two writes; with Nagle on, a keep-alive client's delayed ACK holds the body ~40 ms
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        if self.path == "/health":
            self._send(HTTPStatus.OK, self.app.engine.health() if self.app.engine is not None else {"status": "ok"})
        elif self.path == "/v1/models":
            if self.app.engine is not None:
                self._send(HTTPStatus.OK, self.app.engine.models())
            else:
                self._send(HTTPStatus.OK, {"object": "list", "data": [{"id": self.app.model_name, "object": "model"}]})
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such path {self.path}")

    def do_POST(self) -> None:  # noqa: N802
        routes = {"/v1/completions": False, "/v1/chat/completions": True}
        extras = ("/tokenize", "/detokenize") if self.app.engine is not None else ()
        if self.path not in routes and self.path not in extras:
            self._error(HTTPStatus.NOT_FOUND, f"no such path {self.path}")
            return
        body = self._body()
        if body is None:
            return
        try:
            if self.app.engine is None:
                self._send(HTTPStatus.OK, self.app.complete(body, chat=routes[self.path]))
            elif self.path == "/tokenize":
                self._send(HTTPStatus.OK, self.app.engine.tokenize(body))
            elif self.path == "/detokenize":
                self._send(HTTPStatus.OK, self.app.engine.detokenize(body))
            else:
                self._engine(self.app.engine, body, chat=routes[self.path])
        except InputError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except Exception as exc:  # the server must answer even when decoding fails
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")

    def _body(self) -> dict[str, Any] | None:
        """The JSON object posted, or None after answering 400."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._error(HTTPStatus.BAD_REQUEST, "Content-Length must be an integer")
            return None
        if length <= 0 or length > MAX_BODY_BYTES:
            self._error(HTTPStatus.BAD_REQUEST, f"request body must be 1..{MAX_BODY_BYTES} bytes, got {length}")
            return None
        try:
            body = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, f"request body is not JSON: {exc}")
            return None
        except RecursionError:
            self._error(HTTPStatus.BAD_REQUEST, "request body is JSON nested too deeply")
            return None
        if not isinstance(body, dict):
            self._error(HTTPStatus.BAD_REQUEST, "request body must be a JSON object")
            return None
        return body

    def _engine(self, engine: EngineAPI, body: dict[str, Any], chat: bool) -> None:
        request = engine.parse(body, chat)  # InputError -> 400 before anything is sent
        if not request.stream:
            with self.app._lock:
                response = engine.respond(request)
            self._send(HTTPStatus.OK, response)
            return
        # Server-sent events; the connection closes at the end (no Content-Length is known up front).
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def send(event: Any) -> None:
            data = event if isinstance(event, str) else json.dumps(event)
            self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.flush()

        with self.app._lock:
            try:
                engine.stream(request, send)
            except (BrokenPipeError, ConnectionResetError):
                return  # the client went away; the decoded prefix stays cached
            except Exception as exc:  # headers are out: report the failure as the last event
                send({"error": {"message": f"{type(exc).__name__}: {exc}", "type": "server_error", "code": 500}})

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
        return  # quiet: tests and the CLI own the terminal

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._send(status, {"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error", "code": int(status)}})

    def _send(self, status: HTTPStatus, payload: Mapping[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve(
    decoder: HFDecoder,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str = "stopbandit",
    mode: str = "arms",
    on_ready: Any = None,
) -> None:
    """Serve in the foreground until interrupted (SIGINT or SIGTERM); ``on_ready(server)`` runs once bound."""
    import signal

    server = DecoderServer(decoder, host=host, port=port, model_name=model_name, mode=mode)

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        if on_ready is not None:
            on_ready(server)
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.httpd.server_close()


# -- command line: python -m stopbandit.decoder.server ----------------------------------

#: Characters of the ``--tiny`` model's tokenizer (one token each; others map to <unk>).
TINY_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 +=;,.:?!-"


def tiny_decoder(seed: int = 0, arch: str = "llama", init_std: float = 0.2, config: DecoderConfig | None = None) -> HFDecoder:
    """A random-weights char-level model (nothing downloaded): the same seed gives the same model."""
    from stopbandit.decoder.chartok import build_char_tokenizer
    from stopbandit.decoder.tiny import tiny_causal_lm

    tokenizer = build_char_tokenizer(TINY_ALPHABET)
    model = tiny_causal_lm(len(tokenizer), arch=arch, seed=seed, init_std=init_std)
    return HFDecoder(model, tokenizer, config or DecoderConfig(), device="cpu")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stopbandit.decoder.server (--tiny | --model DIR) [--mode engine|arms] [--port 0]``.

    Prints one JSON line ``{"url": ..., "model": ..., "mode": ...}`` on stdout
    once it accepts connections (``--port 0`` picks a free port), then serves
    until SIGINT/SIGTERM.
    """
    import argparse

    import torch

    parser = argparse.ArgumentParser(prog="python -m stopbandit.decoder.server", description=main.__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tiny", action="store_true", help="a random-weights char-level Llama built from a config")
    source.add_argument("--model", metavar="DIR", help="a local model directory (e.g. the testbed's)")
    parser.add_argument("--mode", choices=MODES, default="engine")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-name", default=None, help="the model id to report (default: 'tiny' or the directory name)")
    parser.add_argument("--seed", type=int, default=0, help="--tiny: weight seed")
    parser.add_argument("--arch", choices=("llama", "gpt2"), default="llama", help="--tiny: architecture")
    parser.add_argument("--init-std", type=float, default=0.2, help="--tiny: initializer range (0.2: peaked predictions)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (small models are fastest on one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.tiny:
        decoder, name = tiny_decoder(args.seed, args.arch, args.init_std), args.model_name or "tiny"
    else:
        decoder = HFDecoder.from_pretrained(args.model, device="cpu")
        name = args.model_name or Path(args.model).name

    def ready(server: DecoderServer) -> None:
        print(json.dumps({"url": server.url, "model": name, "mode": args.mode}), flush=True)

    serve(decoder, args.host, args.port, name, args.mode, on_ready=ready)
    return 0


__all__ = ["MODES", "TINY_ALPHABET", "DecoderServer", "main", "serve", "tiny_decoder"]


if __name__ == "__main__":
    raise SystemExit(main())
