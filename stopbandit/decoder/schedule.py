"""Where probes happen: every N thinking tokens and/or right after marker token sequences.

The schedule depends only on the reasoning tokens, never on the arm, so every
arm run on the same request probes at the same offsets. That is what makes a
lenient run's trace reveal the outcome of every stricter arm
(:func:`stopbandit.bandit.trace.counterfactual`): a budget arm is revealed
when its cap is a probe offset, so choose ``every`` to divide the caps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stopbandit import validation


@dataclass(frozen=True, slots=True)
class ProbeSchedule:
    """Probe at offset ``s`` (``s`` reasoning tokens so far, ``s >= 1``) when

    ``every > 0 and s % every == 0``, or the reasoning ends with one of ``markers``.
    """

    every: int = 0
    markers: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        validation.within(self.every, "probe schedule every", low=0, integral=True,
                          expected="an integer {range} (0 = off)")
        object.__setattr__(self, "markers", tuple(tuple(m) for m in self.markers if m))

    @property
    def enabled(self) -> bool:
        return self.every > 0 or bool(self.markers)

    def at(self, reasoning: Sequence[int]) -> bool:
        """Whether to probe now, given the reasoning tokens generated so far."""
        offset = len(reasoning)
        if offset == 0:
            return False
        if self.every and offset % self.every == 0:
            return True
        for marker in self.markers:
            n = len(marker)
            if offset >= n and tuple(reasoning[offset - n :]) == marker:
                return True
        return False


__all__ = ["ProbeSchedule"]
