"""A local file of framed JSON records that holds events while the database is unreachable.

This module owns the files: where they live, who may write and adopt them,
appending with or without fsync, and handing the backlog to the replayer.
The record format and the resumable reader are
:mod:`stopbandit.replay.spill_format`. Every record is one framed line, so a
crash or a full disk mid-write leaves at most a fragment the reader cuts;
after a failed write the file is also truncated back to its last complete
record. Replaying is idempotent because the store ignores keys it already has.

The first record of every file is a header (kind ``h``) naming the store the
rows belong to: the identity that ``stopbandit db upgrade`` writes into that
database (:meth:`stopbandit.replay.store.ReplayStore.identity`), never its
URL. A writer adopts another writer's file only if that header names its own
store and the file belongs to the same user (:func:`foreign`).

Spill files live in a private directory, one per store under
:func:`default_spill_dir` unless configured (:func:`spill_prefix`; mode 0700,
owned by the process's user; :func:`secure_dir` refuses anything else) and
are created mode 0600:
they hold request features, and a planted file would be replayed into the
store.

Two kinds of append (``sync``):

* ``sync=True`` (durable mode, and the default): written and fsync'd before
  ``append`` returns;
* ``sync=False`` (the queued writer): written at once — in the kernel, so a
  killed process loses nothing of it — and fsync'd by the file's syncer thread
  right after. The batch writer never waits for the disk: an fsync can take
  a second on a busy disk, and rows waiting behind it in the writer's memory
  are what a ``kill -9`` during an outage would lose. :meth:`SpillFile.sync`
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
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from stopbandit.errors import ConfigError, InputError
from stopbandit.replay.records import Record
from stopbandit.replay.spill_format import encode, header, read_header

log = logging.getLogger("stopbandit.spill")


def default_spill_dir() -> Path:
    """``$XDG_STATE_HOME/stopbandit/spill``, else ``~/.local/state/stopbandit/spill``: private, kept across reboots."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "stopbandit" / "spill"


def spill_prefix(spill_dir: str | os.PathLike[str] | None, store_id: str | None) -> Path:
    """The file prefix of a writer's spill: ``<spill_dir>/<store identity>/spill``.

    A writer that could not read its store's identity (the store was down at
    start) spills under ``<spill_dir>/unbound/``: it replays that file itself
    once the store answers, but nobody adopts such a file if it dies first.
    """
    return Path(spill_dir or default_spill_dir()) / (store_id or "unbound") / "spill"


def _lock(path: Path) -> IO[str] | None:
    """An exclusive, non-blocking flock on ``path`` (created if needed); None if held or gone.

    After the lock is taken, the path must still name the locked inode: if the
    previous holder unlinked it in between, our lock protects nothing.
    """
    fh = os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600), "a")
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


def secure_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (mode 0700) or check it: a directory owned by this process's user, closed to others.

    ConfigError naming the problem otherwise: a spill directory that another
    user can write to is one where a planted file gets replayed into the store.
    """
    path = Path(path)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"spill directory {str(path)!r} cannot be created: {exc}") from exc
    if not os.path.isdir(path) or os.path.islink(path):
        raise ConfigError(f"spill directory {str(path)!r} is not a directory")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"spill directory {str(path)!r} belongs to uid {st.st_uid}, not to this process's user "
                          f"(uid {os.geteuid()}); set [store] spill_dir to a private directory")
    if st.st_mode & 0o077:
        raise ConfigError(f"spill directory {str(path)!r} has mode {st.st_mode & 0o777:04o}; it must be private "
                          f"(0700: chmod 700 it) or set [store] spill_dir to a private directory")
    return path


def foreign(path: Path, store_id: str | None) -> str | None:
    """Why the spill files at ``path`` (base name) must not be replayed into store ``store_id``; None if they may.

    They may only if every one of them (live, ``.replay``) belongs to this
    process's user and starts with a header naming ``store_id``.
    """
    if store_id is None:
        return "this writer does not know its store's identity yet"
    for p in (path.with_name(path.name + ".replay"), path):
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        except OSError as exc:
            return f"{p}: {exc}"
        if st.st_uid != os.geteuid() or not os.path.isfile(p) or os.path.islink(p):
            return f"{p} is not a regular file of uid {os.geteuid()}"
        head = read_header(p)
        if head is None:
            if st.st_size <= 65536 and b"\n" not in p.read_bytes():
                continue  # empty, or its header cut by a crash: it holds no record, nothing of anyone's to replay
            return f"{p} has no spill header"
        if head.get("store") != store_id:
            return f"{p} belongs to store {head.get('store')!r}, not {store_id!r}"
    return None


def _write_all(fd: int, blob: bytes) -> None:
    view = memoryview(blob)
    while view:
        view = view[os.write(fd, view):]


class _OpenFile:
    """A spill file open for appending, and how much of what was written to it is known fsync'd."""

    __slots__ = ("fd", "size", "written", "synced", "syncing", "dir_dirty", "closed")

    def __init__(self, fd: int, size: int, new: bool) -> None:
        self.fd = fd
        self.size = size  # bytes of complete records in the file
        self.written = self.synced = 0  # bytes written through this descriptor, and of those fsync'd
        self.syncing = 0  # fsyncs in flight (the descriptor is not closed under them)
        self.dir_dirty = new  # created here, its directory entry not yet fsync'd
        self.closed = False

    def clean(self) -> bool:
        return self.synced >= self.written and not self.dir_dirty


