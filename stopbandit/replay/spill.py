"""A local JSON-lines file that holds events while the database is unreachable.

Lines are ``{"k": "d"|"o", "r": row}`` (decision or outcome), appended in
batches and fsync'd per batch, so a crash loses at most the batch being
written. Replaying is idempotent because the store ignores keys it already has.

Every writer owns its own file, ``<prefix>.<pid>-<id>.jsonl``, and holds an
exclusive ``flock`` on ``<file>.lock`` while it lives: two writers sharing one
file could replay each other's rows out of order (an outcome before its
decision). A file whose lock nobody holds belongs to a process that died; any
writer of the same store adopts and replays such orphans.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from stopbandit.errors import InputError


class SpillFile:
    """Append-only spill with a size bound; thread-safe; owned by one writer."""

    def __init__(self, prefix: str | os.PathLike[str], max_bytes: int = 1 << 30) -> None:
        self.prefix = str(prefix)
        self.path = Path(f"{self.prefix}.{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl")
        self.replay_path = self.path.with_name(self.path.name + ".replay")
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._owner = open(f"{self.path}.lock", "w")  # noqa: SIM115 - held for the writer's lifetime
        fcntl.flock(self._owner, fcntl.LOCK_EX)

    def release(self) -> None:
        """Give up ownership (at close): the lock file goes when nothing is left to replay."""
        if self._owner.closed:
            return
        if not self.has_backlog():
            Path(f"{self.path}.lock").unlink(missing_ok=True)
        fcntl.flock(self._owner, fcntl.LOCK_UN)
        self._owner.close()

    def orphans(self) -> list[Path]:
        """Spill files of this store whose writer is gone (their lock is free)."""
        found = []
        for name in sorted(glob.glob(f"{glob.escape(self.prefix)}.*.jsonl")):
            if Path(name) != self.path:
                found.append(Path(name))
        return found

    def append(self, items: Sequence[tuple[str, Mapping[str, Any]]]) -> int:
        """Append (kind, row) items; returns how many were written (0 when over the size bound)."""
        if not items:
            return 0
        data = "".join(json.dumps({"k": k, "r": r}, separators=(",", ":")) + "\n" for k, r in items)
        blob = data.encode("utf-8")
        with self._lock:
            size = self.path.stat().st_size if self.path.exists() else 0
            if size + len(blob) > self.max_bytes:
                return 0
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
        return len(items)

    def backlog_lines(self) -> int:
        """Events waiting in the spill (both the live file and one being replayed)."""
        n = 0
        for p in (self.replay_path, self.path):
            if p.exists():
                with open(p, "rb") as fh:
                    n += sum(1 for _ in fh)
        return n

    def has_backlog(self) -> bool:
        return any(p.exists() and p.stat().st_size > 0 for p in (self.replay_path, self.path))

    def take_for_replay(self) -> Path | None:
        """Move the live file aside for replay (new appends start a fresh file)."""
        with self._lock:
            if self.replay_path.exists():
                return self.replay_path
            if self.path.exists():
                os.replace(self.path, self.replay_path)
                return self.replay_path
        return None

    def done_replaying(self) -> None:
        with self._lock:
            if self.replay_path.exists():
                self.replay_path.unlink()


class Adopted:
    """Exclusive hold on an orphaned spill file while it is replayed; None if someone owns it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = open(f"{path}.lock", "a")  # noqa: SIM115
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.ok = True
        except BlockingIOError:
            self._fh.close()
            self.ok = False

    def files(self) -> list[Path]:
        """The orphan's files in replay order: the one it was replaying first, then its live file."""
        replay = self.path.with_name(self.path.name + ".replay")
        return [p for p in (replay, self.path) if p.exists()]

    def finish(self) -> None:
        for p in self.files():
            p.unlink()
        Path(f"{self.path}.lock").unlink(missing_ok=True)
        self.release()

    def release(self) -> None:
        if not self._fh.closed:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()


def read_spill(path: Path, chunk: int = 2000) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Chunks of (kind, row) from a spill file. A torn last line (crash mid-write) is skipped."""
    batch: list[tuple[str, dict[str, Any]]] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.endswith("\n"):
                break  # torn tail from a crash; its batch was never acknowledged as durable
            try:
                obj = json.loads(line)
                item = (obj["k"], obj["r"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InputError(f"{path}:{lineno}: spill line does not parse: {exc}") from exc
            batch.append(item)
            if len(batch) >= chunk:
                yield batch
                batch = []
    if batch:
        yield batch


__all__ = ["Adopted", "SpillFile", "read_spill"]
