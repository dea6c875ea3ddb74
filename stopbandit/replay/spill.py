"""A local JSON-lines file that holds events while the database is unreachable.

Lines are ``{"k": kind, "r": row}`` — ``d`` a decision, ``o`` an outcome,
``l`` a late reward that upgrades a ``defaulted`` outcome (see
``stopbandit.bandit.delayed``) — appended in batches, so a crash loses at most
the batch being written (a torn last line, which :class:`SpillReader` skips).
Replaying is idempotent because the store ignores keys it already has.

Two kinds of append (``sync``):

* ``sync=True`` (durable mode, and the default): written and fsync'd before
  ``append`` returns;
* ``sync=False`` (the queued writer): written at once — in the kernel, so a
  killed process loses nothing of it — and fsync'd by the file's syncer thread
  right after. The batch writer never waits for the disk: an fsync can take
  a second on a busy disk, and rows waiting behind it in the writer's memory
  were what a ``kill -9`` during an outage lost (issue 10). :meth:`SpillFile.sync`
  waits for the fsync of everything appended so far.

Every writer owns its own file, ``<prefix>.<pid>-<id>.jsonl``, and holds an
exclusive ``flock`` on ``<file>.lock`` while it lives: two writers sharing one
file could replay each other's rows out of order (an outcome before its
decision). A file whose lock nobody holds belongs to a process that died; any
writer of the same store adopts and replays such orphans (:class:`Adopted`).

Lock files are unlinked by whoever finishes with them, so after taking a lock
both sides check that the path still names the inode they locked (the classic
lock-file-with-unlink protocol); otherwise a writer and an adopter could each
hold "the" lock on two different inodes and the adopter would delete a live
writer's data.

Sizes and line counts are kept in memory (no re-reading of the file to report
a backlog), and the total of the live and the replay file is bounded by
``max_bytes``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from stopbandit.errors import InputError
from stopbandit.replay import jsoncodec

KINDS = ("d", "o", "l")
SpillItem = tuple[str, dict[str, Any]]
log = logging.getLogger("stopbandit.spill")


def _lock(path: Path) -> IO[str] | None:
    """An exclusive, non-blocking flock on ``path`` (created if needed); None if held or gone.

    After the lock is taken, the path must still name the locked inode: if the
    previous holder unlinked it in between, our lock protects nothing.
    """
    fh = open(path, "a")  # noqa: SIM115 - returned, held for as long as the lock is
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    try:
        same = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
        return None
    return fh


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - a directory we cannot open cannot be fsync'd either
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def encode(items: Sequence[tuple[str, Mapping[str, Any]]]) -> bytes:
    """The spill lines of ``items``; TypeError/ValueError for a row that is not JSON.

    The error is a :class:`~stopbandit.replay.jsoncodec.NotJSONError`, naming
    the row's line in the batch and the offending key. Encoded by orjson
    (several times faster than the standard library: during an outage every
    row is encoded here, holding the GIL the serving threads need); a row it
    refuses goes through ``json``, so what can be spilled is what the standard
    library accepts (:func:`~stopbandit.replay.jsoncodec.dumps_lines`).
    """
    return jsoncodec.dumps_lines([{"k": k, "r": r} for k, r in items])


def _write_all(fd: int, blob: bytes) -> None:
    view = memoryview(blob)
    while view:
        view = view[os.write(fd, view):]


class SpillFile:
    """Append-only spill with a size bound; thread-safe; owned by one writer.

    The live file stays open while it receives appends; ``sync=False`` appends
    are fsync'd by a syncer thread (started on the first one) so that the
    appender never waits for the disk.
    """

    def __init__(self, prefix: str | os.PathLike[str], max_bytes: int = 1 << 30) -> None:
        self.prefix = str(prefix)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._synced_cv = threading.Condition(self._lock)
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            self.path = Path(f"{self.prefix}.{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl")
            owner = _lock(Path(f"{self.path}.lock"))
            if owner is not None:
                break
        else:  # pragma: no cover - 100 fresh random names all taken
            raise InputError(f"cannot create a spill file next to {self.prefix!r}")
        self._owner = owner
        self.replay_path = self.path.with_name(self.path.name + ".replay")
        self._live_lines = self._live_bytes = 0
        self._replay_lines = self._replay_bytes = 0
        self.max_backlog = 0
        # the open live file: bytes written to it, and of those the bytes known fsync'd
        self._fd: int | None = None
        self._gen = 0  # counts the live files opened (an fd number can be reused after a close)
        self._written = self._synced = 0
        self._syncing = 0  # fsyncs of the open file in flight (it is not closed under them)
        self._dir_dirty = False  # the live file was created and its directory entry not yet fsync'd
        self._syncer: threading.Thread | None = None
        self._closing = False
        self.sync_error: str | None = None  # the last fsync failure, if the disk refused one

    def release(self) -> None:
        """Give up ownership (at close): the lock file goes when nothing is left to replay.

        With a backlog left, the files stay and the next writer of the store adopts them.
        """
        with self._lock:
            if self._owner.closed:
                return
            self._closing = True
            self._synced_cv.notify_all()
        if self._syncer is not None:
            self._syncer.join(30.0)
        with self._lock:
            self._close_live()
            if not self.has_backlog():
                for p in (self.path, self.replay_path):
                    p.unlink(missing_ok=True)
                Path(f"{self.path}.lock").unlink(missing_ok=True)
            fcntl.flock(self._owner, fcntl.LOCK_UN)
            self._owner.close()

    def orphans(self) -> list[Path]:
        """Spill files of this store other than ours (whether their writer is alive is up to :class:`Adopted`)."""
        return [p for p in spill_files(self.prefix) if p != self.path]

    def append(self, items: Sequence[tuple[str, Mapping[str, Any]]], *, sync: bool = True) -> int:
        """Append (kind, row) items; returns how many were written (0 when over the size bound).

        ``sync``: fsync'd before returning; otherwise written now and fsync'd by the syncer thread.
        """
        if not items:
            return 0
        blob = encode(items)
        with self._lock:
            if self._live_bytes + self._replay_bytes + len(blob) > self.max_bytes:
                return 0
            if self._fd is None:
                new = not self.path.exists()
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
                self._gen += 1
                self._written = self._synced = 0
                self._dir_dirty = self._dir_dirty or new
            _write_all(self._fd, blob)
            self._written += len(blob)
            self._live_lines += len(items)
            self._live_bytes += len(blob)
            self.max_backlog = max(self.max_backlog, self._live_lines + self._replay_lines)
            if sync:
                fd, target, sync_dir = self._fd, self._written, self._dir_dirty
                self._dir_dirty = False
                self._syncing += 1
            else:
                self._start_syncer()
                self._synced_cv.notify_all()
        if sync:
            self._fsync(fd, target, sync_dir)
        return len(items)

    def sync(self, timeout: float | None = None) -> bool:
        """Wait until everything appended so far is fsync'd; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            gen, target = self._gen, self._written
            while self._fd is not None and self._gen == gen and self._synced < target:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._synced_cv.wait(left)
        return True

    def _fsync(self, fd: int, target: int, sync_dir: bool) -> None:
        """fsync ``fd`` (pinned by ``_syncing``, so it is not closed meanwhile) outside the lock."""
        ok = False
        try:
            if sync_dir:
                _fsync_dir(self.path.parent)
            os.fsync(fd)
            ok = True
        finally:
            with self._lock:
                self._syncing -= 1
                if ok and fd == self._fd:
                    self._synced = max(self._synced, target)
                self._synced_cv.notify_all()

    def _start_syncer(self) -> None:
        if self._syncer is None:
            self._syncer = threading.Thread(target=self._sync_loop, name="stopbandit-spill-sync", daemon=True)
            self._syncer.start()

    def _sync_loop(self) -> None:
        """fsync the live file whenever it holds unsynced bytes (group fsync: one call covers every append before it)."""
        while True:
            with self._lock:
                while not self._closing and (self._fd is None or self._synced >= self._written or self._syncing):
                    self._synced_cv.wait()
                if self._closing:
                    return
                fd, target, sync_dir = self._fd, self._written, self._dir_dirty
                self._dir_dirty = False
                self._syncing += 1
            try:
                self._fsync(fd, target, sync_dir)
                self.sync_error = None
            except Exception as exc:  # noqa: BLE001 - the syncer must survive: report, retry shortly
                self.sync_error = f"fsync of {self.path}: {exc}"
                log.error("spill %s", self.sync_error)
                time.sleep(0.5)

    def _close_live(self) -> None:
        """fsync and close the open live file (caller holds the lock); waits for fsyncs in flight."""
        while self._syncing:
            self._synced_cv.wait()
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self._synced < self._written or self._dir_dirty:
                if self._dir_dirty:
                    _fsync_dir(self.path.parent)
                os.fsync(fd)
        finally:
            os.close(fd)
            self._written = self._synced = 0
            self._dir_dirty = False
            self._synced_cv.notify_all()

    def backlog_lines(self) -> int:
        """Events waiting in the spill (both the live file and one being replayed)."""
        return self._live_lines + self._replay_lines

    def has_backlog(self) -> bool:
        return self._live_lines + self._replay_lines > 0

    def take_for_replay(self) -> Path | None:
        """Move the live file aside for replay (new appends start a fresh file); it is fsync'd first."""
        with self._lock:
            if self._replay_lines:
                return self.replay_path
            if self._live_lines:
                self._close_live()
                os.replace(self.path, self.replay_path)
                self._replay_lines, self._replay_bytes = self._live_lines, self._live_bytes
                self._live_lines = self._live_bytes = 0
                return self.replay_path
        return None

    def replayed(self, lines: int) -> None:
        """Progress report from the replayer: ``lines`` of the replay file are in the store."""
        with self._lock:
            self._replay_lines = max(0, self._replay_lines - lines)

    def done_replaying(self) -> None:
        with self._lock:
            self.replay_path.unlink(missing_ok=True)
            self._replay_lines = self._replay_bytes = 0


