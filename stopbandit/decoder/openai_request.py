"""Arm <-> OpenAI-compatible request settings (vLLM and friends).

An arm becomes request fields as follows (``arm_to_request``):

==========================  ===================================================
arm                          request body
==========================  ===================================================
``max_think_tokens = B > 0``  ``thinking_token_budget: B`` (vLLM's per-request
                             reasoning budget: after B reasoning tokens the
                             server forces the end-of-thinking delimiter);
                             for chat also ``chat_template_kwargs.thinking_budget: B``
                             (the Qwen3 template / SGLang hint);
                             ``max_tokens: B + max_answer_tokens + slack``
                             (vLLM counts thinking and answer against one
                             ``max_tokens``; ``slack`` covers the forced delimiter).
``max_think_tokens = 0``     no budget field; ``max_tokens: default_max_tokens``.
``threshold``                 no vLLM equivalent (vLLM has no DEER probes): sent
                             as ``stopbandit: {arm, threshold, max_think_tokens}``,
                             which our own server honors and other servers ignore.
always                       ``temperature: 0`` (greedy, like the decoder),
                             ``stop`` = answer stop strings when given.
==========================  ===================================================

``arm_from_request`` is the server side: it reads the budget from
``thinking_token_budget`` (or the aliases ``thinking_budget``,
``reasoning_budget``, ``max_thinking_tokens``, ``chat_template_kwargs.thinking_budget``),
the threshold from ``stopbandit.threshold`` (default: never stop on
confidence), and also caps thinking at ``max_tokens - max_answer_tokens`` so
thinking + answer never exceed ``max_tokens`` (probe tokens are reported in
``usage`` on top).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from stopbandit import validation
from stopbandit.bandit.arms import Arm
from stopbandit.errors import InputError

#: Extra ``max_tokens`` headroom for the delimiter a server forces at the budget.
DELIMITER_SLACK = 8
#: Request fields read as the thinking budget, first match wins.
BUDGET_FIELDS = ("thinking_token_budget", "thinking_budget", "reasoning_budget", "max_thinking_tokens")
#: Threshold used when a request names none: above 1, so confidence never stops it.
NEVER_STOP = 1.01


def arm_to_request(
    arm: Arm,
    *,
    chat: bool = False,
    max_answer_tokens: int = 16,
    default_max_tokens: int = 4096,
    stop: Sequence[str] = (),
) -> dict[str, Any]:
    """Request-body fields (to merge into the body) that make a server run ``arm``."""
    body: dict[str, Any] = {
        "temperature": 0,
        "stopbandit": {"arm": arm.name, "threshold": arm.threshold, "max_think_tokens": arm.max_think_tokens},
    }
    if arm.max_think_tokens > 0:
        budget = arm.max_think_tokens
        body["max_tokens"] = budget + max_answer_tokens + DELIMITER_SLACK
        body["thinking_token_budget"] = budget
        if chat:
            body["chat_template_kwargs"] = {"thinking_budget": budget}
    else:
        body["max_tokens"] = default_max_tokens
    if stop:
        body["stop"] = list(stop)
    return body


def _int_field(name: str, value: Any, minimum: int) -> int:
    return int(validation.within(value, f"request field {name}", low=minimum, integral=True, error=InputError))


def arm_from_request(body: Mapping[str, Any], *, max_answer_tokens: int) -> Arm:
    """The arm a request asks for (see module doc); errors name the offending field."""
    extra = body.get("stopbandit") or {}
    if not isinstance(extra, Mapping):
        raise InputError(f"request field stopbandit must be an object, got {extra!r}")
    budget = 0
    for name in BUDGET_FIELDS:
        if body.get(name) is not None:
            budget = _int_field(name, body[name], 1)
            break
    else:
        kwargs = body.get("chat_template_kwargs") or {}
        if isinstance(kwargs, Mapping) and kwargs.get("thinking_budget") is not None:
            budget = _int_field("chat_template_kwargs.thinking_budget", kwargs["thinking_budget"], 1)
    if not budget and extra.get("max_think_tokens"):
        budget = _int_field("stopbandit.max_think_tokens", extra["max_think_tokens"], 0)
    if body.get("max_tokens") is not None:
        max_tokens = _int_field("max_tokens", body["max_tokens"], 1)
        if max_tokens <= max_answer_tokens:
            raise InputError(
                f"request field max_tokens must exceed the answer allowance ({max_answer_tokens}), got {max_tokens}"
            )
        room = max_tokens - max_answer_tokens
        budget = min(budget or math.inf, room)
    threshold = extra.get("threshold", NEVER_STOP)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise InputError(f"request field stopbandit.threshold must be a number, got {threshold!r}")
    name = extra.get("arm", "request")
    try:
        return Arm(str(name), float(threshold), int(budget))
    except ValueError as exc:  # ConfigError from Arm: re-raise as a bad request
        raise InputError(f"request asks for an invalid arm: {exc}") from exc


__all__ = ["BUDGET_FIELDS", "DELIMITER_SLACK", "NEVER_STOP", "arm_from_request", "arm_to_request"]
