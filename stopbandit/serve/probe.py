"""The probe driver: DEER-style early exit run by the gateway over ``/v1/completions``.

The thinking is decoded greedily in chunks. After each chunk the driver sends
a probe: the prefix so far + ``think_end`` + ``answer_suffix``, at most
``probe_tokens`` tokens, temperature 0, ``logprobs``; the trial answer's
confidence is the mean max-probability of its tokens (arithmetic, or geometric
= exp of the mean log-probability; DEER, arXiv 2504.15895). The one stop
rule of the package, :func:`stopbandit.bandit.stoprule.stop_reason` (also
behind traces, the simulator, the replay log and the decoder), decides whether
thinking stops there: on confidence, on the agreement of the last k trial
answers (Dynasor, arXiv 2412.20993), on the learned stop rule (the Selector's
rule at the decision's λ, read with the probes so far), or at the budget. The answer is then the
last trial answer (a confidence, agreement or learned stop, as in DEER) or one more call
that is the same request as a probe there (a budget stop, or the model closed
its thinking), so a trace's trial answers are exactly what arms stopping at
their offsets answer.

Chunked decoding gives the same tokens as one call:

* ``tokens`` chunking: the engine takes the prompt as token ids and returns the
  generated ids, so every chunk continues from the exact ids;
* ``text`` chunking: each chunk is cut at a token boundary followed by a token
  that starts with whitespace (a word boundary, where BPE pre-tokenizers split),
  and, where the engine has ``/tokenize``, only where re-tokenizing the prefix
  gives exactly the tokens decoded so far (the text round-trips). The rest of
  the chunk is decoded again by the next call; its tokens count as spent.

Chunk boundaries fall every ``probe_every`` thinking tokens and at the budget
of every arm of the arm set, so a trace of a lenient run reveals every budget
arm exactly too. A budget arm without probes is the same loop with one chunk
up to the budget and no probe: the universal two-call fallback.

The run's probe trace (:class:`stopbandit.bandit.trace.ProbeTrace`) feeds
``Selector.reward`` (nested feedback, graph OPE).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stopbandit.bandit.arms import Arm
from stopbandit.bandit.learned_stop import LearnedInputs
from stopbandit.bandit.stoprule import stop_reason
from stopbandit.bandit.trace import Probe, ProbeTrace
from stopbandit.serve.config import GatewayConfig
from stopbandit.serve.engines import Engine
from stopbandit.serve.prompts import joined
from stopbandit.serve.result import RunResult, int_or_none, usage_counts
from stopbandit.serve.upstream import Upstream, UpstreamError

log = logging.getLogger("stopbandit.serve")
_AT_PROBE = ("confidence", "agreement", "learned")  # stops at a probe: its trial answer is the answer


def confidence(logprobs: Any, mean: str = "arithmetic") -> float:
    """Mean max-probability of a trial answer's tokens, from OpenAI's completions ``logprobs``.

    A position's max-probability is ``exp(max(top_logprobs[i]))`` when the engine
    lists alternatives, else ``exp(token_logprobs[i])`` (greedy: the chosen token
    is the most likely one). ``mean``: ``arithmetic`` (DEER) or ``geometric``
    (``exp(mean log p)``, DEER's choice for Qwen3). An answer without tokens has
    confidence 0.
    """
    if not isinstance(logprobs, Mapping):
        return 0.0
    chosen = logprobs.get("token_logprobs") or []
    top = logprobs.get("top_logprobs") or []
    best: list[float] = []
    for i, lp in enumerate(chosen):
        alternatives = top[i] if i < len(top) and isinstance(top[i], Mapping) else None
        values = [v for v in (alternatives or {}).values() if isinstance(v, (int, float))]
        if isinstance(lp, (int, float)):
            values.append(lp)
        if values:
            best.append(min(0.0, max(values)))
    if not best:
        return 0.0
    if mean == "geometric":
        return math.exp(sum(best) / len(best))
    return sum(math.exp(v) for v in best) / len(best)


@dataclass(slots=True)
class _Run:
    """The state of one driven request."""

    text: str  # prompt + thinking kept so far
    ids: list[int] | None  # the same as token ids (token chunking)
    prompt_tokens: int = 0
    think: str = ""
    think_tokens: int = 0
    spent: int = 0  # every completion token the engine reported
    probe_tokens: int = 0
    calls: int = 0
    probes: list[Probe] = field(default_factory=list)


class ProbeDriver:
    """Runs arms over ``/v1/completions`` of one upstream (shared by all requests)."""

    def __init__(self, upstream: Upstream, engine: Engine, config: GatewayConfig, arms: Sequence[Arm]) -> None:
        self.upstream = upstream
        self.engine = engine
        self.config = config
        self.caps = sorted({a.max_think_tokens for a in arms if a.max_think_tokens > 0})
        self.suffix = config.think_end + config.answer_suffix
        self._suffix_ids: list[int] | None = None
        self.token_chunking = config.chunking == "tokens" or (
            config.chunking == "auto" and engine.token_prompt and engine.tokenize_path is not None)
        self.fallbacks = 0  # requests that fell back from token to text chunking

    # -- the engine's tokenizer -------------------------------------------------------------
    async def tokenize(self, text: str, model: str, *, special: bool = True) -> list[int]:
        path = self.engine.tokenize_path
        if path is None:
            raise UpstreamError(f"engine {self.engine.name} has no tokenize endpoint", 502)
        data = await self.upstream.post(path, self.engine.tokenize_body(text, model, special))
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise UpstreamError(f"upstream {path} answered no token list: {str(data)[:200]}", 502)
        return tokens

    async def render_chat(self, messages: Sequence[Mapping[str, Any]], model: str) -> str:
        """The completions prompt a chat request stands for (see :mod:`stopbandit.serve.prompts`)."""
        try:
            if self.engine.name in ("vllm", "stopbandit") and self.engine.tokenize_path:
                data = await self.upstream.post(self.engine.tokenize_path, {
                    "model": model, "messages": list(messages), "add_generation_prompt": True})
                tokens = data.get("tokens")
                if isinstance(tokens, list):
                    text = await self.upstream.post("/detokenize", {"model": model, "tokens": tokens})
                    if isinstance(text.get("prompt"), str):
                        return text["prompt"] + self.config.think_start
            if self.engine.name == "llamacpp":
                data = await self.upstream.post("/apply-template", {"messages": list(messages)})
                if isinstance(data.get("prompt"), str):
                    return data["prompt"] + self.config.think_start
        except UpstreamError as exc:
            if exc.status >= 500:
                raise
            # the engine has no template endpoint of that shape: the plain rendering below
        return joined(messages) + self.config.think_start

    # -- one request -------------------------------------------------------------------------
    async def run(self, prompt: str, arm: Arm, *, model: str, probes: bool, max_think: int,
                  learned: LearnedInputs | None = None) -> RunResult:
        """Run ``arm`` on ``prompt`` (the raw completions prompt, ``think_start`` included).

        ``probes``: probe after each chunk (off: a budget arm's two-call fallback).
        ``max_think``: thinking limit of this request (the arm's budget applies too).
        ``learned``: the learned stop rule, λ and this request's context (``Selector.stop_inputs``), needed
        when ``arm`` stops on the learned rule; it is consulted after every probe, through the same
        :func:`~stopbandit.bandit.stoprule.stop_reason` as every other rule.
        """
        state = _Run(text=prompt, ids=None)
        if self.token_chunking:
            try:
                state.ids = await self.tokenize(prompt, model)
                if self._suffix_ids is None:
                    self._suffix_ids = await self.tokenize(self.suffix, model, special=False)
            except UpstreamError as exc:
                if exc.status < 500 and exc.status != 404:
                    raise
                state.ids = None
                self.fallbacks += 1
        limit = min(arm.cap, max_think)
        reason: str | None = None
        while reason is None:
            target = self._next_boundary(state.think_tokens, limit, probes, aligned=state.ids is not None)
            n = target - state.think_tokens
            while True:
                outcome = await self._chunk(state, n, model, final=state.think_tokens + n >= limit)
                if outcome != "again":
                    break
                n = min(2 * n, int(limit) - state.think_tokens)  # no safe cut in this chunk: decode further
            if outcome == "end":
                reason = "end"
                break
            if probes and state.think_tokens < limit:
                await self._probe(state, model)
            reason = stop_reason(arm, state.probes, state.think_tokens, learned if arm.learned else None)
            if reason is None and state.think_tokens >= limit:
                reason = "budget"
        if reason in _AT_PROBE:
            last = state.probes[-1]
            answer, answer_tokens, finish = last.answer, last.tokens, "stop"
        else:
            answer, answer_tokens, finish = await self._answer(state, model, reason)
        trace = ProbeTrace(tuple(state.probes), state.think_tokens, reason, answer, answer_tokens)
        return RunResult(
            answer=answer, reasoning=state.think, prompt_tokens=state.prompt_tokens,
            completion_tokens=state.spent, think_tokens=state.think_tokens,
            probe_tokens=state.probe_tokens - (answer_tokens if reason in _AT_PROBE else 0),
            answer_tokens=answer_tokens, finish_reason=finish, stop_reason=reason, trace=trace, calls=state.calls,
            chunking="tokens" if state.ids is not None else "text",
        )

    def _next_boundary(self, done: int, limit: float, probes: bool, *, aligned: bool) -> int:
        """The next chunk end: the next probe point, arm budget or the limit, whichever comes first.

        ``aligned``: probe points at multiples of ``probe_every`` (token chunking); text
        chunks, whose cuts fall a little early, run ``probe_every`` from the last cut.
        """
        candidates = [limit]
        if probes:
            every = self.config.probe_every
            candidates.append((done // every + 1) * every if aligned else done + every)
            candidates.extend(c for c in self.caps if c > done)
        return int(min(candidates))

    async def _complete(self, state: _Run, body: dict[str, Any]) -> dict[str, Any]:
        data = await self.upstream.post("/v1/completions", {**self.engine.greedy, **body})
        state.calls += 1
        prompt_tokens, completion, _ = usage_counts(data)
        state.spent += completion
        if not state.prompt_tokens:
            state.prompt_tokens = prompt_tokens
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            raise UpstreamError(f"upstream completion has no choices: {str(data)[:200]}", 502)
        return {"choice": choices[0], "completion": completion, "data": data}

    async def _chunk(self, state: _Run, n: int, model: str, *, final: bool) -> str:
        """Decode up to ``n`` more thinking tokens: ``end`` (the model closed its thinking),
        ``ok``, or ``again`` (text chunking found no safe cut: nothing kept, decode a longer chunk).

        ``final``: the chunk reaches the thinking limit, so no continuation follows and
        the whole chunk is kept.
        """
        stops = [self.config.think_end, *self.config.probe_markers]
        body: dict[str, Any] = {"model": model, "max_tokens": n, "temperature": 0, "stop": stops}
        if state.ids is not None:
            body["prompt"] = state.ids
            body.update(self.engine.return_ids_fields)
        else:
            body["prompt"] = state.text
            body["logprobs"] = 1
        got = await self._complete(state, body)
        choice, completion = got["choice"], got["completion"]
        text = choice.get("text") if isinstance(choice.get("text"), str) else ""
        if choice.get("finish_reason") != "length":
            marker = choice.get("stop_reason")
            if not (self.config.probe_markers and isinstance(marker, str) and marker in self.config.probe_markers):
                self._keep(state, text, completion)
                return "end"
        if state.ids is not None:
            ids = _returned_ids(choice, got["data"])
            if ids is not None:
                state.ids.extend(ids)
                self._keep(state, text, len(ids))
                return "ok"
            log.warning("engine %s returned no token ids; chunking by text from here on", self.engine.name)
            self.fallbacks += 1
            state.ids = None
        if final:
            self._keep(state, text, completion)
            return "ok"
        cut = await self._text_cut(state, text, choice.get("logprobs"), model)
        if cut is None:
            return "again"
        self._keep(state, text[:cut[0]], cut[1])
        return "ok"

    @staticmethod
    def _keep(state: _Run, text: str, tokens: int) -> None:
        state.think += text
        state.text += text
        state.think_tokens += tokens

    async def _text_cut(self, state: _Run, text: str, logprobs: Any, model: str) -> tuple[int, int] | None:
        """Where to cut a text chunk so that the prefix re-tokenizes to the tokens decoded: (chars, tokens).

        The cut lies before a token that starts with whitespace (where BPE
        pre-tokenizers split words) and, where the engine has ``/tokenize``,
        where the prefix re-tokenizes to exactly as many tokens as were decoded.
        None: no such cut in this chunk (or no token boundaries reported).
        """
        pieces = logprobs.get("tokens") if isinstance(logprobs, Mapping) else None
        if not isinstance(pieces, list) or not all(isinstance(p, str) for p in pieces) or "".join(pieces) != text:
            return None
        ends, at = [], 0
        for p in pieces:
            at += len(p)
            ends.append(at)
        base: int | None = None
        for k in range(len(pieces) - 1, 0, -1):
            if not pieces[k][:1].isspace() or text[:ends[k - 1]].endswith("\ufffd"):
                continue  # not a word boundary, or inside a multi-byte character
            if self.engine.tokenize_path is None:
                return ends[k - 1], k
            if base is None:
                base = len(await self.tokenize(state.text, model))
            if len(await self.tokenize(state.text + text[:ends[k - 1]], model)) == base + k:
                return ends[k - 1], k
        return None

    def _branch(self, state: _Run) -> str | list[int]:
        """The prompt of a probe or an answer: the prefix so far + ``think_end`` + ``answer_suffix``."""
        if state.ids is not None and self._suffix_ids is not None:
            return [*state.ids, *self._suffix_ids]
        return state.text + self.suffix

    async def _probe(self, state: _Run, model: str) -> None:
        body = {"model": model, "prompt": self._branch(state), "max_tokens": self.config.probe_tokens,
                "temperature": 0, "logprobs": 1}
        if self.config.answer_stop:
            body["stop"] = list(self.config.answer_stop)
        got = await self._complete(state, body)
        choice = got["choice"]
        text = choice.get("text") if isinstance(choice.get("text"), str) else ""
        conf = confidence(choice.get("logprobs"), self.config.confidence_mean)
        state.probe_tokens += got["completion"]
        state.probes.append(Probe(state.think_tokens, conf, text.strip(), got["completion"]))

    async def _answer(self, state: _Run, model: str, reason: str) -> tuple[str, int, str | None]:
        prompt: str | list[int] = self._branch(state) if reason != "end" else state.text + self.suffix
        # the same request as a probe at this offset, so a trace's trial answer is exactly what an arm
        # stopping here answers
        body = {"model": model, "prompt": prompt, "max_tokens": self.config.probe_tokens, "temperature": 0}
        if self.config.answer_stop:
            body["stop"] = list(self.config.answer_stop)
        got = await self._complete(state, body)
        choice = got["choice"]
        text = choice.get("text") if isinstance(choice.get("text"), str) else ""
        finish = choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None
        return text.strip(), got["completion"], finish


def _returned_ids(choice: Mapping[str, Any], data: Mapping[str, Any]) -> list[int] | None:
    """Generated token ids as the engine returns them (vLLM ``token_ids``, llama.cpp ``tokens``)."""
    for ids in (choice.get("token_ids"), choice.get("tokens"), data.get("tokens")):
        if isinstance(ids, list) and all(int_or_none(t) is not None for t in ids):
            return list(ids)
    return None


__all__ = ["ProbeDriver", "confidence"]
