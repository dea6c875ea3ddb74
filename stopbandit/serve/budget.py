"""Budget arms and pass-through: one call to the engine, in the client's own request shape.

A budget arm (``max_think_tokens = B > 0``, a threshold no probe can reach)
adds the engine's own per-request budget field (:mod:`stopbandit.serve.engines`)
to the client's body; an arm with neither budget nor probes passes the body
through unchanged. The engine's answer goes back to the client as it came, with
the ``stopbandit`` object added. An engine without a native budget runs budget
arms through :class:`stopbandit.serve.probe.ProbeDriver` with probes off: decode
the thinking up to B, close it, ask for the answer in a second call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stopbandit.bandit.arms import Arm
from stopbandit.serve.config import GatewayConfig
from stopbandit.serve.engines import Engine
from stopbandit.serve.result import RunResult, usage_counts

#: Request fields the gateway reads and never forwards.
OWN_FIELDS = ("stopbandit", "metadata")


def upstream_body(body: Mapping[str, Any], arm: Arm | None, engine: Engine, config: GatewayConfig, *,
                  chat: bool, model: str) -> dict[str, Any]:
    """The client's body for the engine: our fields removed, the arm's budget added (``arm`` None: as is)."""
    out = {k: v for k, v in body.items() if k not in OWN_FIELDS}
    out.setdefault("model", model)
    if arm is not None and arm.max_think_tokens > 0:
        out.update(engine.budget_request(arm.max_think_tokens, allowance=config.answer_tokens, chat=chat))
    return out


def from_response(data: Mapping[str, Any], *, chat: bool) -> RunResult:
    """The engine's answer as a :class:`RunResult` (token counts as the engine reports them)."""
    prompt_tokens, completion, reasoning = usage_counts(data)
    choices = data.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], Mapping) else {}
    if chat:
        message = choice.get("message") if isinstance(choice.get("message"), Mapping) else {}
        answer = message.get("content")
        thinking = message.get("reasoning_content") or message.get("reasoning")
    else:
        answer = choice.get("text")
        thinking = choice.get("reasoning_content") or choice.get("reasoning")
    answer_tokens = completion - reasoning if reasoning is not None else None
    ours = choice.get("stopbandit") if isinstance(choice.get("stopbandit"), Mapping) else {}
    return RunResult(
        answer=answer if isinstance(answer, str) else "",
        reasoning=thinking if isinstance(thinking, str) else None,
        prompt_tokens=prompt_tokens, completion_tokens=completion, think_tokens=reasoning,
        probe_tokens=_probe_tokens(data), answer_tokens=answer_tokens,
        finish_reason=choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None,
        stop_reason=ours.get("stop_reason") if isinstance(ours.get("stop_reason"), str) else None,
        raw=data,
    )


def _probe_tokens(data: Mapping[str, Any]) -> int:
    """Probe tokens an engine reports (our decoder server does, in ``completion_tokens_details``)."""
    usage = data.get("usage")
    details = usage.get("completion_tokens_details") if isinstance(usage, Mapping) else None
    value = details.get("probe_tokens") if isinstance(details, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


__all__ = ["OWN_FIELDS", "from_response", "upstream_body"]
