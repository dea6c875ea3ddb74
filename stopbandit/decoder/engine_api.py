"""OpenAI ``/v1/completions`` and ``/v1/chat/completions`` for a plain greedy engine.

This is the request/response side of the decoder server's ``engine`` mode:
the server behaves like an inference engine (vLLM, llama.cpp) with prefix
caching, so the gateway can run any arm on it over HTTP. Supported fields:

=============================  ==================================================
request field                   meaning
=============================  ==================================================
``prompt``                      text, or an array of token ids (continue exactly
                                from those tokens); a one-element list of either
``messages`` (chat)             the tokenizer's chat template when it has one,
                                else the contents joined by newlines; then
                                ``think_start``. The answer's text before the
                                first ``think_end`` is ``reasoning_content`` (all
                                of it when none comes), the rest ``content``;
                                streamed the same way
``max_tokens``                  default 16 (``max_completion_tokens`` for chat)
``stop``                        string or list of strings; the text ends before
                                the first one (its tokens are still generated,
                                counted and listed in ``token_ids``)
``temperature``                 absent or 0: decoding is greedy
``logprobs``                    completions: an int k in [0, 20], OpenAI's shape
                                ``{tokens, token_logprobs, top_logprobs,
                                text_offset}``; chat: ``logprobs: true`` and
                                ``top_logprobs: k``
``thinking_token_budget``       vLLM's budget: after that many completion tokens
                                without ``think_end``, ``think_end`` +
                                ``answer_prefix`` are forced and decoding goes on
``return_token_ids``            (vLLM) adds ``token_ids`` and ``prompt_token_ids``
                                to each choice
``return_tokens_as_token_ids``  (vLLM) logprob tokens read ``"token_id:N"``
``stream``                      server-sent events, ``stream_options.include_usage``
=============================  ==================================================

``usage.prompt_tokens_details.cached_tokens`` reports how many prompt tokens
came from the prefix cache. Text keeps special tokens (``</think>`` stays
visible); end-of-text tokens are generated and counted but not shown.
Unknown fields are ignored, as engines do, except the budget aliases that
would otherwise be silently ignored (``thinking_budget``, ``reasoning_budget``,
``max_thinking_tokens``, ``thinking_budget_tokens``): they are refused.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stopbandit import validation
from stopbandit.decoder.completion import Continuation, GreedyCompleter
from stopbandit.errors import InputError

#: Default ``max_tokens`` (OpenAI's legacy completions default).
DEFAULT_MAX_TOKENS = 16
#: Most alternatives ``logprobs`` / ``top_logprobs`` may ask for.
MAX_TOP_LOGPROBS = 20
#: Budget spellings of other engines: refused here rather than silently ignored.
FOREIGN_BUDGET_FIELDS = ("thinking_budget", "reasoning_budget", "max_thinking_tokens", "thinking_budget_tokens")


@dataclass(frozen=True, slots=True)
class EngineRequest:
    """One validated request."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    stop: tuple[str, ...]
    top_logprobs: int | None  # None: no logprobs
    budget: int | None
    token_ids: bool
    ids_as_tokens: bool
    stream: bool
    include_usage: bool
    chat: bool


def _int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    return int(validation.within(value, f"request field {name}", low=lo, high=hi, integral=True, error=InputError))


