"""A stand-in for an outside inference engine: a real HTTP server speaking OpenAI's API over a toy LM.

It is a test double of the *engine* (vLLM, SGLang, llama.cpp, OpenAI), never
of stopbandit: the gateway talks to it over a real socket. It records every
request body it receives and honours only the budget field of the engine it
plays (``flavour``), ignoring the others silently, as real engines do.

The toy LM is deterministic: the next-token logits are a seeded function of
the last two token ids, greedy decoding picks the maximum. Its vocabulary has
multi-character pieces ("ab", " the", ...), and the model may generate "a" then
"b", which the tokenizer re-tokenizes as "ab": continuing from re-tokenized
text can change the output, as with real BPE models.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SPECIALS = ["<eos>", "</think>"]
PIECES = ["ab", "ba", "an", "the", " the", " a", " b", "Wait", "ing", "er", " is", "42", "**"]
CHARS = [chr(c) for c in range(32, 127)] + ["\n"]
VOCAB = SPECIALS + PIECES + [c for c in CHARS if c not in PIECES]
INDEX = {p: i for i, p in enumerate(VOCAB)}
EOS, THINK_END = 0, 1
BUDGET_FIELD = {"vllm": ("thinking_token_budget",), "llamacpp": ("thinking_budget_tokens",),
                "sglang": ("custom_params", "thinking_budget"), "stopbandit": ("thinking_token_budget",)}


def tokenize(text: str) -> list[int]:
    """Greedy longest match (specials first)."""
    out, i = [], 0
    by_len = sorted(VOCAB, key=len, reverse=True)
    while i < len(text):
        for piece in by_len:
            if text.startswith(piece, i):
                out.append(INDEX[piece])
                i += len(piece)
                break
        else:
            out.append(INDEX["?"])
            i += 1
    return out


def detokenize(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


BIGRAMS = {p[i:i + 2] for p in VOCAB[2:] if len(p) > 1 for i in range(len(p) - 1)}


class ToyLM:
    """``canonical``: never emit a token whose first character forms, with the text's last character, a pair
    found inside a multi-character piece, so the tokenizer splits the generated text exactly as generated."""

    def __init__(self, seed: int = 0, sigma: float = 2.0, canonical: bool = False) -> None:
        self.seed, self.sigma, self.canonical = seed, sigma, canonical

    def logprobs(self, ids: list[int]) -> list[float]:
        a = ids[-2] if len(ids) > 1 else -1
        b = ids[-1] if ids else -1
        context = sum(ids[:-2]) % 13  # the prefix matters too, so probes at different offsets differ
        rng = random.Random(self.seed * 1_000_003 + (a + 7) * 7919 + (b + 11) * 104_729 + context * 15_485_863)
        logits = [rng.gauss(0.0, self.sigma) for _ in VOCAB]
        logits[EOS] -= 6.0
        logits[THINK_END] -= 3.0
        logits[INDEX[" "]] += 1.5
        logits[INDEX["}"]] += 1.0
        if self.canonical and ids:
            last = VOCAB[ids[-1]][-1:]
            for i, piece in enumerate(VOCAB):
                if i > 1 and last + piece[:1] in BIGRAMS:
                    logits[i] = -50.0
        top = max(logits)
        norm = top + math.log(sum(math.exp(v - top) for v in logits))
        return [v - norm for v in logits]

    def generate(self, ids: list[int], n: int, stop_ids: set[int], stop_text: list[str]) -> tuple[
            list[int], list[float], str]:
        """Greedy: (new ids, their logprobs, finish reason). Stops before a stop string (not included)."""
        out: list[int] = []
        lps: list[float] = []
        while len(out) < n:
            lp = self.logprobs(ids + out)
            nxt = max(range(len(lp)), key=lp.__getitem__)
            out.append(nxt)
            lps.append(lp[nxt])
            if nxt in stop_ids:
                return out, lps, "stop"
            text = detokenize(out)
            if any(s in text for s in stop_text):
                return out, lps, "stop"
        return out, lps, "length"


class ToyEngine:
    """``with ToyEngine("vllm") as eng: eng.url``; ``eng.bodies`` lists (path, body) received."""

    def __init__(self, flavour: str = "vllm", *, seed: int = 0, token_prompts: bool = True,
                 canonical: bool = False) -> None:
        self.flavour = flavour
        self.lm = ToyLM(seed, canonical=canonical)
        self.token_prompts = token_prompts
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.delay_s = 0.0
        self.status: int | None = None  # answer every POST with this status
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"engine": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> ToyEngine:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def posted(self, path: str) -> list[dict[str, Any]]:
        return [b for p, b in self.bodies if p == path]

    # -- request handling ---------------------------------------------------------------
    def budget(self, body: dict[str, Any]) -> int | None:
        if self.flavour == "openai":
            return None
        path = BUDGET_FIELD.get(self.flavour, ())
        value: Any = body
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value if isinstance(value, int) else None

    def complete(self, path: str, body: dict[str, Any]) -> dict[str, Any] | tuple[int, str]:
        chat = path == "/v1/chat/completions"
        if chat:
            prompt_ids = tokenize("\n".join(str(m.get("content") or "") for m in body["messages"]))
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
                if not self.token_prompts:
                    return 500, "token prompts are not supported"
                prompt_ids = list(prompt)
            else:
                prompt_ids = tokenize(prompt[0] if isinstance(prompt, list) else prompt)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 64
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        budget = self.budget(body)
        if chat or budget is not None:
            return self._reasoning(chat, body, prompt_ids, max_tokens, budget, stop)
        stop_ids = {EOS} | ({THINK_END} if "</think>" in stop else set())
        ids, lps, finish = self.lm.generate(prompt_ids, max_tokens, stop_ids, [s for s in stop if s != "</think>"])
        text = detokenize([i for i in ids if i not in (EOS, THINK_END)])
        for s in stop:
            cut = text.find(s)
            if cut >= 0:
                text = text[:cut]
        choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": finish,
                                  "logprobs": None}
        if body.get("logprobs") is not None:
            pieces = [VOCAB[i] for i in ids]
            choice["logprobs"] = {"tokens": pieces, "token_logprobs": lps,
                                  "top_logprobs": [{p: lp} for p, lp in zip(pieces, lps)],
                                  "text_offset": [sum(len(x) for x in pieces[:k]) for k in range(len(pieces))]}
            if finish == "stop":  # as engines do: the stop string is not in the text, nor its tokens
                keep, at = 0, 0
                while keep < len(pieces) and at + len(pieces[keep]) <= len(text):
                    at += len(pieces[keep])
                    keep += 1
                for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                    choice["logprobs"][key] = choice["logprobs"][key][:keep]
        if body.get("return_token_ids") or body.get("return_tokens"):
            choice["token_ids" if self.flavour != "llamacpp" else "tokens"] = ids
        return {"id": "cmpl-toy", "object": "text_completion", "created": int(time.time()), "model": "toy",
                "choices": [choice], "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": len(ids),
                                               "total_tokens": len(prompt_ids) + len(ids)}}

    def _reasoning(self, chat: bool, body: dict[str, Any], prompt_ids: list[int], max_tokens: int,
                   budget: int | None, stop: list[str]) -> dict[str, Any]:
        """A reasoning model's answer: think (up to the budget), close with </think>, answer."""
        think_cap = min(budget if budget is not None else max_tokens, max_tokens)
        think, _, finish = self.lm.generate(prompt_ids, think_cap, {THINK_END, EOS}, [])
        if finish == "length":
            think = think + [THINK_END]
        left = max(0, max_tokens - len(think))
        answer, _, finish = self.lm.generate(prompt_ids + think, min(left, 32), {EOS}, stop)
        reasoning = detokenize([i for i in think if i != THINK_END])
        content = detokenize([i for i in answer if i != EOS])
        usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": len(think) + len(answer),
                 "total_tokens": len(prompt_ids) + len(think) + len(answer),
                 "completion_tokens_details": {"reasoning_tokens": len(think)}}
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": content,
                                              "reasoning_content": reasoning}, "finish_reason": finish}
            return {"id": "chatcmpl-toy", "object": "chat.completion", "created": int(time.time()), "model": "toy",
                    "choices": [choice], "usage": usage}
        return {"id": "cmpl-toy", "object": "text_completion", "created": int(time.time()), "model": "toy",
                "choices": [{"index": 0, "text": content, "reasoning_content": reasoning, "finish_reason": finish,
                             "logprobs": None}], "usage": usage}