class SpillFile:
    """Append-only spill with a size bound; thread-safe; owned by one writer.

    The live file stays open while it receives appends; ``sync=False`` appends
    are fsync'd by a syncer thread (started on the first one) so that the
    appender never waits for the disk. Neither does the replayer: a live file
    taken for replay is renamed at once and its last fsync and close are the
    syncer's (an fsync can take seconds on a busy disk, and rows queued
    behind the writer thread meanwhile are what a ``kill -9`` would lose).
    """

    def __init__(self, prefix: str | os.PathLike[str], max_bytes: int = 1 << 30, store_id: str | None = None) -> None:
        self.prefix = str(prefix)
        self.max_bytes = max_bytes
        self.store_id = store_id  # written into the header of each new file (None: not known yet)
        self._lock = threading.Lock()
        self._synced_cv = threading.Condition(self._lock)
        secure_dir(Path(self.prefix).parent)
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
        self._taken = self._done = 0  # live files moved aside for replay, and replays finished (see replay_target)
        self.max_backlog = 0
        self._live: _OpenFile | None = None  # the open live file
        self._retired: list[_OpenFile] = []  # taken for replay; the syncer fsyncs and closes them
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
            for f in self._open_files():
                self._close(f)
            self._live, self._retired = None, []
            if not self.has_backlog():
                for p in (self.path, self.replay_path):
                    p.unlink(missing_ok=True)
                Path(f"{self.path}.lock").unlink(missing_ok=True)
            fcntl.flock(self._owner, fcntl.LOCK_UN)
            self._owner.close()

    def forget(self) -> None:
        """In a forked child: close the inherited descriptors, keeping the parent's lock and file untouched.

        An ``flock`` belongs to the open file, which parent and child share:
        closing the child's descriptor leaves the parent's lock held, while
        ``LOCK_UN`` (what :meth:`release` does) would drop it.
        """
        self._lock = threading.Lock()
        self._synced_cv = threading.Condition(self._lock)
        for f in self._open_files():
            os.close(f.fd)
        self._live, self._retired = None, []
        self._owner.close()
        self._syncer = None

    def orphans(self) -> list[Path]:
        """Spill files of this store other than ours (whether their writer is alive is up to :class:`Adopted`)."""
        return [p for p in spill_files(self.prefix) if p != self.path]

    def append(self, items: Sequence[Record | tuple[str, Mapping[str, Any]]], *, sync: bool = True) -> int:
        """Append rows (typed, or (kind, row) pairs); returns how many were written (0 when over the size bound).

        ``sync``: fsync'd before returning; otherwise written now and fsync'd by the syncer thread.
        """
        if not items:
            return 0
        blob = encode(items)
        with self._lock:
            if self._live_bytes + self._replay_bytes + len(blob) > self.max_bytes:
                return 0
            f = self._live if self._live is not None else self._open_live()
            if f.size == 0:
                blob = header(self.store_id) + blob
            try:
                _write_all(f.fd, blob)
            except OSError:
                self._cut(f)
                raise
            f.size += len(blob)
            f.written += len(blob)
            self._live_lines += len(items)
            self._live_bytes += len(blob)
            self.max_backlog = max(self.max_backlog, self._live_lines + self._replay_lines)
            if sync:
                target, sync_dir = f.written, f.dir_dirty
                f.dir_dirty = False
                f.syncing += 1
            else:
                self._start_syncer()
                self._synced_cv.notify_all()
        if sync:
            self._fsync(f, target, sync_dir)
        return len(items)

    def _open_live(self) -> _OpenFile:
        """Open (create, mode 0600) the live file; the caller holds the lock."""
        new = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._live = _OpenFile(fd, os.fstat(fd).st_size, new)
        return self._live

    def _cut(self, f: _OpenFile) -> None:
        """After a failed write: truncate the live file back to its last complete record (caller holds the lock).

        A fragment left in place would fuse with the next record written
        once space returns. If even the truncation fails, readers still cut
        the fragment by its frame.
        """
        try:
            os.ftruncate(f.fd, f.size)
        except OSError as exc:
            log.error("cannot cut a torn record off %s: %s", self.path, exc)

    def sync(self, timeout: float | None = None) -> bool:
        """Wait until everything appended so far is fsync'd; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            targets = [(f, f.written) for f in self._open_files()]
            while any(not f.closed and f.synced < target for f, target in targets):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._synced_cv.wait(left)
        return True

    def _fsync(self, f: _OpenFile, target: int, sync_dir: bool) -> None:
        """fsync ``f`` (pinned by ``f.syncing``, so it is not closed meanwhile) outside the lock."""
        ok = False
        try:
            if sync_dir:
                _fsync_dir(self.path.parent)
            os.fsync(f.fd)
            ok = True
        finally:
            with self._lock:
                f.syncing -= 1
                if ok:
                    f.synced = max(f.synced, target)
                elif sync_dir:
                    f.dir_dirty = True
                self._close_retired()
                self._synced_cv.notify_all()

    def _start_syncer(self) -> None:
        if self._syncer is None:
            self._syncer = threading.Thread(target=self._sync_loop, name="stopbandit-spill-sync", daemon=True)
            self._syncer.start()

    def _unsynced(self) -> _OpenFile | None:
        """A file with bytes (or a directory entry) to fsync and no fsync in flight; retired ones first."""
        for f in self._open_files():
            if not f.syncing and not f.clean():
                return f
        return None

    def _open_files(self) -> list[_OpenFile]:
        """The retired files (oldest first), then the live one."""
        return self._retired + [self._live] if self._live is not None else list(self._retired)

    def _sync_loop(self) -> None:
        """fsync the open files whenever they hold unsynced bytes (group fsync: one call covers earlier appends)."""
        while True:
            with self._lock:
                while not self._closing and (f := self._unsynced()) is None:
                    self._synced_cv.wait()
                if self._closing:
                    return
                target, sync_dir = f.written, f.dir_dirty
                f.dir_dirty = False
                f.syncing += 1
            try:
                self._fsync(f, target, sync_dir)
                self.sync_error = None
            except Exception as exc:  # noqa: BLE001 - the syncer must survive: report, retry shortly
                self.sync_error = f"fsync of {self.path}: {exc}"
                log.error("spill %s", self.sync_error)
                time.sleep(0.5)

    def _close_retired(self) -> None:
        """Close the retired files that are fsync'd with no fsync in flight (caller holds the lock)."""
        for f in [f for f in self._retired if not f.syncing and f.clean()]:
            self._retired.remove(f)
            os.close(f.fd)
            f.closed = True

    def _close(self, f: _OpenFile) -> None:
        """fsync and close ``f`` (caller holds the lock; at release); waits for fsyncs in flight."""
        while f.syncing:
            self._synced_cv.wait()
        if f.closed:
            return
        try:
            if not f.clean():
                if f.dir_dirty:
                    _fsync_dir(self.path.parent)
                os.fsync(f.fd)
                f.synced, f.dir_dirty = f.written, False
        finally:
            os.close(f.fd)
            f.closed = True
            self._synced_cv.notify_all()

    def backlog_lines(self) -> int:
        """Events waiting in the spill (both the live file and one being replayed)."""
        return self._live_lines + self._replay_lines

    def has_backlog(self) -> bool:
        return self._live_lines + self._replay_lines > 0

    def take_for_replay(self) -> Path | None:
        """Move the live file aside for replay (new appends start a fresh file) without waiting for the disk.

        The renamed file's descriptor goes to the retired list: the syncer
        fsyncs what it still lacks and closes it, so the rows keep the
        durability their append promised while the caller goes on at once.
        """
        with self._lock:
            if self._replay_lines:
                return self.replay_path
            if self._live_lines:
                if self._live is not None:
                    self._retired.append(self._live)
                    self._live = None
                    self._close_retired()
                    if self._retired:
                        self._start_syncer()
                        self._synced_cv.notify_all()
                os.replace(self.path, self.replay_path)
                self._taken += 1
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
            self._done = self._taken

    def replay_target(self) -> int:
        """A mark that :meth:`replayed_through` passes once every row appended so far has been replayed.

        Files are replayed whole and in order: rows in the live file are done
        when the replay after the next take finishes; rows in the file being
        replayed, when that replay finishes.
        """
        with self._lock:
            return self._taken + (1 if self._live_lines else 0)

    def replayed_through(self, target: int) -> bool:
        return self._done >= target


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
    """Exclusive hold on an orphaned spill file while it is replayed.

    ``ok`` is False if someone owns it, or if it is not ours to replay
    (``why``: another store's, another user's, no header; see :func:`foreign`).
    """

    def __init__(self, path: Path, store_id: str | None = None) -> None:
        self.path = path
        self.why: str | None = None
        self._fh = _lock(Path(f"{path}.lock"))
        if self._fh is not None:
            self.why = foreign(path, store_id)
            if self.why is not None:
                self.release()
        self.ok = self._fh is not None and self.why is None

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


__all__ = ["Adopted", "SpillFile", "default_spill_dir", "foreign", "secure_dir", "spill_files", "spill_prefix"]
