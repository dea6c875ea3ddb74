"""A local JSON-lines file that holds events while the database is unreachable.

Lines are ``{"k": "d"|"o", "r": row}`` (decision or outcome), appended in
batches and fsync'd per batch, so a crash loses at most the batch being
written. Replaying is idempotent because the store ignores keys it already has.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from stopbandit.errors import InputError


class SpillFile:
    """Append-only spill with a size bound; thread-safe."""

    def __init__(self, path: str | os.PathLike[str], max_bytes: int = 1 << 30) -> None:
        self.path = Path(path)
        self.replay_path = self.path.with_name(self.path.name + ".replay")
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

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


__all__ = ["SpillFile", "read_spill"]
