"""Background batch writer for the serving path (group commit), with a spill for outages.

``submit_*`` never blocks and never raises because of the database: rows go
to a bounded queue; one thread drains it and commits whole batches in one
transaction. When the database is down, batches go to a :class:`SpillFile`
and are replayed, idempotently, once it answers again. When the queue is full
the caller's row goes straight to the spill. Nothing is dropped silently:
every row ends up in the database, the spill file, or the ``rejected`` file,
and each path is counted in :meth:`BatchWriter.health`.

One class, :class:`BatchWriter`, whose parts share one queue, one lock and
one notion of "the store is up": this module holds the queue, the batching
loop, flush/drain/close and the durable path; :mod:`.writer_commit` how a
batch reaches the store (transactions, refused rows, conflicts, the spill);
:mod:`.writer_replay` the outage state and the replays. The invariants
(nothing dropped, nothing twice) are stated here, once, for all three.

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
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stopbandit.errors import StoreError
from stopbandit.replay.queue_age import QueueAge
from stopbandit.replay.records import DecisionRecord, LateRecord, OutcomeRecord, typed
from stopbandit.replay.spill import SpillFile, spill_prefix
from stopbandit.replay.store import ReplayStore
from stopbandit.replay.writer_commit import Commits, Item
from stopbandit.replay.writer_replay import Replays, _ReplayJob

log = logging.getLogger("stopbandit.writer")

MAX_LINGER_S = 0.01  # longest wait for a group to fill (see BatchWriter.linger)
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
    overloads: int = 0  # times the writer fell max_lag (the store timeout) behind and spilled its queue (replayed)


class BatchWriter(Commits, Replays):
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
        max_lag: float | None = None,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retry_interval = retry_interval
        self.orphan_scan_interval = orphan_scan_interval
        self.max_queue = max_queue
        # the longest database call: the store's own statement timeout if it has one
        self.timeout = timeout or store.timeout or DEFAULT_TIMEOUT_S
        # the longest a row waits in memory before the writer spills the queue instead of committing it: like a
        # commit past its deadline, a queue that old means the database cannot keep up (a burst it clears is not)
        self.max_lag = max(flush_interval, self.timeout if max_lag is None else max_lag)
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
        self._age = QueueAge()  # how long the oldest queued row has waited (rows taken counted in _take)
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
        self.conflicts = self.replay_errors = self.overloads = 0

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
        self._submit(DecisionRecord(row))

    def submit_outcome(self, row: Mapping[str, Any]) -> None:
        self._submit(OutcomeRecord(row))

    def submit_late(self, row: Mapping[str, Any]) -> None:
        """A late reward for a decision whose window closed with a default: replaces that outcome, status ``late``."""
        self._submit(LateRecord(row))

    def submit(self, kind: str, row: Mapping[str, Any]) -> None:
        """Queue a row by its kind (``"d"``, ``"o"`` or ``"l"``, :mod:`stopbandit.replay.records`)."""
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
    def flush(self, timeout: float | None = 30.0, *, ask_store: bool = True) -> bool:
        """Wait until everything submitted before this call is in the database (the store down: the fsync'd spill).

        True once those rows are safe: committed, or fsync'd to the spill;
        rows spilled while the store answers (the writer fell behind, or a
        call overran its deadline and the store is back) are also waited for
        in the database, up to ``timeout``. ``ask_store=False``: a writer
        that believes the store down does not ask it (a caller about to ask
        the store itself spends no second deadline on it).

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
        if not self.spill.sync(None if deadline is None else max(0.0, deadline - time.monotonic())):
            return False
        self._await_replay(deadline, ask_store)
        return True

    def _await_replay(self, deadline: float | None, ask_store: bool) -> None:
        """While the store answers, wait (until ``deadline``) for the replay of rows spilled so far.

        Rows reach the spill with the store up when the writer fell behind
        (``overloads``), a backlog was still being replayed, or one call
        overran the deadline and the store answers again: a caller that
        flushes and then reads the store expects them there. A writer that
        believes the store down asks it once (bounded by ``timeout``) rather
        than wait for the probe thread's next try. Only the rows spilled up
        to now are waited for, so this returns under continuous traffic too.
        While the store is down the spill is where they stay.
        """
        if not self.spill.has_backlog():
            return
        if not self._store_ok:
            left = self.timeout if deadline is None else deadline - time.monotonic()
            if not ask_store or left <= 0 or not self._try_store(left):
                return
        target = self.spill.replay_target()
        while ((self._store_ok or self._reachable.is_set()) and self._thread.is_alive()
               and not self.spill.replayed_through(target)):
            if deadline is not None and time.monotonic() >= deadline:
                return
            self._wake.set()
            time.sleep(0.01)

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
            overloads=self.overloads,
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
        self._age.note(len(self._q))
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
        n_markers = len(markers)
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
        self._age.taken += len(batch) + len(markers) - n_markers
        return batch

    def _process(self) -> bool:
        """Write the next batch (spill it if the store is down); False if only markers were queued.

        While rows go to the spill, the whole queue is taken (in ``batch_size``
        chunks): spilling is a write, not a transaction, and a row left in
        memory is a row a crash would lose.
        """
        markers: list[_Marker] = []
        behind = self._age.age(len(self._q)) > self.max_lag
        queued = len(self._q)  # spilling takes at most what is queued now: then a replay step may run
        batch = self._take(self.batch_size, markers)
        had_rows, taken = bool(batch), len(batch)
        self._busy += 1
        self._oldest_pending = time.time()
        self._inflight = batch
        try:
            try:
                if batch:
                    self._write(batch, behind=behind)
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

    def _write(self, batch: Sequence[Item], *, behind: bool = False) -> None:
        """Commit the batch; spill it instead while the store is down, a backlog waits, or the writer is behind.

        Behind: the oldest queued row has waited longer than ``max_lag``
        (the call deadline, ``timeout``): serving threads produce rows
        faster than the database takes them. The queue then goes to the
        spill, which is fast, and is replayed from there, so however fast
        rows come, none waits in memory longer than ``max_lag`` plus one
        commit (itself cut at ``timeout``): the bound on what a ``kill -9``
        can lose. A writer that keeps up holds rows the flush window plus one
        commit.
        """
        if behind and self._store_ok and not self._backlog():
            self._count("overloads", 1)
            log.warning("writer behind the serving threads by more than %g s: spilling the queue",
                        self.max_lag)
        if self._backlog() or not self._store_ok or behind:
            self._to_spill(batch)  # keep order: the backlog goes in first; down: no connect attempt per batch
            return
        try:
            self._count("written", self._commit(batch))
            self._mark_ok()
        except StoreError as exc:
            self._mark_down(exc)
            self._to_spill(batch)

    def _count(self, name: str, n: int) -> None:
        with self._count_lock:
            setattr(self, name, getattr(self, name) + n)

def _set_all(markers: list[_Marker]) -> None:
    """Release the flush() calls waiting on ``markers`` (and forget them)."""
    for m in markers:
        m.done.set()
    markers.clear()


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


__all__ = ["BatchWriter", "WriterHealth"]