_NAME = re.compile(r"\.(\d+-[0-9a-f]{8})\.jsonl(?:\.replay|\.lock)?$")
"""What follows the prefix in a writer's spill file names (live, ``.replay``, ``.lock``)."""


def spill_files(prefix: str | os.PathLike[str]) -> list[Path]:
    """Base paths (``<prefix>.<pid>-<id>.jsonl``) of every writer's spill files of this prefix.

    Found through any of the three names (live, ``.replay``, ``.lock``): a
    writer that died while replaying may have only a ``.replay`` file left.
    The ``.rejected.jsonl`` file never matches.
    """
    prefix = Path(prefix)
    head = prefix.name
    try:
        names = os.listdir(prefix.parent)
    except FileNotFoundError:
        return []
    match = _NAME.match
    found = {prefix.parent / f"{head}.{m.group(1)}.jsonl"
             for n in names if n.startswith(head) and (m := match(n, len(head)))}
    return sorted(found)


class Adopted:
    """Exclusive hold on an orphaned spill file while it is replayed; ``ok`` is False if someone owns it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = _lock(Path(f"{path}.lock"))
        self.ok = self._fh is not None

    def files(self) -> list[Path]:
        """The orphan's files in replay order: the one it was replaying first, then its live file."""
        replay = self.path.with_name(self.path.name + ".replay")
        return [p for p in (replay, self.path) if p.exists()]

    def finish(self) -> None:
        """Everything is in the store: delete the files, then the lock (while still holding it)."""
        for p in self.files():
            p.unlink()
        Path(f"{self.path}.lock").unlink(missing_ok=True)
        self.release()

    def release(self) -> None:
        if self._fh is not None and not self._fh.closed:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()


