"""The gateway's state and its request logic, apart from the HTTP routing (:mod:`stopbandit.serve.app`).

Per completion request: parse and validate the body, ``Selector.choose`` (on a
worker thread: the Selector is thread-safe, but its VW calls must never block
the event loop), run the served arm on the upstream the way its family needs
(:meth:`Gateway.mode`), record the engine's token counts and the probe trace in
the :class:`~stopbandit.serve.ledger.Ledger`, and answer in OpenAI's shape with
the decision in headers and in a ``stopbandit`` object.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from stopbandit.bandit.arms import Arm
from stopbandit.bandit.trace import ProbeTrace
from stopbandit.errors import ConfigError, ConflictError, InputError, StopbanditError, StoreError, UnknownDecisionError
from stopbandit.serve import engines
from stopbandit.serve.budget import from_response, upstream_body
from stopbandit.serve.config import GatewayConfig
from stopbandit.serve.errors import HTTPProblem, error_body
from stopbandit.serve.ledger import Ledger, Served
from stopbandit.serve.metrics import GatewayMetrics, health_gauges
from stopbandit.serve.probe import ProbeDriver
from stopbandit.serve.prompts import check_messages, check_prompt, last_user_text
from stopbandit.serve.result import RunResult
from stopbandit.serve.shadow import Shadow
from stopbandit.serve.upstream import Upstream, UpstreamError
from stopbandit.serving.decision import flat

log = logging.getLogger("stopbandit.serve")
T = TypeVar("T")

#: How the gateway runs an arm: ``probe`` (probe driver), ``fallback`` (budget, two calls),
#: ``budget`` (the engine's own budget field), ``pass`` (the request as the client sent it).
MODES = ("probe", "fallback", "budget", "pass")
ARM_HEADER = "x-stopbandit-arm"


@dataclass(frozen=True, slots=True)
class Parsed:
    """A validated completion request."""

    chat: bool
    features_prompt: str  # the user's last message, or the prompt
    messages: list[dict[str, Any]] | None
    prompt: str | None
    domain: str | None
    pinned: str | None
    stream: bool
    model: str | None
    max_tokens: int | None


def whole(value: Any) -> int | None:
    """``value`` as an int when it is one (JSON Schema counts 3.0 as an integer), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return None


def _opt_str(body: Mapping[str, Any], name: str, where: str = "") -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise HTTPProblem(400, f"request field {where}{name} must be a non-empty string, got {json.dumps(value)[:80]}",
                          param=f"{where}{name}")
    return value


def parse_request(body: Mapping[str, Any], chat: bool, headers: Mapping[str, str], config: GatewayConfig,
                  arm_names: tuple[str, ...]) -> Parsed:
    """Validate a completion body; :class:`HTTPProblem` (400) naming the field otherwise."""
    try:
        if chat:
            messages = check_messages(body.get("messages"))
            prompt, text = None, last_user_text(messages)
        else:
            if "prompt" not in body:
                raise InputError("request field prompt is required")
            messages, prompt = None, check_prompt(body.get("prompt"))
            text = prompt
    except InputError as exc:
        raise HTTPProblem(400, str(exc), param="messages" if chat else "prompt") from None
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise HTTPProblem(400, f"request field stream must be true or false, got {json.dumps(stream)[:40]}",
                          param="stream")
    model = _opt_str(body, "model")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise HTTPProblem(400, "request field metadata must be an object", param="metadata")
    domain = _opt_str(metadata or {}, "domain", "metadata.") or headers.get(config.domain_header) or None
    ours = body.get("stopbandit")
    if ours is not None and not isinstance(ours, Mapping):
        raise HTTPProblem(400, "request field stopbandit must be an object such as {\"arm\": \"full\"}",
                          param="stopbandit")
    pinned = _opt_str(ours or {}, "arm", "stopbandit.") or headers.get(ARM_HEADER) or None
    if pinned is not None and pinned not in arm_names:
        raise HTTPProblem(400, f"unknown arm {pinned!r} pinned by the request; known arms: {list(arm_names)}",
                          param="stopbandit.arm")
    max_tokens = None
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is not None:
            value = whole(value) if whole(value) is not None else value
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise HTTPProblem(400, f"request field {name} must be a positive integer, got "
                                       f"{json.dumps(value)[:40]}", param=name)
            max_tokens = value if max_tokens is None else min(max_tokens, value)
    return Parsed(chat, text, messages, prompt, domain, pinned, stream, model, max_tokens)


