"""Which logged events a replay pass reads, and how: one value for every pass.

Evaluation, sweeps and training all read the log the same way -- a set of
outcome statuses, a decision-time window, a chunk size -- and report the
same way -- an interval level, a progress bar, worker processes. They take
one :class:`ReplayOptions` instead of repeating seven keyword arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from stopbandit import validation
from stopbandit.errors import ConfigError
from stopbandit.replay.store import OUTCOME_STATUSES

DEFAULT_CHUNK = 5000
MAX_CHUNK = 200_000
PROB_TOL = 1e-6
"""Tolerance of logged probability vectors (sum to 1, propensity = the logged arm's probability)."""


def check_include(include: Sequence[str]) -> tuple[str, ...]:
    """The outcome statuses to estimate on, deduplicated in order."""
    if isinstance(include, str):
        include = (include,)
    bad = [s for s in include if s not in OUTCOME_STATUSES]
    if bad or not include:
        raise ConfigError(f"include must name outcome statuses from {list(OUTCOME_STATUSES)}, got {list(include)!r}")
    return tuple(dict.fromkeys(include))


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """How a pass reads the log.

    ``include``: outcome statuses that reach the estimates (``defaulted`` and
    ``late`` events are counted either way). ``since`` / ``until``:
    decision-time window ``since <= ts < until`` (epoch seconds, None = open).
    ``chunk``: events per read (memory is bounded by it). ``alpha``: 1 − the
    confidence level of the intervals. ``progress``: True/False forces the
    stderr progress bar on/off, None shows it for big or slow jobs. ``jobs``:
    worker processes (None: chosen from what the first range of the pass cost, see runner.choose_jobs).
    """

    include: tuple[str, ...] = ("ok",)
    since: float | None = None
    until: float | None = None
    chunk: int = DEFAULT_CHUNK
    alpha: float = 0.05
    progress: bool | None = None
    jobs: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", check_include(self.include))
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is None:
                continue
            object.__setattr__(self, name, validation.within(value, name,
                                                             expected="a finite time in epoch seconds or None"))
        validation.within(self.chunk, "chunk", low=1, high=MAX_CHUNK, integral=True)
        validation.within(self.alpha, "alpha", low=0, high=1, low_open=True, high_open=True,
                          expected="a number {range}")
        if self.progress not in (None, True, False):
            raise ConfigError(f"progress must be True, False or None, got {self.progress!r}")
        if self.jobs is not None and (isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1):
            raise ConfigError(f"jobs must be a positive integer, got {self.jobs!r}")

    def with_(self, **changes: Any) -> ReplayOptions:
        """A copy with ``changes`` (validated again)."""
        return replace(self, **changes)


__all__ = ["DEFAULT_CHUNK", "MAX_CHUNK", "PROB_TOL", "ReplayOptions", "check_include"]