def _flag(name: str, value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InputError(f"request field {name} must be true or false, got {value!r}")
    return value


class EngineAPI:
    """Turns request bodies into :class:`GreedyCompleter` calls and OpenAI responses.

    ``decoder``: an :class:`~stopbandit.decoder.hf.HFDecoder` (its model,
    tokenizer and delimiter settings are used; its early-exit core is not).
    """

    def __init__(self, decoder: Any, model_name: str, *, cache_entries: int = 16) -> None:
        self.tokenizer = decoder.tokenizer
        self.config = decoder.config
        self.spec = decoder.spec
        self.model_name = model_name
        self.completer = GreedyCompleter(decoder.model, sorted(self.spec.think_stop), max_entries=cache_entries)
        self._end = self.completer.end_ids
        self.completions = 0  # completion requests decoded (benchmarks count upstream calls with it)

    # -- request parsing -------------------------------------------------------------

    def parse(self, body: Mapping[str, Any], chat: bool) -> EngineRequest:
        for name in FOREIGN_BUDGET_FIELDS:
            if body.get(name) is not None:
                raise InputError(f"request field {name} is not supported here; this server's budget field is thinking_token_budget")
        prompt_ids = self._chat_ids(body) if chat else self._prompt_ids(body.get("prompt"))
        limit_field = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
        raw = body.get(limit_field)
        max_tokens = DEFAULT_MAX_TOKENS if raw is None else _int(limit_field, raw, 1)
        stop = body.get("stop")
        stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise InputError(f"request field stop must be a non-empty string or a list of them, got {body.get('stop')!r}")
        temperature = body.get("temperature")
        if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature != 0):
            raise InputError(f"request field temperature must be 0 (this server decodes greedily), got {temperature!r}")
        n = body.get("n")
        if n is not None and n != 1:
            raise InputError(f"request field n must be 1 (one greedy completion), got {n!r}")
        if _flag("echo", body.get("echo")):
            raise InputError("request field echo is not supported (set it false or leave it out)")
        top = None
        if chat:
            if _flag("logprobs", body.get("logprobs")):
                top = 0 if body.get("top_logprobs") is None else _int("top_logprobs", body["top_logprobs"], 0, MAX_TOP_LOGPROBS)
        elif body.get("logprobs") is not None:
            top = _int("logprobs", body["logprobs"], 0, MAX_TOP_LOGPROBS)
        budget = body.get("thinking_token_budget")
        budget = None if budget is None else _int("thinking_token_budget", budget, 0)
        options = body.get("stream_options") or {}
        if not isinstance(options, Mapping):
            raise InputError(f"request field stream_options must be an object, got {options!r}")
        request = EngineRequest(
            prompt_ids=prompt_ids,
            max_tokens=max_tokens,
            stop=tuple(stop),
            top_logprobs=top,
            budget=budget,
            token_ids=_flag("return_token_ids", body.get("return_token_ids")),
            ids_as_tokens=_flag("return_tokens_as_token_ids", body.get("return_tokens_as_token_ids")),
            stream=_flag("stream", body.get("stream")),
            include_usage=_flag("stream_options.include_usage", options.get("include_usage")),
            chat=chat,
        )
        self.completer.check(request.prompt_ids, request.max_tokens)
        return request

    def _prompt_ids(self, prompt: Any) -> tuple[int, ...]:
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return self.encode(prompt)
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return tuple(prompt)
        raise InputError(f"request field prompt must be a string or a non-empty array of token ids (one prompt), got {str(prompt)[:80]!r}")

    def _chat_ids(self, body: Mapping[str, Any]) -> tuple[int, ...]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, Mapping) and isinstance(m.get("content"), str) for m in messages
        ):
            raise InputError(f"request field messages must be a non-empty list of {{role, content}} objects, got {str(messages)[:80]!r}")
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False, add_generation_prompt=True)
        else:
            text = "\n".join(m["content"] for m in messages)
        return self.encode(text + self.config.think_start)

    def encode(self, text: str) -> tuple[int, ...]:
        return tuple(int(t) for t in self.tokenizer.encode(text, add_special_tokens=self.config.add_special_tokens))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``: special tokens kept (a generated ``</think>`` shows), end-of-text tokens left out."""
        return self.tokenizer.decode([t for t in ids if t not in self._end], skip_special_tokens=False)

    # -- running ---------------------------------------------------------------------

    def run(self, request: EngineRequest, on_piece: Any = None) -> tuple[Continuation, _Text]:
        """Decode ``request``; ``on_piece(text)`` receives the text as it becomes final (streaming).

        With a budget: decode up to ``budget`` tokens or until ``think_end``;
        if the thinking is still open, append ``think_end + answer_prefix``
        (forced tokens, counted, logprob ``None``); then decode the rest of
        ``max_tokens``. Each phase continues from the previous one's ids, so
        the prefix cache makes the split free and exact.
        """
        self.completions += 1
        text = _Text(self.decode, request.stop, on_piece)
        top = request.top_logprobs or 0
        end = self.spec.think_end
        budget = request.budget

        def first_stop(ids: Sequence[int]) -> bool:
            return text.push(ids) or (budget is not None and _ends_with(ids, end))

        first_max = request.max_tokens if budget is None else min(request.max_tokens, budget)
        out = self.completer.complete(request.prompt_ids, first_max, top_logprobs=top, stop=first_stop)
        done = text.stopped or (out.ids and out.ids[-1] in self._end) or len(out.ids) >= request.max_tokens
        if budget is None or done:
            return self._finished(out, out.finish_reason, text)
        forced: tuple[int, ...] = () if _ends_with(out.ids, end) else self.spec.probe_chunk
        room = request.max_tokens - len(out.ids) - len(forced)
        if room < 1:
            return self._finished(out, "length", text)
        head = [*out.ids, *forced]
        text.push_forced(head)
        rest = self.completer.complete(
            [*out.prompt_ids, *head], room, top_logprobs=top, stop=lambda ids: text.push([*head, *ids])
        )
        merged = Continuation(
            out.prompt_ids,
            tuple(head) + rest.ids,
            out.logprobs + (None,) * len(forced) + rest.logprobs,  # forced tokens were not chosen by the model
            out.top + ((),) * len(forced) + rest.top,
            rest.finish_reason,
            out.cached_tokens,
        )
        return self._finished(merged, rest.finish_reason, text)

    def _finished(self, out: Continuation, finish: str, text: _Text) -> tuple[Continuation, _Text]:
        if finish != out.finish_reason:
            out = Continuation(out.prompt_ids, out.ids, out.logprobs, out.top, finish, out.cached_tokens)
        return out, text.finish()

    def respond(self, request: EngineRequest) -> dict[str, Any]:
        """The whole (non-streaming) response object."""
        out, text = self.run(request)
        choice = self._choice(request, out, text)
        return {
            "id": self._id(request),
            "object": "chat.completion" if request.chat else "text_completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [choice],
            "usage": self._usage(request, out),
        }

    def stream(self, request: EngineRequest, send: Any) -> None:
        """Server-sent event payloads (dicts, then the string ``"[DONE]"``) passed to ``send`` as tokens come."""
        rid, created = self._id(request), int(time.time())
        kind = "chat.completion.chunk" if request.chat else "text_completion"

        def chunk(delta_text: str | None, finish: str | None, **delta: Any) -> dict[str, Any]:
            if request.chat:
                c: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                c = {"index": 0, "text": delta_text or "", "logprobs": None, "finish_reason": finish}
            return {"id": rid, "object": kind, "created": created, "model": self.model_name, "choices": [c]}

        split = _ReasoningSplit(self.config.think_end)

        def piece(text_piece: str) -> None:
            if not request.chat:
                send(chunk(text_piece, None))
                return
            for name, value in split.feed(text_piece):
                send(chunk(None, None, **{name: value}))

        if request.chat:
            send(chunk(None, None, role="assistant", content=""))
        out, text = self.run(request, on_piece=piece)
        for name, value in split.flush():
            send(chunk(None, None, **{name: value}))
        send(chunk(None if request.chat else "", self._finish(out, text)))
        if request.include_usage:
            send({"id": rid, "object": kind, "created": created, "model": self.model_name, "choices": [], "usage": self._usage(request, out)})
        send("[DONE]")

    # -- response pieces -------------------------------------------------------------

    def _id(self, request: EngineRequest) -> str:
        return f"{'chatcmpl' if request.chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"

    def _finish(self, out: Continuation, text: _Text) -> str:
        return "stop" if text.stopped else out.finish_reason

    def _choice(self, request: EngineRequest, out: Continuation, text: _Text) -> dict[str, Any]:
        finish = self._finish(out, text)
        extra: dict[str, Any] = {}
        if request.token_ids:
            extra = {"token_ids": list(out.ids), "prompt_token_ids": list(out.prompt_ids)}
        if request.chat:
            reasoning, _, content = text.value.partition(self.config.think_end)
            message = {"role": "assistant", "content": content, "reasoning_content": reasoning}
            logprobs = self._chat_logprobs(request, out, text) if request.top_logprobs is not None else None
            return {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish, **extra}
        logprobs = self._logprobs(request, out, text) if request.top_logprobs is not None else None
        return {"index": 0, "text": text.value, "logprobs": logprobs, "finish_reason": finish, **extra}

    def _token_name(self, request: EngineRequest, token: int) -> str:
        return f"token_id:{token}" if request.ids_as_tokens else self.tokenizer.decode([token], skip_special_tokens=False)

    def _logprobs(self, request: EngineRequest, out: Continuation, text: _Text) -> dict[str, Any]:
        tokens = [f"token_id:{t}" if request.ids_as_tokens else piece for t, piece in zip(out.ids, text.pieces)]
        top = [{self._token_name(request, t): lp for t, lp in alternatives} for alternatives in out.top]
        return {"tokens": tokens, "token_logprobs": list(out.logprobs), "top_logprobs": top, "text_offset": list(text.offsets)}

    def _chat_logprobs(self, request: EngineRequest, out: Continuation, text: _Text) -> dict[str, Any]:
        content = []
        for t, piece, lp, alternatives in zip(out.ids, text.pieces, out.logprobs, out.top):
            name = f"token_id:{t}" if request.ids_as_tokens else piece
            content.append({
                "token": name,
                "logprob": lp,
                "bytes": list(name.encode("utf-8")),
                "top_logprobs": [
                    {"token": (n := self._token_name(request, a)), "logprob": alp, "bytes": list(n.encode("utf-8"))}
                    for a, alp in alternatives
                ],
            })
        return {"content": content}

    def _usage(self, request: EngineRequest, out: Continuation) -> dict[str, Any]:
        prompt, completion = len(out.prompt_ids), len(out.ids)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": out.cached_tokens},
        }
        end = self.spec.think_end
        at = _find(out.ids, end)
        if request.budget is not None or request.chat:
            usage["completion_tokens_details"] = {"reasoning_tokens": at + len(end) if at >= 0 else completion}
        return usage

    # -- extras -----------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /health``: liveness plus the request and prefix-cache counters."""
        cache = self.completer.cache
        return {
            "status": "ok",
            "completions": self.completions,
            "prefix_cache": {"entries": len(cache), "hits": cache.hits, "reused_tokens": cache.reused_tokens},
        }

    def models(self) -> dict[str, Any]:
        config = self.config
        return {
            "object": "list",
            "data": [{
                "id": self.model_name,
                "object": "model",
                "owned_by": "stopbandit",
                "max_model_len": self.completer.max_positions,
                "stopbandit": {
                    "mode": "engine",
                    "think_start": config.think_start,
                    "think_end": config.think_end,
                    "answer_prefix": config.answer_prefix,
                    "max_answer_tokens": config.max_answer_tokens,
                },
            }],
        }

    def tokenize(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """vLLM's ``/tokenize``: ``{"prompt": text}`` -> ``{"tokens": [...], "count": n, "max_model_len": m}``."""
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise InputError(f"request field prompt must be a string, got {prompt!r}")
        add = body.get("add_special_tokens")
        add = self.config.add_special_tokens if add is None else _flag("add_special_tokens", add)
        ids = [int(t) for t in self.tokenizer.encode(prompt, add_special_tokens=add)]
        return {"tokens": ids, "count": len(ids), "max_model_len": self.completer.max_positions}

    def detokenize(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """vLLM's ``/detokenize``: ``{"tokens": [...]}`` -> ``{"prompt": text}``."""
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise InputError(f"request field tokens must be an array of token ids, got {str(tokens)[:80]!r}")
        return {"prompt": self.tokenizer.decode(tokens, skip_special_tokens=False)}


class _ReasoningSplit:
    """Streams chat text as ``reasoning_content`` up to the first ``think_end``, ``content`` after it.

    The same rule as a whole response (``text.partition(think_end)``): text
    before the delimiter is reasoning, and all of it is when the delimiter
    never comes. Up to ``len(think_end) - 1`` characters are held back while
    they could still be the start of the delimiter.
    """

    def __init__(self, think_end: str) -> None:
        self.end = think_end
        self.buf = ""
        self.closed = False

    def feed(self, piece: str) -> list[tuple[str, str]]:
        if self.closed:
            return [("content", piece)] if piece else []
        self.buf += piece
        at = self.buf.find(self.end)
        if at >= 0:
            before, after = self.buf[:at], self.buf[at + len(self.end) :]
            self.closed, self.buf = True, ""
            return [(name, value) for name, value in (("reasoning_content", before), ("content", after)) if value]
        ready = len(self.buf) - (len(self.end) - 1)
        if ready <= 0:
            return []
        out, self.buf = self.buf[:ready], self.buf[ready:]
        return [("reasoning_content", out)]

    def flush(self) -> list[tuple[str, str]]:
        out, self.buf = self.buf, ""
        if not out:
            return []
        return [("content" if self.closed else "reasoning_content", out)]


class _Text:
    """The completion text as tokens arrive: stop strings, per-token pieces and offsets, streaming."""

    def __init__(self, decode: Any, stops: Sequence[str], on_piece: Any = None) -> None:
        self._decode = decode
        self._stops = tuple(stops)
        self._hold = max((len(s) for s in stops), default=1) - 1
        self._on_piece = on_piece
        self.full = ""
        self.pieces: list[str] = []
        self.offsets: list[int] = []
        self.cut: int | None = None
        self._sent = 0

    @property
    def stopped(self) -> bool:
        return self.cut is not None

    @property
    def value(self) -> str:
        return self.full if self.cut is None else self.full[: self.cut]

    def push(self, ids: Sequence[int]) -> bool:
        """Record the text of all ``ids`` so far (one more token than last time); True when a stop string appeared."""
        if self.cut is not None:
            return True
        new = self._decode(ids)
        previous = self.full
        self.offsets.append(len(previous))
        self.pieces.append(new[len(previous):] if new.startswith(previous) else new[len(_common(previous, new)):])
        self.full = new
        start = max(0, len(previous) - self._hold)
        hits = [i for i in (new.find(s, start) for s in self._stops) if i >= 0]
        if hits:
            self.cut = min(hits)
        self._flush(final=False)
        return self.cut is not None

    def push_forced(self, ids: Sequence[int]) -> None:
        """Tokens appended without the model choosing them (a forced ``think_end``): pieces for each."""
        known = len(self.pieces)
        for k in range(known + 1, len(ids) + 1):
            self.push(ids[:k])

    def finish(self) -> _Text:
        self._flush(final=True)
        return self

    def _flush(self, final: bool) -> None:
        if self._on_piece is None:
            return
        ready = self.value if (final or self.cut is not None) else self.full[: max(0, len(self.full) - self._hold)]
        if not final and ready.endswith("\ufffd"):  # a multi-byte character still incomplete
            ready = ready.rstrip("\ufffd")
        if len(ready) > self._sent:
            self._on_piece(ready[self._sent :])
            self._sent = len(ready)


def _common(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return a[:n]


def _find(ids: Sequence[int], pattern: Sequence[int]) -> int:
    k = len(pattern)
    for i in range(len(ids) - k + 1):
        if tuple(ids[i : i + k]) == tuple(pattern):
            return i
    return -1


def _contains(ids: Sequence[int], pattern: Sequence[int]) -> bool:
    return _find(ids, pattern) >= 0


def _ends_with(ids: Sequence[int], pattern: Sequence[int]) -> bool:
    return len(ids) >= len(pattern) and tuple(ids[-len(pattern) :]) == tuple(pattern)


__all__ = ["DEFAULT_MAX_TOKENS", "EngineAPI", "EngineRequest", "FOREIGN_BUDGET_FIELDS"]