class _Handler(BaseHTTPRequestHandler):
    engine: ToyEngine
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "toy", "object": "model",
                                                         "owned_by": self.engine.flavour}]})
        else:
            self._send(404, {"error": {"message": f"no such path {self.path}"}})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        eng = self.engine
        with eng.lock:
            eng.bodies.append((self.path, body))
        if eng.delay_s:
            time.sleep(eng.delay_s)
        if eng.status is not None:
            self._send(eng.status, {"error": {"message": "toy engine failure", "code": eng.status}})
            return
        if self.path == "/tokenize":
            if isinstance(body.get("messages"), list):  # vLLM renders the chat template here
                text = "\n".join(str(m.get("content") or "") for m in body["messages"])
            else:
                text = body.get("prompt", body.get("content", ""))
            self._send(200, {"tokens": tokenize(text), "count": len(tokenize(text))})
        elif self.path == "/detokenize":
            self._send(200, {"prompt": detokenize(body.get("tokens", []))})
        elif self.path in ("/v1/completions", "/v1/chat/completions"):
            out = eng.complete(self.path, body)
            if isinstance(out, tuple):
                self._send(out[0], {"error": {"message": out[1]}})
            elif body.get("stream"):
                self._stream(out, body, self.path == "/v1/chat/completions")
            else:
                self._send(200, out)
        else:
            self._send(404, {"error": {"message": f"no such path {self.path}"}})

    def _stream(self, out: dict[str, Any], body: dict[str, Any], chat: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        choice = out["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        events = []
        for i in range(0, len(text), 4):
            piece = text[i:i + 4]
            events.append({"choices": [{"index": 0, "delta": {"content": piece}} if chat else
                                       {"index": 0, "text": piece}]})
        events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({"choices": [], "usage": out["usage"]})
        for event in events:
            self._chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(HTTPStatus(status))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
