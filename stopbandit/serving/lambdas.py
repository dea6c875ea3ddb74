"""λ changes written to the store off the request path.

``Selector.set_lambda`` applies a new λ at once (the next ``choose`` uses it)
and hands the change to a :class:`LambdaWriter`: a background thread writes
the changes in the order they were made, retrying while the store is down or
locked, so a caller on the serving path (the λ controller runs inside
``reward``) never waits for the database. ``flush`` waits until every change
so far is stored; ``close`` gives the writes a bounded time and counts the
ones it could not store (``unwritten``), which are also logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from stopbandit.errors import StoreError
from stopbandit.replay.store import LambdaChange, ReplayStore

log = logging.getLogger("stopbandit.selector")


class PendingChange(NamedTuple):
    value: float
    reason: str
    who: str


class LambdaWriter:
    """Writes λ changes in order from its own thread; never blocks the caller of :meth:`submit`."""

    def __init__(self, store: ReplayStore, *, written: Callable[[LambdaChange], None],
                 fault: Callable[[BaseException], None], retry_interval: float = 0.5) -> None:
        self.store = store
        self._written = written
        self._fault = fault
        self._retry = retry_interval
        self._queue: deque[PendingChange] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self.unwritten = 0
        self._thread = threading.Thread(target=self._run, name="stopbandit-lambda", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Changes not stored yet (the one being written included)."""
        return len(self._queue)

    def submit(self, value: float, reason: str, who: str) -> None:
        with self._cond:
            self._queue.append(PendingChange(value, reason, who))
            self._cond.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every change submitted so far is stored; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Store what is pending (waiting up to ``timeout``), then stop; what is left is counted and logged."""
        self.flush(timeout)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
        if left:
            self.unwritten += len(left)
            log.error("λ changes not stored (the store did not answer before close): %s", left)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                change = self._queue[0]
            try:
                stored = self.store.add_lambda(change.value, change.reason, change.who)
            except StoreError as exc:
                self._fault(exc)
                with self._cond:
                    self._cond.wait(self._retry)
                continue
            except Exception as exc:  # noqa: BLE001 - the writer must never die; a refused row is not retried
                self._fault(exc)
                log.error("λ change %s refused by the store: %s", change, exc)
                self.unwritten += 1
                stored = None
            if stored is not None:
                self._written(stored)
            with self._cond:
                self._queue.popleft()
                self._cond.notify_all()


__all__ = ["LambdaWriter", "PendingChange"]
