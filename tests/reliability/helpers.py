"""Small helpers shared by the reliability tests."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path


def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` (``"256k"``, ``"64m"``) at ``path`` (mode 0700); why not, where mounting is refused."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                         capture_output=True, text=True)
    return None if res.returncode == 0 else res.stderr.strip()


def fill(path: Path) -> Path:
    """Fill the filesystem at ``path`` up to its last byte (the file is unbuffered: no flush at close to fail)."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for size in (65536, 4096, 1):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError:
                pass
    return filler


def until(cond: Callable[[], bool], timeout: float = 10.0, every: float = 0.02) -> bool:
    """Poll ``cond`` until it is true or ``timeout`` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(every)


class LearnCounter:
    """Counts (thread-safely) what a Selector's current policy is asked to learn: one entry per decision."""

    def __init__(self, sel) -> None:
        self.lock = threading.Lock()
        self.rows: list[tuple[float, int, int]] = []  # (em, tokens, arm)
        policy = sel.policy
        learn, learn_revealed = policy.learn, policy.learn_revealed

        def counted_learn(shared, arm, em, tokens, prob, lam):
            with self.lock:
                self.rows.append((em, tokens, arm))
            return learn(shared, arm, em, tokens, prob, lam)

        def counted_revealed(shared, outcomes, logged, prob, lam):
            em, tokens = outcomes[logged]
            with self.lock:
                self.rows.append((em, tokens, logged))
            return learn_revealed(shared, outcomes, logged, prob, lam)

        policy.learn = counted_learn
        policy.learn_revealed = counted_revealed

    @property
    def n(self) -> int:
        with self.lock:
            return len(self.rows)


class Outage:
    """Takes the store away and brings it back: a real ``pg_ctl stop``/``start`` for our own PostgreSQL
    server, or, for SQLite (a file cannot be "down"), every new connection failing with the
    ``OperationalError`` an unreachable database gives (pooled connections are dropped first).
    """

    def __init__(self, server=None, flag_path: str | None = None) -> None:
        self.server = server
        self.flag_path = flag_path
        self.down = False
        self._engines: list = []

    def attach(self, engine) -> None:
        """Make a SQLite engine subject to the injected outage (no-op for PostgreSQL)."""
        if self.server is None:
            install_sqlite_outage(engine, lambda: self.down)
            self._engines.append(engine)

    def start(self) -> None:
        if self.server is not None:
            self.server.stop("fast")
        else:
            self.down = True
            for e in self._engines:
                e.dispose()

    def stop(self) -> None:
        if self.server is not None:
            self.server.start()
        else:
            self.down = False


def install_sqlite_outage(engine, is_down: Callable[[], bool], *, watch: bool = False) -> None:
    """New connections of ``engine`` fail while ``is_down()`` (used in-process and by crash-test children).

    ``watch``: a thread drops the pooled connections as soon as ``is_down()``
    turns true (a child process has nobody to call ``dispose`` for it).
    """
    import sqlite3

    from sqlalchemy import event

    @event.listens_for(engine, "do_connect")
    def _refuse(dialect, conn_rec, cargs, cparams):  # noqa: ARG001 - SQLAlchemy's signature
        if is_down():
            raise sqlite3.OperationalError("unable to open database file (injected outage)")
        return None

    if watch:
        def watcher() -> None:
            was = False
            while True:
                now = is_down()
                if now and not was:
                    engine.dispose()
                was = now
                time.sleep(0.005)

        threading.Thread(target=watcher, daemon=True, name="outage-watcher").start()
