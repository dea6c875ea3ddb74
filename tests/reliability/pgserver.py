"""A throwaway PostgreSQL server that a test (or a benchmark) may stop and restart.

Outage tests must not stop the shared server named by STOPBANDIT_TEST_PG_URL
(other tests use it), so they start their own: ``initdb`` into a temporary
directory, ``pg_ctl start`` on a free port with ``-l logfile`` (pg_ctl must not
hold our stdout open), trust authentication, fsync off (an OS crash could lose
data; a server crash, ``pg_ctl stop -m immediate``, cannot: commits stay
synchronous). As root the binaries run as the ``postgres`` user (PostgreSQL
refuses to run as root), the way ``.ci/postgres.sh`` does.

Use from pytest through the fixtures in ``tests/reliability/conftest.py``
(``pg_server``, ``own_pg_url``); they skip locally when no PostgreSQL is
installed and fail under ``CI=true``. Use from a script::

    with PgServer() as pg:
        url = pg.create_database()
        pg.stop(); pg.start()
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

PGBIN = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))


class PgUnavailable(RuntimeError):
    """No PostgreSQL server could be started here (binaries missing, initdb or start failed)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """One private PostgreSQL cluster: start, stop (fast or immediate), restart, create databases."""

    def __init__(self, *, max_connections: int = 300) -> None:
        self.max_connections = max_connections
        self.port = 0
        self.dir: Path | None = None
        self._as: list[str] = []
        self.running = False

    # -- lifecycle -------------------------------------------------------------------------
    def init(self) -> PgServer:
        initdb = PGBIN / "initdb"
        if not initdb.exists():
            raise PgUnavailable(f"{initdb} not found (set PGBIN to PostgreSQL's bin directory)")
        self.dir = Path(tempfile.mkdtemp(prefix="sb-pg-", dir="/tmp"))  # short: the socket path is limited
        self.dir.chmod(0o755)
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise PgUnavailable("running as root and there is no 'postgres' user to run the server") from exc
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        res = subprocess.run([*self._as, str(initdb), "-D", str(self.data), "-U", "stopbandit", "--auth=trust",
                              "-E", "UTF8"], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise PgUnavailable(f"initdb failed ({res.returncode}): {res.stdout[-2000:]}{res.stderr[-2000:]}")
        return self

    @property
    def data(self) -> Path:
        assert self.dir is not None  # noqa: S101 - test helper
        return self.dir / "data"

    @property
    def logfile(self) -> Path:
        assert self.dir is not None  # noqa: S101 - test helper
        return self.dir / "server.log"

    def _pg_ctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._as, str(PGBIN / "pg_ctl"), "-D", str(self.data), *args],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def start(self) -> None:
        """Start; the first start picks a free port, a restart reuses it (clients keep their URLs)."""
        if self.dir is None:
            self.init()
        first = not self.port
        res = None
        for _ in range(3 if first else 1):
            if first:
                self.port = _free_port()
            opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                    f"-c full_page_writes=off "
                    f"-c max_connections={self.max_connections} -c shared_buffers=64MB")
            res = self._pg_ctl("-l", str(self.logfile), "-w", "-t", "60", "-o", opts, "start")
            if res.returncode == 0:
                self.running = True
                return
        assert res is not None  # noqa: S101 - the loop ran at least once
        raise PgUnavailable(f"pg_ctl start failed: {res.stdout[-1000:]}{res.stderr[-1000:]}\n{self.log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: clients are disconnected; ``immediate``: like a crash)."""
        res = self._pg_ctl("-m", mode, "-w", "-t", "60", "stop")
        if res.returncode != 0 and "Is server running?" not in res.stderr:
            raise PgUnavailable(f"pg_ctl stop failed: {res.stderr[-1000:]}")
        self.running = False

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def server_pids(self) -> list[int]:
        """The postmaster and every process it forked (backends, checkpointer, WAL writer, ...)."""
        master = int((self.data / "postmaster.pid").read_text().split()[0])
        pids = [master]
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master:
                pids.append(int(entry))
        return pids

    def freeze(self) -> None:
        """SIGSTOP the whole server: sockets stay open, nothing answers (a hung server or a partition)."""
        for pid in self.server_pids():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT every process :meth:`freeze` stopped."""
        for pid in self.server_pids():
            os.kill(pid, signal.SIGCONT)

    def destroy(self) -> None:
        if self.dir is None:
            return
        if self.running:
            try:
                self.thaw()  # a frozen server cannot be stopped
            except (OSError, ValueError):
                pass
            try:
                self.stop("immediate")
            except (PgUnavailable, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def ensure_running(self) -> None:
        if not self.running:
            self.start()

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # -- databases ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """SQLAlchemy URL of the server's ``postgres`` database."""
        return f"postgresql+psycopg://stopbandit@127.0.0.1:{self.port}/postgres"

    def db_url(self, name: str) -> str:
        return f"postgresql+psycopg://stopbandit@127.0.0.1:{self.port}/{name}"

    def create_database(self, name: str | None = None) -> str:
        """A fresh empty database; returns its URL."""
        import psycopg

        name = name or f"sb_{uuid.uuid4().hex[:12]}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(f"host=127.0.0.1 port={self.port} user=stopbandit dbname=postgres",
                                     autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f'CREATE DATABASE "{name}"')
                return self.db_url(name)
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def __enter__(self) -> PgServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


__all__ = ["PgServer", "PgUnavailable"]