class Gateway:
    """Everything one gateway shares between requests."""

    def __init__(self, selector: Any, config: GatewayConfig, *,
                 transport: httpx.AsyncBaseTransport | None = None, selector_threads: int = 4) -> None:
        self.selector = selector
        self.config = config
        self.arms: tuple[Arm, ...] = tuple(selector.arms)
        self.arm_names = tuple(a.name for a in self.arms)
        learned = [a.name for a in self.arms if a.learned > 0]
        if learned and getattr(selector, "stop_inputs", None) is None:  # the probe driver consults its rule
            raise ConfigError(f"learned stop arms {learned} need a selector with a learned stop rule "
                              f"(Selector.stop_inputs); {type(selector).__name__} has none")
        plain = [a.name for a in self.arms if a.plain]
        if plain:  # an imported log's actions: no stopping rule to run
            raise ConfigError(f"the gateway cannot serve plain arms {plain} (they have no stopping rule; they name "
                              "the actions of an imported log)")
        self.upstream = Upstream(config, transport=transport)
        self.engine: engines.Engine | None = engines.engine(config.engine) if config.engine != "auto" else None
        self.driver: ProbeDriver | None = (ProbeDriver(self.upstream, self.engine, config, self.arms)
                                           if self.engine else None)
        self.ledger = Ledger(config.ledger_size)
        self.shadow: Shadow | None = None
        if config.shadow is not None:
            if config.shadow not in self.arm_names:
                raise ConfigError(f"--shadow names unknown arm {config.shadow!r}; known arms: {list(self.arm_names)}")
            self.shadow = Shadow(self.arms[self.arm_names.index(config.shadow)])
        self.metrics = GatewayMetrics(self._gauges)
        self.executor = ThreadPoolExecutor(selector_threads, thread_name_prefix="stopbandit-selector")
        self.upstream_ok = True
        self.upstream_error: str | None = None
        self._model: str | None = config.model

    async def close(self) -> None:
        await self.upstream.close()
        self.executor.shutdown(wait=True)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a Selector call on the gateway's worker threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    def check_key(self, headers: Mapping[str, str], *, completions: bool = False) -> None:
        """401 unless the bearer key matches (when one is set; completions only with ``guard_completions``)."""
        key = self.config.api_key
        if key is None or (completions and not self.config.guard_completions):
            return
        given = headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise HTTPProblem(401, "missing or wrong API key: send the gateway's key as 'Authorization: Bearer <key>'")

    # -- upstream facts -------------------------------------------------------------------
    async def ensure_engine(self) -> engines.Engine:
        """The engine row, detected from ``/v1/models`` on first use when ``--engine auto``."""
        if self.engine is None:
            models, headers = await self.upstream.get("/v1/models")
            name = engines.detect(models, headers.get("server"))
            log.info("upstream %s detected as engine %s", self.upstream.base, name)
            self.engine = engines.engine(name)
            self.driver = ProbeDriver(self.upstream, self.engine, self.config, self.arms)
            if self._model is None:
                self._model = _first_model(models)
        return self.engine

    async def model(self, requested: str | None) -> str:
        if requested:
            return requested
        if self._model is None:
            models, _ = await self.upstream.get("/v1/models")
            self._model = _first_model(models) or "default"
        return self._model

    async def check_upstream(self) -> bool:
        try:
            await self.upstream.get("/v1/models")
            self.upstream_ok, self.upstream_error = True, None
        except UpstreamError as exc:
            self.upstream_ok, self.upstream_error = False, str(exc)
        return self.upstream_ok

    def mode(self, arm: Arm, engine: engines.Engine, *, shadowed: bool) -> str:
        """How ``arm`` runs on this engine (see :data:`MODES`)."""
        if arm.stops_on_confidence or arm.agreement > 0 or arm.learned > 0 or shadowed or self.config.probe_all:
            return "probe"
        if arm.max_think_tokens > 0:
            return "budget" if engine.native_budget and self.config.budget == "native" else "fallback"
        return "pass"

    def max_think(self, max_tokens: int | None) -> int:
        """The thinking limit of a request: the gateway's, lowered to leave the answer room in ``max_tokens``."""
        if max_tokens is None:
            return self.config.max_think_tokens
        return max(1, min(self.config.max_think_tokens, max_tokens - self.config.answer_tokens))

    def _gauges(self) -> dict[str, tuple[str, float | None]]:
        return health_gauges(self.selector.health(), self.shadow, self.upstream_ok)

    # -- a completion request -----------------------------------------------------------------
    async def complete(self, body: Mapping[str, Any], headers: Mapping[str, str], chat: bool) -> tuple[
            int, dict[str, str], dict[str, Any] | AsyncIterator[bytes]]:
        """(status, headers, body or SSE stream) for one completion request."""
        started = time.perf_counter()
        req = parse_request(body, chat, headers, self.config, self.arm_names)
        try:
            if req.pinned is None:
                decision = await self.call(self.selector.choose, req.features_prompt, domain=req.domain)
            else:  # logged as a forced decision (one-hot probabilities, propensity 1)
                decision = await self.call(self.selector.choose_forced, req.features_prompt, arm=req.pinned,
                                           domain=req.domain)
        except InputError as exc:
            raise HTTPProblem(400, str(exc)) from None
        except StopbanditError as exc:
            raise HTTPProblem(503, f"the selector cannot decide: {exc}") from None
        chosen: Arm = decision.arm
        shadowed = self.shadow is not None and req.pinned is None
        served = self.shadow.baseline if shadowed and self.shadow is not None else chosen
        if shadowed and self.shadow is not None:
            self.shadow.record(chosen)
        out_headers = {
            "x-stopbandit-decision": decision.decision_id,
            "x-stopbandit-arm": served.name,
            "x-stopbandit-propensity": f"{decision.probability:.6g}",
        }
        if shadowed:
            out_headers["x-stopbandit-policy-arm"] = chosen.name
        # the learned rule as it is now, with this decision's λ and context: the run consults it at every probe
        # (and a shadowed policy's learned arm is read off the baseline's trace with the same inputs)
        stop_in = self.selector.stop_inputs(decision) if served.learned or chosen.learned else None
        mode = "pass"
        try:
            engine = await self.ensure_engine()
            mode = self.mode(served, engine, shadowed=shadowed)
            model = await self.model(req.model)
            if mode in ("pass", "budget"):
                ub = upstream_body(body, served if mode == "budget" else None, engine, self.config, chat=chat,
                                   model=model)
                path = "/v1/chat/completions" if chat else "/v1/completions"
                if req.stream:
                    ub["stream_options"] = {**(ub.get("stream_options") or {}), "include_usage": True}
                    chunks = await self.upstream.stream(path, ub)
                    relay = self._relay(chunks, decision, chosen, served, mode, started)
                    return 200, out_headers, relay
                data = await self.upstream.post(path, ub)
                result = from_response(data, chat=chat)
            else:
                driver = self.driver
                if driver is None:  # set together with the engine
                    raise UpstreamError("the probe driver is not ready: the engine is unknown", 502)
                prompt = (await driver.render_chat(req.messages or [], model) if chat
                          else (req.prompt or "") + self.config.think_start)
                result = await driver.run(prompt, served, model=model, probes=mode == "probe",
                                          max_think=self.max_think(req.max_tokens),
                                          learned=stop_in if served.learned else None)
        except UpstreamError as exc:
            return self._failed(exc, decision, chosen, served, mode, started, out_headers)
        latency = (time.perf_counter() - started) * 1000
        self._record(decision.decision_id, chosen, served, result, latency, mode, stop_in)
        ours = self._ours(decision, chosen, served, result, mode)
        if result.raw is not None:
            payload = dict(result.raw)
        else:
            payload = _synthesized(result, chat, model)
        payload["stopbandit"] = ours
        if req.stream:
            return 200, out_headers, _as_sse(payload, chat)
        return 200, out_headers, payload

    def _ours(self, decision: Any, chosen: Arm, served: Arm, result: RunResult, mode: str) -> dict[str, Any]:
        ours: dict[str, Any] = {
            "decision_id": decision.decision_id, "arm": served.name, "propensity": decision.probability,
            "policy_version": decision.policy_version, "forced": decision.policy_version.startswith("forced/"),
            "mode": mode, "stop_reason": result.stop_reason,
            "tokens": {"thinking": result.think_tokens, "probes": result.probe_tokens,
                       "answer": result.answer_tokens, "total": result.completion_tokens},
        }
        if result.trace is not None:
            ours["trace"] = result.trace.to_json()
        if result.chunking is not None:
            ours["chunking"] = result.chunking
        if chosen.name != served.name:
            ours["policy_arm"] = chosen.name
        return ours

    def _record(self, decision_id: str, chosen: Arm, served: Arm, result: RunResult, latency_ms: float,
                mode: str, learned: Any = None) -> None:
        trace = result.trace
        if trace is None and result.raw is not None:
            trace = _engine_trace(result.raw)
        self.ledger.put(decision_id, Served(served, chosen, result.completion_tokens, result.answer, trace, latency_ms,
                                            learned=learned))
        self.metrics.requests.labels(served.name, mode, "200").inc()
        self.metrics.count_tokens(result.think_tokens, result.probe_tokens, result.answer_tokens,
                                  result.completion_tokens)
        self.metrics.latency.labels(mode).observe(latency_ms / 1000)

    def _failed(self, exc: UpstreamError, decision: Any, chosen: Arm, served: Arm, mode: str, started: float,
                headers: dict[str, str]) -> tuple[int, dict[str, str], dict[str, Any]]:
        latency = (time.perf_counter() - started) * 1000
        log.warning("decision %s (arm %s, %s): upstream failed with %d: %s", decision.decision_id, served.name, mode,
                    exc.status, exc)
        self.ledger.put(decision.decision_id, Served(served, chosen, 0, "", None, latency, error=str(exc)))
        self.metrics.requests.labels(served.name, mode, str(exc.status)).inc()
        if exc.status >= 500:
            self.metrics.upstream_errors.labels(str(exc.status)).inc()
            self.upstream_ok, self.upstream_error = False, str(exc)
        body = error_body(exc.status, str(exc))
        body["stopbandit"] = {"decision_id": decision.decision_id, "arm": served.name, "mode": mode}
        return exc.status, headers, body

    async def _relay(self, chunks: AsyncIterator[bytes], decision: Any, chosen: Arm, served: Arm, mode: str,
                     started: float) -> AsyncIterator[bytes]:
        """Pass the engine's SSE stream through, reading usage and the answer as it goes by."""
        buffer = b""
        usage: dict[str, Any] = {}
        answer: list[str] = []
        error: str | None = None
        try:
            async for chunk in chunks:
                yield chunk
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    _read_event(line, usage, answer)
        except UpstreamError as exc:
            error = str(exc)
            yield b"data: " + json.dumps(error_body(exc.status, error)).encode() + b"\n\n"
        finally:
            latency = (time.perf_counter() - started) * 1000
            details = usage.get("completion_tokens_details") if isinstance(usage, Mapping) else None
            reasoning = details.get("reasoning_tokens") if isinstance(details, Mapping) else None
            completion = usage.get("completion_tokens", 0) if isinstance(usage.get("completion_tokens"), int) else 0
            result = RunResult("".join(answer), None, int(usage.get("prompt_tokens") or 0), completion,
                               reasoning if isinstance(reasoning, int) else None, 0,
                               completion - reasoning if isinstance(reasoning, int) else None, None)
            if error is None:
                self._record(decision.decision_id, chosen, served, result, latency, mode)
            else:
                self.ledger.put(decision.decision_id, Served(served, chosen, completion, "", None, latency, error))
                self.metrics.upstream_errors.labels("502").inc()

    # -- rewards, λ, health -----------------------------------------------------------------
    async def reward(self, body: Mapping[str, Any]) -> dict[str, Any]:
        decision_id = body.get("decision_id")
        if not isinstance(decision_id, str) or not decision_id:
            raise HTTPProblem(400, f"request field decision_id must be a non-empty string, got "
                                   f"{json.dumps(decision_id)[:80]}", param="decision_id")
        em = body.get("em")
        if isinstance(em, bool) or not isinstance(em, (int, float)):
            raise HTTPProblem(400, f"request field em must be a number in [0, 1], got {json.dumps(em)[:40]}",
                              param="em")
        tokens = body.get("tokens")
        if tokens is not None and whole(tokens) is not None:
            tokens = whole(tokens)
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)):
            raise HTTPProblem(400, f"request field tokens must be an integer, got {json.dumps(tokens)[:40]}",
                              param="tokens")
        reference = body.get("reference")
        if reference is not None and not isinstance(reference, str):
            raise HTTPProblem(400, "request field reference must be a string (the reference answer)",
                              param="reference")
        served = self.ledger.get(decision_id)
        if tokens is None:
            if served is None:
                self.metrics.rewards.labels("unknown").inc()
                raise HTTPProblem(404, f"unknown decision id {decision_id!r}: this gateway has not served it since it "
                                       "started (send tokens to reward a decision served elsewhere)",
                                  param="decision_id")
            tokens = served.tokens
        trace = served.trace if served is not None else None
        latency = served.latency_ms if served is not None else None
        learned_em, learned_tokens = float(em), tokens
        if self.shadow is not None and served is not None and served.chosen.name != served.served.name:
            outcome = self.shadow.outcome(trace, served.chosen, served_em=float(em), served_answer=served.answer,
                                          served_tokens=tokens, reference=reference, learned=served.learned)
            if outcome is None:
                self.metrics.rewards.labels("unrevealed").inc()
                return {"decision_id": decision_id, "status": "unrevealed",
                        "message": f"the trace of the served arm {served.served.name!r} does not reveal the policy's "
                                   f"arm {served.chosen.name!r} here; send the reference answer to learn from it"}
            learned_em, learned_tokens = outcome
        try:
            await self.call(self.selector.reward, decision_id, learned_em, learned_tokens, latency_ms=latency,
                            trace=trace, reference=reference)
        except UnknownDecisionError as exc:
            self.metrics.rewards.labels("unknown").inc()
            raise HTTPProblem(404, str(exc), param="decision_id") from None
        except ConflictError as exc:
            self.metrics.rewards.labels("conflict").inc()
            raise HTTPProblem(409, str(exc), param="decision_id") from None
        except (InputError, ConfigError) as exc:
            raise HTTPProblem(400, str(exc)) from None
        except StoreError as exc:
            raise HTTPProblem(503, f"the replay store is down and this decision is not in memory: {exc}") from None
        except StopbanditError as exc:
            raise HTTPProblem(503, str(exc)) from None
        self.metrics.rewards.labels("ok").inc()
        return {"decision_id": decision_id, "status": "ok", "em": learned_em, "tokens": learned_tokens,
                "trace": trace is not None}

    async def set_lambda(self, body: Mapping[str, Any]) -> dict[str, Any]:
        value = body.get("lambda", body.get("value"))
        reason = body.get("reason")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HTTPProblem(400, f"request field lambda must be a number >= 0, got {json.dumps(value)[:40]}",
                              param="lambda")
        if not isinstance(reason, str) or not reason.strip():
            raise HTTPProblem(400, "request field reason is required: why λ changes (it is stored with the change)",
                              param="reason")
        who = body.get("who", "gateway")
        try:
            await self.call(self.selector.set_lambda, float(value), reason=reason, who=who)
        except (InputError, ConfigError) as exc:
            raise HTTPProblem(400, str(exc), param="lambda") from None
        return {"lambda": self.selector.lam, "reason": reason}

    async def health(self) -> tuple[int, dict[str, Any]]:
        ok = await self.check_upstream()
        selector = flat(self.selector.health())
        body: dict[str, Any] = {
            "status": "ok" if ok else "unavailable",
            "upstream": {"url": self.upstream.base, "ok": ok, "error": self.upstream_error,
                         "engine": self.engine.name if self.engine else None},
            "selector": selector,
            "chunking": ("tokens" if self.driver.token_chunking else "text") if self.driver else None,
            "decisions_in_ledger": len(self.ledger),
        }
        if self.shadow is not None:
            body["shadow"] = self.shadow.to_json()
        return (200 if ok else 503), body


