"""What the decoder returns for one row.

Token accounting follows :mod:`stopbandit.bandit.trace`: a row that stopped
thinking at offset ``s`` spent ``s`` thinking tokens, every probe token before
``s`` and the answer tokens (the answer-end token included when one was
generated). Delimiter and answer-prefix tokens are inputs the decoder appends,
not generated tokens, so they are not counted, in probes or in the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stopbandit.bandit.arms import Arm
from stopbandit.bandit.trace import ProbeTrace


@dataclass(frozen=True, slots=True)
class DecodeResult:
    """One row's outcome.

    ``answer``: text of the answer (answer-end token removed).
    ``stop_reason``: ``confidence``, ``budget`` or ``end``.
    ``answer_complete``: False when the answer was cut at ``max_answer_tokens``.
    ``think_ids`` / ``answer_ids``: the generated token ids (for audits and tests).
    ``trace``: the probe trace; ``trace.total_tokens == total_tokens``.
    """

    arm: Arm
    answer: str
    think_tokens: int
    answer_tokens: int
    probe_tokens: int
    stop_reason: str
    answer_complete: bool
    trace: ProbeTrace
    think_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]

    @property
    def total_tokens(self) -> int:
        """Every token spent: thinking + probes before the stop + answer."""
        return self.think_tokens + self.probe_tokens + self.answer_tokens

    def to_json(self) -> dict[str, Any]:
        return {
            "arm": self.arm.name,
            "answer": self.answer,
            "think_tokens": self.think_tokens,
            "answer_tokens": self.answer_tokens,
            "probe_tokens": self.probe_tokens,
            "total_tokens": self.total_tokens,
            "stop_reason": self.stop_reason,
            "answer_complete": self.answer_complete,
            "trace": self.trace.to_json(),
        }


__all__ = ["DecodeResult"]
