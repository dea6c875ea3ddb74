"""How long the oldest row of a queue has waited, without a timestamp per row.

The batch writer's producers only append to a deque (``submit`` is on the
serving path: no clock read, no lock). The writer thread, which alone pops,
notes from time to time how many rows had been queued in all by then. The
oldest queued row is row number ``taken`` (rows popped so far), so it was
queued after the latest note that counts no more rows than that: the time
since that note bounds its age from above.
"""

from __future__ import annotations

import time
from collections import deque


class QueueAge:
    """Notes (rows queued in all, when) taken by the consumer; the upper bound on the oldest row's wait."""

    def __init__(self) -> None:
        self.taken = 0  # rows popped so far (the consumer counts them)
        self._marks: deque[tuple[int, float]] = deque([(0, time.monotonic())])

    def note(self, queued: int) -> float:
        """Note that ``taken + queued`` rows have been queued in all by now; returns now."""
        now = time.monotonic()
        marks = self._marks
        marks.append((self.taken + queued, now))
        while len(marks) > 1 and marks[1][0] <= self.taken:  # notes no queued row needs any more
            marks.popleft()
        return now

    def age(self, queued: int) -> float:
        """Seconds the oldest of ``queued`` rows has waited at most (0 when none is queued)."""
        now = self.note(queued)
        return now - self._marks[0][1] if queued else 0.0


__all__ = ["QueueAge"]
