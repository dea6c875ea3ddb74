"""What the gateway measured per decision, until its reward arrives.

A client posts only the decision id and its EM to ``/v1/rewards``; the token
count (as the engine reported it, probes included) and the probe trace were
recorded here when the answer went out. Bounded: the oldest entries go first
(``ledger_size``); a reward for a decision no longer here must carry ``tokens``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from stopbandit.bandit.arms import Arm
from stopbandit.bandit.trace import ProbeTrace


@dataclass(frozen=True, slots=True)
class Served:
    """One answered (or failed) request: the arm served, the policy's arm, tokens and trace."""

    served: Arm
    chosen: Arm  # the policy's arm (differs from ``served`` in shadow mode)
    tokens: int
    answer: str
    trace: ProbeTrace | None
    latency_ms: float
    error: str | None = None
    learned: Any = None  # the learned stop rule's inputs the run used (LearnedInputs), when an arm reads it


class Ledger:
    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, Served] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, decision_id: str, served: Served) -> None:
        with self._lock:
            self._items[decision_id] = served
            self._items.move_to_end(decision_id)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def get(self, decision_id: str) -> Served | None:
        with self._lock:
            return self._items.get(decision_id)

    def __len__(self) -> int:
        return len(self._items)


__all__ = ["Ledger", "Served"]
