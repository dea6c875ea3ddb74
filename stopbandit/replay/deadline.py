"""Deadlines for database calls, enforced from outside the blocked thread.

A PostgreSQL server that is stopped (SIGSTOP) or cut off by a partition keeps
its sockets open: the kernel still acknowledges packets, so TCP keepalives
see nothing wrong, and a server-side ``statement_timeout`` never fires because
the server does not run. A thread waiting for its answer waits forever. So the
batch writer runs each database call under a :class:`Deadlines` watch: a
watchdog thread that, when a call overruns, reports the overrun at once (the
writer's health says the store is down while the call is still stuck) and
then cuts the engine's connections from outside: ``shutdown()`` of a
PostgreSQL connection's socket (the blocked ``recv`` returns and the driver
raises), ``interrupt()`` of a SQLite connection. The call then fails like any
outage, and a call that finished after its deadline counts as failed too
(:meth:`Deadlines.call` raises :class:`~stopbandit.errors.StoreError`), so its
rows go to the spill.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event

from stopbandit.errors import StoreError

log = logging.getLogger("stopbandit.deadline")


class DeadlineExceeded(StoreError):
    """A database call did not finish within its deadline; the store counts as unavailable."""


class Deadlines:
    """Watches the database calls made under :meth:`call` on one engine; cuts the engine's connections on an overrun."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.on_overrun: list[Callable[[str], None]] = []  # called (from the watchdog) when a call overruns
        self._conns: weakref.WeakSet[Any] = weakref.WeakSet()  # every DBAPI connection the engine opened
        self._ids = itertools.count()
        self._reset()
        event.listen(engine, "connect", self._track)
        event.listen(engine, "checkout", lambda conn, rec, proxy: self._track(conn, rec))

    def _reset(self) -> None:
        self._calls: dict[int, list[Any]] = {}  # token -> [deadline, what, overran]
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def after_fork(self) -> None:
        """In a forked child: fresh lock and watchdog (the parent's lock may have been held at the fork)."""
        self._reset()

    def _track(self, dbapi_connection: Any, _record: Any) -> None:
        try:
            self._conns.add(dbapi_connection)
        except TypeError:  # pragma: no cover - a driver whose connections take no weak reference
            pass

    @contextmanager
    def call(self, what: str, timeout: float | None) -> Iterator[None]:
        """Run the body as one database call of at most ``timeout`` seconds (None: unwatched)."""
        if timeout is None:
            yield
            return
        entry = [time.monotonic() + timeout, what, False]
        with self._cv:
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._watch, name="stopbandit-deadline", daemon=True)
                self._thread.start()
            token = next(self._ids)
            self._calls[token] = entry
            self._cv.notify()
        try:
            yield
        except Exception as exc:
            if entry[2]:
                raise DeadlineExceeded(f"{what} did not finish within {timeout:g} s: cut off ({exc})") from exc
            raise
        finally:
            with self._cv:
                self._calls.pop(token, None)
        if entry[2]:
            raise DeadlineExceeded(f"{what} did not finish within {timeout:g} s (it completed late; "
                                   "counted as failed)")

    def overdue(self) -> str | None:
        """The call in flight that is past its deadline, if any (for health: the store is hung)."""
        now = time.monotonic()
        with self._lock:
            for deadline, what, _ in self._calls.values():
                if now >= deadline:
                    return what
        return None

    def _watch(self) -> None:
        while True:
            with self._cv:
                now = time.monotonic()
                due = [e for e in self._calls.values() if not e[2] and e[0] <= now]
                for e in due:
                    e[2] = True
                if not due:
                    nxt = min((e[0] for e in self._calls.values() if not e[2]), default=None)
                    self._cv.wait(None if nxt is None else max(0.0, nxt - now) + 0.001)
                    continue
            for e in due:
                log.error("%s overran its deadline: cutting the database connections", e[1])
                for callback in list(self.on_overrun):
                    callback(e[1])
            self.cut()

    def cut(self) -> None:
        """Make every blocked call on the engine's connections fail now."""
        for conn in list(self._conns):
            _cut(conn)


def _cut(conn: Any) -> None:
    interrupt = getattr(conn, "interrupt", None)
    if interrupt is not None and type(conn).__module__.startswith("sqlite3"):
        try:
            interrupt()
        except Exception as exc:  # noqa: BLE001 - a closed connection: nothing to cut
            log.debug("interrupt of a SQLite connection failed: %s", exc)
        return
    fileno = getattr(conn, "fileno", None)
    if fileno is None:
        return
    try:
        fd = os.dup(fileno())
    except Exception as exc:  # noqa: BLE001 - a closed connection has no socket
        log.debug("no socket to cut: %s", exc)
        return
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError as exc:
        log.debug("shutdown of a database socket failed: %s", exc)
    finally:
        sock.close()  # closes our duplicate only; the driver's descriptor now reads EOF


__all__ = ["DeadlineExceeded", "Deadlines"]