@dataclass
class Chunk:
    items: list[SpillItem] = field(default_factory=list)
    bad: list[tuple[int, str, str]] = field(default_factory=list)  # (line number, text, why)
    lines: int = 0  # complete lines consumed (items + bad)
    eof: bool = False  # nothing (complete) follows this chunk
    offset: int = 0  # byte offset just after the chunk
    lineno: int = 0  # line number of the chunk's last line


class SpillReader:
    """Reads a spill file in chunks from a byte offset, so a replay can stop and resume.

    :meth:`read` does not move the offset; :meth:`advance` does, once the
    chunk is safely in the store — a failed commit re-reads the same chunk.
    A torn last line (a crash mid-write; never acknowledged as durable) ends
    the file. A complete line that does not parse is returned in ``bad`` for
    the caller to quarantine instead of blocking the replay forever.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lineno = 0

    def read(self, n: int) -> Chunk:
        chunk = Chunk(offset=self.offset, lineno=self.lineno)
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            while chunk.lines < n:
                raw = fh.readline()
                if not raw or not raw.endswith(b"\n"):
                    chunk.eof = True
                    break
                chunk.offset += len(raw)
                chunk.lineno += 1
                chunk.lines += 1
                try:
                    chunk.items.append(parse_line(raw))
                except InputError as exc:
                    chunk.bad.append((chunk.lineno, raw.decode("utf-8", "replace").rstrip("\n"), str(exc)))
            else:
                chunk.eof = not fh.read(1)
        return chunk

    def advance(self, chunk: Chunk) -> None:
        self.offset, self.lineno = chunk.offset, chunk.lineno


def parse_line(raw: bytes | str) -> SpillItem:
    try:
        obj = jsoncodec.loads(raw)
        kind, row = obj["k"], obj["r"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"spill line does not parse: {exc}") from exc
    if kind not in KINDS or not isinstance(row, dict):
        raise InputError(f"spill line has kind {kind!r} (expected one of {KINDS}) or a row that is not an object")
    return kind, row


def read_spill(path: Path, chunk: int = 2000) -> Iterator[list[SpillItem]]:
    """Chunks of (kind, row) from a spill file. A torn last line is skipped; a bad line raises InputError."""
    reader = SpillReader(path)
    while True:
        c = reader.read(chunk)
        reader.advance(c)
        if c.bad:
            lineno, _, why = c.bad[0]
            raise InputError(f"{path}:{lineno}: {why}")
        if c.items:
            yield c.items
        if c.eof:
            return


__all__ = ["Adopted", "Chunk", "SpillFile", "SpillReader", "parse_line", "read_spill", "spill_files"]