def _first_model(models: Mapping[str, Any]) -> str | None:
    data = models.get("data") if isinstance(models, Mapping) else None
    if isinstance(data, list) and data and isinstance(data[0], Mapping) and isinstance(data[0].get("id"), str):
        return data[0]["id"]
    return None


def _engine_trace(raw: Mapping[str, Any]) -> ProbeTrace | None:
    """The probe trace an engine returned itself (our decoder server does, per choice)."""
    choices = raw.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        return None
    ours = choices[0].get("stopbandit")
    if not isinstance(ours, Mapping) or not isinstance(ours.get("trace"), Mapping):
        return None
    try:
        return ProbeTrace.from_json(ours["trace"])
    except (InputError, TypeError, ValueError):
        return None


def _read_event(line: bytes, usage: dict[str, Any], answer: list[str]) -> None:
    line = line.strip()
    if not line.startswith(b"data:"):
        return
    data = line[5:].strip()
    if not data or data == b"[DONE]":
        return
    try:
        event = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return
    if not isinstance(event, Mapping):
        return
    if isinstance(event.get("usage"), Mapping):
        usage.clear()
        usage.update(event["usage"])
    for choice in event.get("choices") or []:
        if not isinstance(choice, Mapping):
            continue
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, Mapping) else choice.get("text")
        if isinstance(text, str):
            answer.append(text)


