"""Background batch writer for the serving path (group commit), with a spill for outages.

``submit_*`` never blocks and never raises because of the database: rows go
to a bounded queue; one thread drains it and commits whole batches in one
transaction. When the database is down, batches go to a :class:`SpillFile`
and are replayed, idempotently, once it answers again. When the queue is full
the caller's row goes straight to the spill. Nothing is dropped silently:
every row ends up in the database, the spill file, or the ``rejected`` file,
and each path is counted in :meth:`BatchWriter.health`.

One concept in one module, longer than the others on purpose: the queue, the
batch transaction, the outage state machine, the spill replay and the
conflict handling share one queue, one lock and one notion of "the store is
up", and each failure class below is handled across all of them; split, the
state would have to be passed around and the invariants (nothing dropped,
nothing twice) would no longer be readable in one place.

Failure classes (what a database error means decides what happens to the rows):

* the database is unreachable or unusable as a whole (``OperationalError``,
  ``InterfaceError``, a missing table, ...): the batch is spilled and the
  writer retries every ``retry_interval`` seconds; while a backlog exists every
  new batch is spilled too, so rows reach the database in the order they were
  accepted;
* a row is refused (``IntegrityError``: an outcome whose decision does not
  exist; ``DataError``: a value the column cannot hold): the batch is retried
  row by row and only the refused rows go to ``<prefix>.rejected.jsonl`` with
  the database's reason. One poison row never takes the store "down".
  During a replay an outcome refused for a missing decision is kept aside and
  retried once the rest of the backlog is in (a queue overflow can spill an
  outcome before its decision), and rejected only if its decision never comes.

Replays go one chunk at a time between batches of new rows, so a long backlog
never stalls the queue (which would push the serving threads onto the spill).
Crashed writers' spill files are adopted and replayed the same way, but only
files that name this writer's store (its identity, see
:mod:`stopbandit.replay.spill`) and belong to this user. Replayed rows are
validated like live ones first (:func:`stopbandit.replay.validate.check_spilled`);
a row that fails goes to the rejected file with the reason. A spill file is
removed only once every row in it is stored or recorded as rejected: a replay
step that fails on the local disk keeps the file and is retried (counted in
``replay_errors``).

Every database call runs under a deadline (``timeout``,
:mod:`stopbandit.replay.deadline`): one that overruns marks the store down at
once (``health().store_ok`` is False while it hangs), is cut off, and its rows
go to the spill. While the store is down the writer thread never calls the
database; a probe thread tries it every ``retry_interval``. If the local disk
refuses the spill too (full), rows are held in memory (at most ``max_queue``;
``unspilled`` in the health) and written to the spill or the store as soon
as either takes them; only beyond that bound are rows dropped (counted).

A row whose request key the store already holds for a different row (another
process, a restart reusing ids) is not stored: it is counted in
``conflicts``, logged with the stored row, kept in the rejected file, and the
outcomes logged for it afterwards are refused the same way.

After ``fork()`` the child gets a writer of its own, on first use: its own
thread and its own spill file; the parent's queue, file and lock stay the
parent's (:func:`_after_fork_in_child`).

``write_now`` is the durable path (``Selector.open(..., durable=True)``): the
row is committed (waiting at most ``timeout``), or fsync'd to the spill,
before it returns; it says which (``"stored"``, ``"spilled"``, or ``"held"``
when the disk refused too and the row is only in memory). While the store
is down or a backlog is being replayed it goes to the spill without trying the
database (a circuit breaker: no connect timeout per request, and the order is
kept).

Cost on the serving path: ``submit`` is a deque append (no lock, no
notify; the writer thread is woken only when it sleeps), because every lock
and wake-up per row is paid by the serving thread and, through the GIL, by
everything else in the process. :meth:`BatchWriter.flush` stays exact with a
marker queued behind the caller's rows. The writer commits a group at most
every ``linger`` seconds (a small fraction of ``flush_interval``) while rows
keep coming, so a busy writer makes a few large transactions instead of many
one-row ones. In the queued mode the spill is written at once and fsync'd off
the writer thread (see :mod:`stopbandit.replay.spill`): during an outage
every row reaches the spill file within the flush window, however slow the
disk's fsync is.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from stopbandit.errors import InputError, StoreError
from stopbandit.replay import migrate
from stopbandit.replay.engine import redact
from stopbandit.replay.jsoncodec import NotJSONError
from stopbandit.replay.spill import Adopted, Chunk, SpillFile, SpillReader, encode, read_spill
from stopbandit.replay.rows import DecisionRow, LateRow, OutcomeRow, Row, typed
from stopbandit.replay.store import Conflict, ReplayStore
from stopbandit.replay.validate import check_spilled

log = logging.getLogger("stopbandit.writer")

Item = Row  # DecisionRow | OutcomeRow | LateRow (a late outcome over a defaulted one)
MAX_DEFERRED = 100_000
MAX_LINGER_S = 0.01  # longest wait for a group to fill (see BatchWriter.linger)
MAX_CONFLICT_KEYS = 100_000  # request keys found in conflict, remembered to refuse their outcomes
DEFAULT_TIMEOUT_S = 5.0


class _Marker:
    """Queued by :meth:`BatchWriter.flush` behind the caller's rows; set once every row before it is done."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


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
    outages: int = 0  # transitions from up to down
    down_since: float | None = None  # wall-clock time the current outage began
    replayed: int = 0  # rows written from spill files (ours and adopted orphans)
    max_spill_backlog: int = 0  # the largest backlog of our own spill file so far
    adopted_files: int = 0  # orphaned spill files of dead writers replayed
    conflicts: int = 0  # rows refused because their key is stored for a different row (also in rejected)
    unspilled: int = 0  # rows held in memory because the spill's disk refused them (written once it takes them)
    replay_errors: int = 0  # replay steps that failed on the local disk (the file is kept and retried)


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


