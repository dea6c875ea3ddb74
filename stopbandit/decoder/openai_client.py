"""Client for OpenAI-compatible servers (vLLM, SGLang, our own :mod:`stopbandit.decoder.server`).

Standard library only (``urllib``): the package does not depend on an HTTP
client. The arm becomes request settings via
:func:`stopbandit.decoder.openai_request.arm_to_request`; the token count that
feeds the reward is read back from ``usage.completion_tokens`` (our server
counts probe tokens there; other servers have none).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stopbandit.bandit.arms import Arm
from stopbandit.bandit.trace import ProbeTrace
from stopbandit.decoder.openai_request import arm_to_request
from stopbandit.errors import InputError, StopbanditError


class RemoteError(StopbanditError, RuntimeError):
    """The server could not be reached, failed, or answered something that is not an OpenAI response."""


@dataclass(frozen=True, slots=True)
class RemoteResult:
    """One completion as the server reported it.

    ``tokens`` (= ``usage.completion_tokens``) is what the reward uses.
    ``stop_reason`` and ``trace`` are present only when the server is ours.
    """

    answer: str
    reasoning: str | None
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int | None
    finish_reason: str | None
    stop_reason: str | None = None
    trace: ProbeTrace | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def tokens(self) -> int:
        return self.completion_tokens


class OpenAIClient:
    """Posts one request per prompt to ``{base_url}/v1/completions`` (or ``/v1/chat/completions`` when ``chat``)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        chat: bool = False,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_answer_tokens: int = 16,
        default_max_tokens: int = 4096,
        think_end: str = "</think>",
        stop: Sequence[str] = (),
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise InputError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[:-3]
        self.model = model
        self.chat = chat
        self.api_key = api_key
        self.timeout = timeout
        self.max_answer_tokens = max_answer_tokens
        self.default_max_tokens = default_max_tokens
        self.think_end = think_end
        self.stop = tuple(stop)

    def request_body(self, prompt: str, arm: Arm) -> dict[str, Any]:
        """The JSON body sent for ``prompt`` under ``arm`` (public so callers can log or inspect it)."""
        body: dict[str, Any] = {"model": self.model}
        if self.chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        body.update(
            arm_to_request(
                arm,
                chat=self.chat,
                max_answer_tokens=self.max_answer_tokens,
                default_max_tokens=self.default_max_tokens,
                stop=self.stop,
            )
        )
        return body

    def complete(self, prompt: str, arm: Arm) -> RemoteResult:
        """Run ``prompt`` under ``arm`` and return the answer and the server's token counts."""
        path = "/v1/chat/completions" if self.chat else "/v1/completions"
        data = self._post(path, self.request_body(prompt, arm))
        return self._parse(data)

    # -- transport -----------------------------------------------------------------

    def _post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            self.base_url + path, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            if 400 <= exc.code < 500:
                raise InputError(f"server rejected the request ({exc.code}): {detail}") from exc
            raise RemoteError(f"server error {exc.code} from {self.base_url}{path}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise RemoteError(f"cannot reach {self.base_url}{path}: {exc}") from exc
        try:
            data = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise RemoteError(f"{self.base_url}{path} answered non-JSON: {payload[:200]!r}") from exc
        if not isinstance(data, dict):
            raise RemoteError(f"{self.base_url}{path} answered {type(data).__name__}, expected an object")
        return data

    def _parse(self, data: dict[str, Any]) -> RemoteResult:
        try:
            choice = data["choices"][0]
            usage = data["usage"]
            if self.chat:
                message = choice["message"]
                answer = message.get("content") or ""
                reasoning = message.get("reasoning_content") or message.get("reasoning")
            else:
                answer = choice.get("text") or ""
                reasoning = choice.get("reasoning_content") or choice.get("reasoning")
            prompt_tokens = int(usage["prompt_tokens"])
            completion_tokens = int(usage["completion_tokens"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise RemoteError(f"response is not an OpenAI completion: {exc!r} in {json.dumps(data)[:300]}") from exc
        if reasoning is None and self.think_end in answer:
            # plain servers return "<reasoning></think><answer>" as one text
            reasoning, answer = answer.split(self.think_end, 1)
        details = usage.get("completion_tokens_details") or {}
        ours = choice.get("stopbandit") or {}
        trace = ProbeTrace.from_json(ours["trace"]) if "trace" in ours else None
        return RemoteResult(
            answer=answer,
            reasoning=reasoning,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            reasoning_tokens=details.get("reasoning_tokens"),
            finish_reason=choice.get("finish_reason"),
            stop_reason=ours.get("stop_reason"),
            trace=trace,
            raw=data,
        )


__all__ = ["OpenAIClient", "RemoteError", "RemoteResult"]
