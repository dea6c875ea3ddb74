"""What running one arm on the upstream produced, with the engine's own token counts.

``completion_tokens`` is every token the engine reported generating for the
request (thinking, probes, answer, and text decoded then discarded at a chunk
boundary): the cost the reward uses. ``think_tokens`` / ``probe_tokens`` /
``answer_tokens`` split it as far as the engine reports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stopbandit.bandit.trace import ProbeTrace


@dataclass(frozen=True, slots=True)
class RunResult:
    answer: str
    reasoning: str | None
    prompt_tokens: int
    completion_tokens: int
    think_tokens: int | None
    probe_tokens: int
    answer_tokens: int | None
    finish_reason: str | None
    stop_reason: str | None = None  # confidence / agreement / budget / end (gateway-run arms)
    trace: ProbeTrace | None = None
    calls: int = 1
    chunking: str | None = None  # tokens / text (probe driver)
    raw: Mapping[str, Any] | None = field(default=None, repr=False)  # the engine's answer, when passed through

    def usage(self) -> dict[str, Any]:
        """OpenAI's ``usage`` object, with the split in ``completion_tokens_details``."""
        details: dict[str, Any] = {}
        if self.think_tokens is not None:
            details["reasoning_tokens"] = self.think_tokens
        details["probe_tokens"] = self.probe_tokens
        if self.answer_tokens is not None:
            details["answer_tokens"] = self.answer_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "completion_tokens_details": details,
        }


def int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def usage_counts(data: Mapping[str, Any]) -> tuple[int, int, int | None]:
    """(prompt_tokens, completion_tokens, reasoning_tokens) from an engine's ``usage`` (0 / None when absent)."""
    usage = data.get("usage") if isinstance(data, Mapping) else None
    if not isinstance(usage, Mapping):
        return 0, 0, None
    details = usage.get("completion_tokens_details")
    reasoning = int_or_none(details.get("reasoning_tokens")) if isinstance(details, Mapping) else None
    return int_or_none(usage.get("prompt_tokens")) or 0, int_or_none(usage.get("completion_tokens")) or 0, reasoning


__all__ = ["RunResult", "int_or_none", "usage_counts"]