class BatchWriter:
    """Group-commit writer: bounded queue → batches → one transaction each; spill when the store is down."""

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
        orphan_scan_interval: float = 5.0,
        timeout: float | None = None,
        spill_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retry_interval = retry_interval
        self.orphan_scan_interval = orphan_scan_interval
        self.max_queue = max_queue
        # the longest database call: the store's own statement timeout if it has one
        self.timeout = timeout or store.timeout or DEFAULT_TIMEOUT_S
        # group commit: while rows keep coming, wait this long for a group to fill (well inside the flush window)
        self.linger = min(MAX_LINGER_S, flush_interval / 5)
        self._deadlines = store.deadlines
        self._deadlines.on_overrun.append(self._overrun)
        self.store_id = self._read_identity()
        self._spill_path, self._spill_dir, self._max_spill_bytes = spill_path, spill_dir, max_spill_bytes
        self.spill = self._new_spill()
        self.rejected_path = Path(f"{self.spill.prefix}.rejected.jsonl")
        self._init_state()
        self._start_threads()
        atexit.register(_close_at_exit, weakref.ref(self))
        _WRITERS.add(self)

    def _new_spill(self) -> SpillFile:
        prefix = self._spill_path or spill_prefix(self._spill_dir, self.store_id)
        return SpillFile(prefix, self._max_spill_bytes, self.store_id)

    def _read_identity(self) -> str | None:
        """The store's identity, or None while it cannot be read (learnt later, when the store answers)."""
        try:
            with self._deadlines.call("reading the store identity", self.timeout):
                return self.store.identity()
        except StoreError as exc:
            log.warning("store identity unknown (%s): spilling unbound until the store answers", exc)
            return None

    def _init_state(self) -> None:
        """Everything that belongs to one process's writer (rebuilt in a forked child)."""
        # the queue: appends and pops of a deque are atomic, so producers take no lock (see submit)
        self._q: deque[Item | _Marker] = deque()
        self._wake = threading.Event()  # set by a producer only while the writer sleeps, and by flush/close
        self._sleeping = False
        self._flushes = 0  # flush() calls waiting: the writer does not linger meanwhile
        self._stop = threading.Event()
        self._direct_lock = threading.Lock()  # held by a producer spilling an overflow row (flush waits for it)
        self._busy = 0  # batches in progress (only the writer thread changes it)
        self._last_commit = 0.0
        self._count_lock = threading.Lock()
        self._reject_lock = threading.Lock()
        self._held_lock = threading.Lock()
        self._held: list[Item] = []  # rows the spill's disk refused, oldest first (see _to_spill)
        self._store_ok = True
        self._reachable = threading.Event()  # set by the probe: the store answered while we believed it down
        self._last_error: str | None = None
        self._down_since: float | None = None
        self._next_retry = 0.0
        self._next_orphan_scan = 0.0
        self._scan_requested = False
        self._oldest_pending = 0.0
        self._inflight: Sequence[Item] = ()  # the batch the writer thread is writing now
        self._job: _ReplayJob | None = None
        self._deferred: list[Item] = []
        self._conflict_keys: dict[str, None] = {}  # insertion-ordered, bounded by MAX_CONFLICT_KEYS
        self._refused_orphans: set[Path] = set()  # spill files found that are not ours to replay (logged once)
        self.written = self.spilled = self.rejected = self.dropped = 0
        self.replayed = self.outages = self.adopted_files = 0
        self.conflicts = self.replay_errors = 0

    def _start_threads(self) -> None:
        self._thread = threading.Thread(target=self._run, name="stopbandit-writer", daemon=True)
        self._thread.start()
        self._prober = threading.Thread(target=self._probe_loop, name="stopbandit-probe", daemon=True)
        self._prober.start()

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's queue, threads, spill file and lock; start afresh on first use.

        The parent's lock is not released (an ``flock`` is shared with the
        parent through the inherited descriptor: unlocking it here would
        unlock the parent's file); the child's descriptors are closed.
        """
        self.spill.forget()
        self.store.engine.dispose(close=False)  # the parent's pooled connections stay the parent's
        self._init_state()
        self._forked = True
        self._submit = self._submit_in_child  # type: ignore[method-assign]

    def _start_in_child(self) -> None:
        with _FORK_LOCK:
            if not getattr(self, "_forked", False):
                return
            self._deadlines.after_fork()
            self.spill = self._new_spill()
            self._start_threads()
            self._forked = False
            del self._submit  # back to the class's method

    def _submit_in_child(self, item: Item) -> None:
        self._start_in_child()
        self._submit(item)

    # -- producer side (serving threads) ---------------------------------------
    def submit_decision(self, row: Mapping[str, Any]) -> None:
        self._submit(DecisionRow(row))

    def submit_outcome(self, row: Mapping[str, Any]) -> None:
        self._submit(OutcomeRow(row))

    def submit_late(self, row: Mapping[str, Any]) -> None:
        """A late reward for a decision whose window closed with a default: replaces that outcome, status ``late``."""
        self._submit(LateRow(row))

    def submit(self, kind: str, row: Mapping[str, Any]) -> None:
        """Queue a row by its kind (``"d"``, ``"o"`` or ``"l"``, :mod:`stopbandit.replay.rows`)."""
        self._submit(typed(kind, row))

    def _submit(self, item: Item) -> None:
        """Queue one row: a deque append, and a wake-up only if the writer is asleep.

        The bound is checked without a lock, so concurrent producers can overshoot
        ``max_queue`` by at most one row each. A row over the bound, or arriving
        while the writer closes (its thread may be gone; the next writer adopts
        the spill), goes to the spill from the caller's thread.
        """
        q = self._q
        if len(q) >= self.max_queue or self._stop.is_set():
            self._spill_direct(item)
            return
        q.append(item)
        if self._sleeping:
            self._wake.set()

    def _spill_direct(self, item: Item) -> None:
        with self._direct_lock:
            self._to_spill([item])

    def write_now(self, kind: str, row: Mapping[str, Any]) -> str:
        """Durable write: ``"stored"`` (committed within ``timeout``) or ``"spilled"`` (fsync'd) before returning.

        ``"held"`` when neither took it (the store is down or hung and the
        spill's disk refused): the row is only in memory, written as soon as
        either takes it. Never raises because of the database; a row it
        refuses goes to the rejected file.
        """
        if getattr(self, "_forked", False):
            self._start_in_child()
        item = typed(kind, row)
        if self._store_ok and not self._backlog():
            try:
                self._count("written", self._commit([item]))
                return "stored"
            except StoreError as exc:
                self._mark_down(exc)
        return "spilled" if self._to_spill([item], sync=True) else "held"

    def is_conflict(self, key: str) -> bool:
        """True if a decision logged under ``key`` was refused because the store holds another one with that key."""
        return key in self._conflict_keys

    # -- control ----------------------------------------------------------------
    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything submitted before this call is in the database or the (fsync'd) spill.

        Exact, and it returns under continuous traffic: a marker is queued
        behind the rows submitted before the call (the queue is FIFO) and the
        writer sets it once the batch holding them is committed or spilled;
        rows submitted meanwhile are not waited for. An overflow row being
        spilled by another thread at the time of the call is waited for too.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if getattr(self, "_forked", False) or not self._thread.is_alive():
            return not any(not isinstance(x, _Marker) for x in list(self._q))
        marker = _Marker()
        with self._count_lock:
            self._flushes += 1
        self._q.append(marker)  # behind every row submitted before this call (the queue is FIFO)
        try:
            self._wake.set()
            while not marker.done.wait(0.05):
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                if not self._thread.is_alive():
                    return marker.done.is_set()
        finally:
            with self._count_lock:
                self._flushes -= 1
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._direct_lock.acquire(timeout=-1 if left is None else left):  # an overflow row being spilled
            return False
        self._direct_lock.release()
        return self.spill.sync(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until everything submitted so far is in the database: queue empty and spill replayed.

        Also looks for orphaned spill files of dead writers at once and replays
        them. False if that did not happen within ``timeout`` (the store is down).
        """
        deadline = time.monotonic() + timeout
        if not self.flush(timeout):
            return False
        self._try_store(max(0.0, deadline - time.monotonic()))
        self._scan_requested = True
        self._next_retry = 0.0
        self._wake.set()  # a sleeping writer starts the scan now, not at the end of its nap
        while time.monotonic() < deadline:
            if not (self._backlog() or self._deferred or self._scan_requested or self._busy):
                return True
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then replay what is left if the store answers (tried now, whatever the writer believed); stop.

        Everything happens within ``timeout``. A backlog left over stays in
        the spill for the next writer of the store to adopt. If the writer
        thread is stuck in a database call, the rows it holds and the queue
        go to the spill from here.
        """
        if self._stop.is_set():
            return
        if getattr(self, "_forked", False):  # a forked child that never used its writer: nothing of its own
            self._stop.set()
            return
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        if self._backlog() or self._deferred:
            self._try_store(max(0.0, deadline - time.monotonic()))
            if self._store_ok or self._reachable.is_set():
                self.drain(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():  # stuck in a database call: cut it off, give it a moment, then spill here
            self._deadlines.cut()
            self._thread.join(min(2.0, self.timeout))
        markers: list[_Marker] = []
        if self._thread.is_alive():
            log.error("batch writer did not stop within %.0f s; spilling its queue and the batch in flight", timeout)
            stuck = list(self._inflight)
            with self._direct_lock:
                self._to_spill(stuck + self._take(len(self._q), markers), sync=True)
            _set_all(markers)
            self.spill.release()
            return
        leftover = self._take(len(self._q), markers)  # rows of a producer that raced with the stop
        if leftover:
            self._to_spill(leftover, sync=True)
        _set_all(markers)
        if self._job is not None:
            self._job.abandon()
            self._job = None
        if self._deferred:
            if self._store_ok and not self.spill.has_backlog() and not self._held:
                try:
                    self._reject_deferred()
                except StoreError:
                    pass
            if self._deferred:  # store down: keep them for whoever adopts the backlog
                self._to_spill(self._deferred, sync=True)
                self._deferred = []
        if self._held:
            self._to_spill([], sync=True)
        if self._held:
            log.error("%d rows could be written neither to the store nor to the spill (%s) and are lost at exit",
                      len(self._held), self.spill.path)
            self._count("dropped", len(self._held))
            self._held = []
        self.spill.release()

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

    def health(self) -> WriterHealth:
        """Counters and state; ``store_ok`` is False during an outage and while a database call is past its deadline."""
        lag = time.time() - self._oldest_pending if self._oldest_pending else 0.0
        hung = self._deadlines.overdue()
        return WriterHealth(
            store_ok=self._store_ok and hung is None,
            last_error=self._last_error,
            queue_depth=len(self._q),
            spill_backlog=self.spill.backlog_lines(),
            written=self.written,
            spilled=self.spilled,
            rejected=self.rejected,
            dropped=self.dropped,
            write_lag_s=lag,
            outages=self.outages,
            down_since=self._down_since,
            replayed=self.replayed,
            max_spill_backlog=self.spill.max_backlog,
            adopted_files=self.adopted_files,
            conflicts=self.conflicts,
            unspilled=len(self._held),
            replay_errors=self.replay_errors,
        )

    # -- consumer side ------------------------------------------------------------
    def _backlog(self) -> bool:
        return self.spill.has_backlog() or self._job is not None or bool(self._held)

    def _run(self) -> None:
        while True:
            replay_due = self._replay_due()
            if not self._q:
                if self._stop.is_set():
                    return
                if not replay_due:
                    self._sleep(self.flush_interval)
            processed = False
            if self._q:
                if not replay_due:
                    self._linger()
                processed = self._process()
            if replay_due or not processed:
                try:
                    self._replay_step()
                except Exception as exc:  # noqa: BLE001 - the writer thread must survive anything
                    log.exception("spill replay step failed")
                    self._last_error = f"spill replay: {exc!r}"
                    self._next_retry = time.monotonic() + self.retry_interval

    def _sleep(self, seconds: float) -> None:
        """Wait for rows (a producer wakes us), a flush or close, or ``seconds``."""
        self._sleeping = True
        try:
            if not self._q:  # re-checked after announcing the sleep: a row queued before that is seen here
                self._wake.wait(seconds)
        finally:
            self._sleeping = False
            self._wake.clear()

    def _linger(self) -> None:
        """Group commit: wait up to ``linger`` after the last commit for a group to fill.

        Not while a flush waits, the store is down or spilling (rows go to the
        spill at once), or a full batch is already queued.
        """
        if self._flushes or not self._store_ok or self._backlog() or len(self._q) >= self.batch_size:
            return
        left = self._last_commit + self.linger - time.monotonic()
        if left > 0:
            self._wake.wait(left)
            self._wake.clear()

    def _take(self, n: int, markers: list[_Marker]) -> list[Item]:
        """Pop up to ``n`` rows from the queue (markers met on the way go to ``markers``)."""
        q = self._q
        batch: list[Item] = []
        popleft = q.popleft
        while len(batch) < n:
            try:
                item = popleft()
            except IndexError:
                break
            if type(item) is _Marker:
                markers.append(item)
            else:
                batch.append(item)  # type: ignore[arg-type]
        return batch

    def _process(self) -> bool:
        """Write the next batch (spill it if the store is down); False if only markers were queued.

        While rows go to the spill, the whole queue is taken (in ``batch_size``
        chunks): spilling is a write, not a transaction, and a row left in
        memory is a row a crash would lose.
        """
        markers: list[_Marker] = []
        queued = len(self._q)  # spilling takes at most what is queued now: then a replay step may run
        batch = self._take(self.batch_size, markers)
        had_rows, taken = bool(batch), len(batch)
        self._busy += 1
        self._oldest_pending = time.time()
        self._inflight = batch
        try:
            try:
                if batch:
                    self._write(batch)
                while batch and (not self._store_ok or self._backlog()) and taken < queued:
                    _set_all(markers)  # every row before them is in the spill
                    batch = self._take(min(self.batch_size, queued - taken), markers)
                    taken += len(batch)
                    if batch:
                        self._to_spill(batch)
            except Exception as exc:  # noqa: BLE001 - the writer thread must survive anything
                log.exception("writer batch failed; spilling it")
                self._last_error = repr(exc)
                self._to_spill(batch)
        finally:
            self._inflight = ()
            self._oldest_pending = 0.0
            self._last_commit = time.monotonic()
            self._busy -= 1
            _set_all(markers)
        return had_rows

    def _write(self, batch: Sequence[Item]) -> None:
        if self._backlog() or not self._store_ok:
            self._to_spill(batch)  # keep order: the backlog goes in first; down: no connect attempt per batch
            return
        try:
            self._count("written", self._commit(batch))
            self._mark_ok()
        except StoreError as exc:
            self._mark_down(exc)
            self._to_spill(batch)

    def _commit(self, batch: Sequence[Item], *, replay: bool = False) -> int:
        """Commit the batch in one transaction, or row by row if a row is refused; returns rows written.

        Raises StoreError (nothing of the batch is known to be refused) when the store is down.
        """
        try:
            self._transaction(batch)
            return len(batch)
        except Exception as exc:  # noqa: BLE001 - classified below
            self._raise_if_down(exc)
        return self._commit_one_by_one(batch, replay=replay)

    def _commit_one_by_one(self, batch: Sequence[Item], *, replay: bool) -> int:
        written = 0
        for item in batch:
            try:
                self._transaction([item])
                written += 1
            except Exception as exc:  # noqa: BLE001 - classified below
                self._raise_if_down(exc)
                missing = isinstance(exc, IntegrityError) and type(item) is not DecisionRow
                if missing and replay and len(self._deferred) < MAX_DEFERRED:
                    self._deferred.append(item)
                else:
                    self._reject(item.kind, item.row, _reason(exc))
        return written

    def _raise_if_down(self, exc: BaseException) -> None:
        """Raise StoreError if ``exc`` means the store is unavailable; return if it is about the rows.

        Connection-level errors (StoreError from the store) are outages; a row
        the database refuses (IntegrityError, DataError) is not. Anything else
        is decided by asking the database: if it answers and its schema is at
        head, the rows are the problem — so a poison row can never keep the
        writer "down" and spilling forever.
        """
        if isinstance(exc, StoreError):
            raise exc
        if isinstance(exc, (IntegrityError, DataError)):
            return
        try:
            with self._deadlines.call("checking the store", self.timeout):
                self.store.ping()
                migrate.require_head(self.store.engine)
        except StoreError as down:
            raise down from exc
        except SQLAlchemyError as down:
            raise StoreError(f"write to {redact(self.store.url)} failed: {_reason(down)}") from exc

    def _transaction(self, batch: Sequence[Item]) -> None:
        """Write one batch in one transaction, under the call deadline; conflicts found are recorded, not raised."""
        decisions = [i.row for i in batch if type(i) is DecisionRow]
        outcomes = [i.row for i in batch if type(i) is OutcomeRow]
        late = [i.row for i in batch if type(i) is LateRow]
        refused: list[Conflict] = []
        if self._conflict_keys and outcomes:
            keys = self._conflict_keys
            refused = [Conflict("o", r["decision_key"], r, None, "its decision conflicts with a stored one")
                       for r in outcomes if r.get("decision_key") in keys]
            outcomes = [r for r in outcomes if r.get("decision_key") not in keys]
        with self._deadlines.call(f"writing {len(batch)} rows", self.timeout):
            if decisions or outcomes or late:
                refused += self.store.write_batch(decisions, outcomes, late)
        for c in refused:
            self._conflict(c)

    def _conflict(self, c: Conflict) -> None:
        """A row refused because its key is stored for another row: count, log both, keep it in the rejected file."""
        self._count("conflicts", 1)
        if c.kind == "d":
            self._conflict_keys[c.key] = None
            if len(self._conflict_keys) > MAX_CONFLICT_KEYS:
                self._conflict_keys.pop(next(iter(self._conflict_keys)))
        log.error("request key conflict, %s row not stored: %s; new row %s; stored row %s", c.kind, c.why,
                  json.dumps(c.row, default=str)[:2000], json.dumps(c.stored, default=str)[:2000])
        self._reject(c.kind, c.row, f"conflict: {c.why}", stored=c.stored)

    def _reject(self, kind: str, row: Mapping[str, Any], why: str, *, stored: Mapping[str, Any] | None = None) -> None:
        """Append the row and why to the rejected file (mode 0600, fsync'd); OSError if the disk refuses."""
        rec: dict[str, Any] = {"k": kind, "r": row, "error": why}
        if stored is not None:
            rec["stored"] = stored
        line = json.dumps(rec, default=str) + "\n"
        with self._reject_lock:
            fd = os.open(self.rejected_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            with open(fd, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        self._count("rejected", 1)
        log.error("store refused a %s row (kept in %s): %s", kind, self.rejected_path, why)

    def _reject_deferred(self) -> None:
        """Last try for outcomes whose decision was missing during a replay; reject what still fails.

        On any failure (the store down, the disk refusing the rejected file) the rows not yet settled stay deferred.
        """
        deferred, self._deferred = self._deferred, []
        for i, item in enumerate(deferred):
            try:
                try:
                    self._transaction([item])
                    self._count("written", 1)
                    self._count("replayed", 1)
                except Exception as exc:  # noqa: BLE001 - classified below
                    self._raise_if_down(exc)
                    self._reject(item.kind, item.row, _reason(exc))
            except (StoreError, OSError):
                self._deferred.extend(deferred[i:])
                raise

    def _to_spill(self, batch: Sequence[Item], *, sync: bool = False) -> bool:
        """Append to the spill: fsync'd before returning with ``sync`` (durable), else by the spill's syncer.

        Rows held from an earlier refusal go first. If the disk refuses
        (full, read-only), the rows are held in memory, at most ``max_queue``
        of them (beyond that the oldest are dropped, counted), and written
        with the next append or replay step; returns False then.
        """
        items = list(batch)
        if self._held:
            with self._held_lock:
                items, self._held = self._held + items, []
        if not items:
            return True
        try:
            try:
                n = self.spill.append(items, sync=sync)
            except (TypeError, ValueError):  # a row that is not JSON: reject it, spill the others
                items = [item for item in items if self._encodable(item)]
                n = self.spill.append(items, sync=sync)
        except OSError as exc:  # the local disk refused: hold the rows, say so, never raise into the caller
            self._last_error = f"spill: {exc}"
            log.error("cannot write the spill file %s (%s): holding %d rows in memory", self.spill.path, exc,
                      len(items))
            with self._held_lock:
                self._held = items + self._held
                over = len(self._held) - self.max_queue
                if over > 0:
                    del self._held[:over]
            if over > 0:
                self._count("dropped", over)
                log.error("more than %d rows held in memory: %d oldest dropped", self.max_queue, over)
            return False
        self._count("spilled", n)
        if n < len(items):
            self._count("dropped", len(items) - n)
            log.error("spill file %s is full (%d bytes) or unwritable: %d events dropped", self.spill.path,
                      self.spill.max_bytes, len(items) - n)
        return True

    def _encodable(self, item: Item) -> bool:
        try:
            encode([item])
            return True
        except NotJSONError as exc:  # names the key: "features.x is not JSON: …"
            self._reject(item.kind, item.row, str(exc))
            return False
        except (TypeError, ValueError) as exc:
            self._reject(item.kind, item.row, f"not JSON: {exc}")
            return False

    def _count(self, name: str, n: int) -> None:
        with self._count_lock:
            setattr(self, name, getattr(self, name) + n)

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

    # -- replay ------------------------------------------------------------------------------------
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
            chunk = job.peek(self.batch_size)
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


def _set_all(markers: list[_Marker]) -> None:
    """Release the flush() calls waiting on ``markers`` (and forget them)."""
    for m in markers:
        m.done.set()
    markers.clear()


def _reason(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


_WRITERS: weakref.WeakSet[BatchWriter] = weakref.WeakSet()
_FORK_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    """``os.register_at_fork``: every writer of the parent becomes the child's own, started on first use."""
    global _FORK_LOCK
    _FORK_LOCK = threading.Lock()  # the parent's may have been held by another thread at the fork
    for w in list(_WRITERS):
        if not w._stop.is_set():
            w._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_at_exit(ref: weakref.ref[BatchWriter]) -> None:
    """On a normal interpreter exit, rows still queued reach the store or the spill (not lost with the thread)."""
    w = ref()
    if w is not None and not w._stop.is_set():
        try:
            w.close(10.0)
        except Exception:  # noqa: BLE001 - never fail interpreter shutdown
            log.exception("closing the batch writer at exit failed")


__all__ = ["BatchWriter", "WriterHealth", "default_spill_dir", "read_spill", "spill_prefix"]