def _synthesized(result: RunResult, chat: bool, model: str) -> dict[str, Any]:
    """An OpenAI response object for an arm the gateway ran itself."""
    created = int(time.time())
    if chat:
        message = {"role": "assistant", "content": result.answer, "reasoning_content": result.reasoning}
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": result.finish_reason or "stop"}
        kind, prefix = "chat.completion", "chatcmpl"
    else:
        choice = {"index": 0, "text": result.answer, "reasoning_content": result.reasoning, "logprobs": None,
                  "finish_reason": result.finish_reason or "stop"}
        kind, prefix = "text_completion", "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex[:24]}", "object": kind, "created": created, "model": model,
            "choices": [choice], "usage": result.usage()}


async def _as_sse(payload: dict[str, Any], chat: bool) -> AsyncIterator[bytes]:
    """A finished answer as OpenAI's stream of chunks (reasoning, content, finish, usage, [DONE])."""
    base = {k: payload[k] for k in ("id", "created", "model") if k in payload}
    choice = payload["choices"][0] if payload.get("choices") else {}
    if chat:
        message = choice.get("message") or {}
        deltas = [{"role": "assistant", "content": ""}]
        if message.get("reasoning_content"):
            deltas.append({"reasoning_content": message["reasoning_content"]})
        deltas.append({"content": message.get("content") or ""})
        events = [{**base, "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        events.append({**base, "object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason")}]})
    else:
        events = [{**base, "object": "text_completion",
                   "choices": [{"index": 0, "text": choice.get("text") or "", "logprobs": None,
                                "finish_reason": choice.get("finish_reason")}]}]
    events.append({**base, "object": "chat.completion.chunk" if chat else "text_completion", "choices": [],
                   "usage": payload.get("usage"), "stopbandit": payload.get("stopbandit")})
    for event in events:
        yield b"data: " + json.dumps(event).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


__all__ = ["MODES", "Gateway", "Parsed", "parse_request"]
