"""Background batch writer for the serving path (group commit).

``submit_*`` never blocks and never raises because of the database: rows go
to a bounded queue; one thread drains it and commits whole batches in one
transaction. When the database is down, batches go to a :class:`SpillFile`
and are replayed, idempotently, once it answers again. When the queue is full
the caller's row goes straight to the spill. Nothing is dropped silently:
every row ends up in the database, the spill file, or the ``rejected`` file
(rows the database refuses, e.g. an outcome whose decision never existed),
and each path is counted in :meth:`BatchWriter.health`.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from stopbandit.errors import StoreError
from stopbandit.replay.spill import Adopted, SpillFile, read_spill
from stopbandit.replay.store import ReplayStore

log = logging.getLogger("stopbandit.writer")

Item = tuple[str, Mapping[str, Any]]  # ("d", decision row) | ("o", outcome row)


@dataclass(frozen=True, slots=True)
class WriterHealth:
    store_ok: bool
    last_error: str | None
    queue_depth: int
    spill_backlog: int
    written: int
    spilled: int
    rejected: int
    dropped: int
    write_lag_s: float


def default_spill_path(url: str) -> Path:
    """Spill-file prefix: next to a SQLite database, else in the temp dir, named after the URL.

    Each writer appends ``.<pid>-<id>.jsonl`` to it (see :class:`SpillFile`).
    """
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url[len("sqlite:///"):] + ".spill")
    safe = "".join(c if c.isalnum() else "_" for c in url.split("@")[-1])[:80]
    return Path(tempfile.gettempdir()) / f"stopbandit-{safe}.spill"


class BatchWriter:
    """Group-commit writer: bounded queue → batches → one transaction each."""

    def __init__(
        self,
        store: ReplayStore,
        *,
        max_queue: int = 50_000,
        batch_size: int = 2_000,
        flush_interval: float = 0.05,
        spill_path: str | os.PathLike[str] | None = None,
        max_spill_bytes: int = 1 << 30,
        retry_interval: float = 0.5,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retry_interval = retry_interval
        self.spill = SpillFile(spill_path or default_spill_path(store.url), max_spill_bytes)
        self.rejected_path = Path(f"{self.spill.prefix}.rejected.jsonl")
        self._q: queue.Queue[Item] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._busy = 0
        self._store_ok = True
        self._last_error: str | None = None
        self._next_retry = 0.0
        self._next_orphan_scan = 0.0
        self._oldest_pending = 0.0
        self.written = self.spilled = self.rejected = self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="stopbandit-writer", daemon=True)
        self._thread.start()

    # -- producer side (serving threads) ---------------------------------------
    def submit_decision(self, row: Mapping[str, Any]) -> None:
        self._submit(("d", row))

    def submit_outcome(self, row: Mapping[str, Any]) -> None:
        self._submit(("o", row))

    def _submit(self, item: Item) -> None:
        try:
            self._q.put_nowait(item)
        except queue.Full:
            self._to_spill([item])

    # -- control ----------------------------------------------------------------
    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything submitted so far is in the database or the spill."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._q.unfinished_tasks or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(0.05 if left is None else min(left, 0.05))
        return True

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
        self._stop.set()
        self._thread.join(timeout)
        self.spill.release()

    def health(self) -> WriterHealth:
        lag = time.time() - self._oldest_pending if self._oldest_pending else 0.0
        return WriterHealth(
            store_ok=self._store_ok,
            last_error=self._last_error,
            queue_depth=self._q.qsize(),
            spill_backlog=self.spill.backlog_lines() if self.spill.has_backlog() else 0,
            written=self.written,
            spilled=self.spilled,
            rejected=self.rejected,
            dropped=self.dropped,
            write_lag_s=lag,
        )

    # -- consumer side ------------------------------------------------------------
    def _run(self) -> None:
        while not (self._stop.is_set() and self._q.empty()):
            try:
                first = self._q.get(timeout=self.flush_interval)
            except queue.Empty:
                self._maybe_replay()
                continue
            batch = [first]
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            with self._idle:
                self._busy += 1
            self._oldest_pending = time.time()
            try:
                self._maybe_replay()
                self._write(batch)
            except Exception as exc:  # the writer thread must survive anything
                log.exception("writer batch failed; spilling it")
                self._last_error = repr(exc)
                self._to_spill(batch)
            finally:
                self._oldest_pending = 0.0
                for _ in batch:
                    self._q.task_done()
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def _write(self, batch: Sequence[Item]) -> None:
        if self.spill.has_backlog():
            self._to_spill(batch)  # keep order: the backlog goes in first
            return
        try:
            self._commit(batch)
            self.written += len(batch)
            self._mark_ok()
        except StoreError as exc:
            self._mark_down(exc)
            self._to_spill(batch)

    def _commit(self, batch: Sequence[Item]) -> None:
        decisions = [r for k, r in batch if k == "d"]
        outcomes = [r for k, r in batch if k == "o"]
        try:
            self.store.write_batch(decisions, outcomes)
        except IntegrityError:
            self._commit_one_by_one(batch)
        except SQLAlchemyError as exc:
            raise StoreError(f"write failed: {exc}") from exc

    def _commit_one_by_one(self, batch: Sequence[Item]) -> None:
        for kind, row in batch:
            try:
                self.store.write_batch([row] if kind == "d" else [], [row] if kind == "o" else [])
            except IntegrityError as exc:
                self._reject(kind, row, str(exc.orig))

    def _reject(self, kind: str, row: Mapping[str, Any], why: str) -> None:
        self.rejected += 1
        log.error("store refused a %s row (kept in %s): %s", kind, self.rejected_path, why)
        with open(self.rejected_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"k": kind, "r": row, "error": why}) + "\n")

    def _to_spill(self, batch: Sequence[Item]) -> None:
        n = self.spill.append(batch)
        self.spilled += n
        if n < len(batch):
            self.dropped += len(batch) - n
            log.error("spill file %s is full: %d events dropped", self.spill.path, len(batch) - n)

    def _mark_ok(self) -> None:
        if not self._store_ok:
            log.warning("replay store reachable again")
        self._store_ok = True

    def _mark_down(self, exc: Exception) -> None:
        if self._store_ok:
            log.error("replay store unavailable, spilling to %s: %s", self.spill.path, exc)
        self._store_ok = False
        self._last_error = str(exc)
        self._next_retry = time.monotonic() + self.retry_interval

    def _maybe_replay(self) -> None:
        """Replay the spill (ours, then orphans of dead writers) if there is one and it is time to try."""
        if time.monotonic() < self._next_retry:
            return
        if time.monotonic() >= self._next_orphan_scan:
            self._next_orphan_scan = time.monotonic() + 5.0
            self._adopt_orphans()
        if not self.spill.has_backlog():
            return
        path = self.spill.take_for_replay()
        if path is None:
            return
        try:
            for chunk in read_spill(path, self.batch_size):
                self._commit(chunk)
                self.written += len(chunk)
            self.spill.done_replaying()
            self._mark_ok()
            if self.spill.path.exists():  # appended while replaying (queue overflow)
                self._next_retry = 0.0
        except StoreError as exc:
            self._mark_down(exc)

    def _adopt_orphans(self) -> None:
        for path in self.spill.orphans():
            held = Adopted(path)
            if not held.ok:
                continue  # a live writer owns it
            try:
                for part in held.files():
                    for chunk in read_spill(part, self.batch_size):
                        self._commit(chunk)
                        self.written += len(chunk)
                held.finish()
                log.warning("replayed orphaned spill file %s", path)
            except StoreError as exc:
                held.release()
                self._mark_down(exc)
                return


__all__ = ["BatchWriter", "WriterHealth", "default_spill_path"]
