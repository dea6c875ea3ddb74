"""The batch writer's outages and replays: whether the store is up, and its spill backlog and dead writers' files.

Part of :class:`stopbandit.replay.writer.BatchWriter` (its module docstring
says when a replay runs and what a failed step keeps): marking the store up
or down, the probe thread that asks a store believed down, the choice of the next file to replay, one
replay step between batches of new rows, and the outcomes deferred until
their decision arrives. :class:`~stopbandit.replay.writer.BatchWriter` is
the only class that mixes them in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from stopbandit.errors import InputError, StoreError
from stopbandit.replay.engine import redact
from stopbandit.replay.spill import Adopted
from stopbandit.replay.spill_format import Chunk, SpillReader
from stopbandit.replay.validate import check_spilled

# Rows per replay transaction. New rows go to the spill between replay steps, so the rows queued while one
# step runs wait in memory (where a kill -9 loses them) for that step: a step of batch_size (2,000) rows takes
# about a second when serving threads hold the interpreter; 500 keep it a quarter of that.
REPLAY_CHUNK_ROWS = 500

log = logging.getLogger("stopbandit.writer")


class _ReplayJob:
    """Replays one writer's spill files (ours, or an adopted orphan's) a chunk at a time."""

    def __init__(self, files: list[Path], finish: Callable[[], None], abandon: Callable[[], None],
                 progress: Callable[[int], None] | None = None, label: str = "") -> None:
        self.files = files
        self.readers = [SpillReader(p) for p in files]
        self.finish = finish
        self.abandon = abandon
        self.progress = progress  # None for an adopted orphan
        self.label = label

    def peek(self, n: int) -> Chunk | None:
        """The next chunk (the offset moves only on :meth:`advance`); None when all files are done."""
        while self.readers:
            chunk = self.readers[0].read(n)
            if chunk.lines == 0 and chunk.eof:
                self.readers.pop(0)
                continue
            return chunk
        return None

    def advance(self, chunk: Chunk) -> None:
        self.readers[0].advance(chunk)
        if chunk.eof:
            self.readers.pop(0)
        if self.progress is not None:
            self.progress(chunk.lines)

    @property
    def done(self) -> bool:
        return not self.readers

class Replays:
    """The outage state and the replay of spill files into the store (mixed into the batch writer)."""

    def _try_store(self, timeout: float) -> bool:
        """Ask the store now (bounded by ``timeout`` and the call deadline); True if it answers."""
        if self._store_ok:
            return True
        try:
            with self._deadlines.call("probing the store", max(0.05, min(timeout, self.timeout))):
                self.store.ping()
        except StoreError:
            return False
        self._reachable.set()
        self._next_retry = 0.0
        self._wake.set()
        return True

    def _mark_ok(self) -> None:
        if not self._store_ok:
            log.warning("replay store reachable again")
        if self.store_id is None:
            self.store_id = self._read_identity()
            self.spill.store_id = self.store_id  # the header of the spill's next file names the store
        self._store_ok = True
        self._down_since = None

    def _overrun(self, what: str) -> None:
        """Called by the deadline watchdog the moment a database call overruns: the store is down from now."""
        self._mark_down(StoreError(f"{what}: no answer from {redact(self.store.url)} within {self.timeout:g} s"))

    def _mark_down(self, exc: Exception) -> None:
        self._reachable.clear()
        if self._store_ok:
            log.error("replay store unavailable, spilling to %s: %s", self.spill.path, exc)
            self._count("outages", 1)
            self._down_since = time.time()
        self._store_ok = False
        self._last_error = str(exc)
        self._next_retry = time.monotonic() + self.retry_interval

    def _probe_loop(self) -> None:
        """While the store is believed down, ask it every ``retry_interval`` (off the writer thread)."""
        stop = self._stop
        while not stop.wait(self.retry_interval):
            if self._store_ok or self._reachable.is_set():
                continue
            if self._try_store(self.timeout):
                log.info("replay store answers again; replaying the backlog")

    def _replay_due(self) -> bool:
        now = time.monotonic()
        if now < self._next_retry:
            return False
        return (self._job is not None or self.spill.has_backlog() or bool(self._deferred) or self._scan_requested
                or now >= self._next_orphan_scan)

    def _next_job(self) -> _ReplayJob | None:
        if self.spill.has_backlog():
            path = self.spill.take_for_replay()
            if path is not None:
                return _ReplayJob([path], self.spill.done_replaying, _nothing, self.spill.replayed, "own")
        if time.monotonic() < self._next_orphan_scan and not self._scan_requested:
            return None
        self._next_orphan_scan = time.monotonic() + self.orphan_scan_interval
        for path in self.spill.orphans():
            held = Adopted(path, self.store_id)
            if held.why is not None:
                if path not in self._refused_orphans:
                    self._refused_orphans.add(path)
                    log.error("not adopting spill file %s: %s", path, held.why)
                continue
            if not held.ok:
                continue  # a live writer owns it (or another writer is adopting it)
            files = held.files()
            if not files:
                held.finish()  # only a lock file, left by a writer that died with nothing to replay
                continue
            log.warning("adopting orphaned spill file %s", path)
            return _ReplayJob(files, held.finish, held.release, None, str(path))
        self._scan_requested = False
        return None

    def _replay_step(self) -> None:
        """Replay one chunk of the current job (starting one if there is a backlog or an orphan)."""
        if time.monotonic() < self._next_retry:
            return
        if self._held:  # the disk refused earlier: try it again (rows keep their order behind the spill)
            self._to_spill([])
        if not self._store_ok and not self._reachable.is_set():
            # the probe thread asks the store; the writer thread never waits on a database that is down
            self._next_retry = time.monotonic() + self.retry_interval
            return
        try:
            if self._job is None:
                self._job = self._next_job()
            if self._job is None:
                if self._held and not self.spill.has_backlog():
                    self._commit_held()
                elif self._deferred:
                    self._reject_deferred()
                return
            job = self._job
            chunk = job.peek(min(self.batch_size, REPLAY_CHUNK_ROWS))
            if chunk is not None:
                items = []
                for item in chunk.items:
                    try:
                        check_spilled(item.kind, item.row)  # type: ignore[arg-type]
                        items.append(item)
                    except InputError as exc:
                        self._reject(item.kind, item.row, f"invalid spilled row: {exc}")
                if items:
                    n = self._commit(items, replay=True)
                    self._count("written", n)
                    self._count("replayed", n)
                    self._mark_ok()
                for lineno, text, why in chunk.bad:
                    self._reject("?", {"line": text, "file": str(job.readers[0].path), "lineno": lineno}, why)
                job.advance(chunk)
            if job.done:
                if self._deferred:  # settled before the file goes: stored, rejected, or in our own spill
                    self._retry_deferred()
                self._job = None
                job.finish()
                if job.progress is None:
                    self._count("adopted_files", 1)
                    log.warning("replayed orphaned spill file %s", job.label)
        except StoreError as exc:
            self._mark_down(exc)
        except FileNotFoundError as exc:  # the file was deleted under us: what it held is gone; say so
            log.error("spill file vanished during its replay: %s", exc)
            self._count("replay_errors", 1)
            self._last_error = f"spill replay: {exc}"
            if self._job is not None:
                if self._job.progress is not None:
                    self.spill.done_replaying()
                else:
                    self._job.abandon()
                self._job = None
        except OSError as exc:  # the local disk failed (full, I/O error): keep the file, retry later
            log.error("spill replay step failed, file kept for a retry: %s", exc)
            self._count("replay_errors", 1)
            self._last_error = f"spill replay: {exc}"
            self._next_retry = time.monotonic() + self.retry_interval

    def _commit_held(self) -> None:
        """Store rows held in memory (their spill was refused) once the spill's backlog is replayed."""
        with self._held_lock:
            chunk, self._held = self._held[:self.batch_size], self._held[self.batch_size:]
        try:
            n = self._commit(chunk, replay=True)
        except StoreError:
            with self._held_lock:
                self._held = chunk + self._held
            raise
        self._count("written", n)
        self._count("replayed", n)
        self._mark_ok()

    def _retry_deferred(self) -> None:
        """Settle deferred outcomes before the file they came from is removed.

        Each is stored if its decision has arrived; else, with no backlog
        left that could hold the decision, rejected; else moved to our own
        spill (replayed after the backlog). A failure keeps them deferred and
        raises, so the file stays.
        """
        deferred, self._deferred = self._deferred, []
        try:
            n = self._commit(deferred, replay=True)
        except (StoreError, OSError):
            self._deferred = deferred
            raise
        self._count("written", n)
        self._count("replayed", n)
        if not self._deferred:
            return
        if not self.spill.has_backlog():
            self._reject_deferred()
            return
        moving, self._deferred = self._deferred, []
        if not self._to_spill(moving, sync=True):
            with self._held_lock:  # held in memory, not on disk: keep them deferred (and the file) instead
                self._held = [x for x in self._held if not any(x is m for m in moving)]
            self._deferred = moving
            raise OSError("the spill's disk refused the deferred outcomes")


def _nothing() -> None:
    return None
