"""Store outages: the serving path keeps deciding, spills, reports, and replays exactly once on recovery.

PostgreSQL outages are real (our own server, ``pg_ctl stop -m fast`` / ``start``);
SQLite outages are injected at connect time (see ``helpers.Outage``). Also:
poison rows, spill ordering, orphan adoption, corrupt spill lines and the
memory/disk bounds.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from stopbandit import Selector
from stopbandit.config import SelectorConfig, StoreConfig
from stopbandit.replay import migrate
from stopbandit.replay.spill import SpillFile, spill_files
from stopbandit.replay.spill_format import encode, header
from stopbandit.replay.store import ReplayStore, outcome_row
from stopbandit.replay.writer import BatchWriter

from tests.reliability.helpers import Outage, until


def cfg(tmp_path: Path, **store) -> SelectorConfig:
    store.setdefault("spill_path", str(tmp_path / "spill" / "sb"))
    store.setdefault("retry_interval", 0.1)
    store.setdefault("flush_interval", 0.02)
    return SelectorConfig(seed=0, follow_interval=0.1, store=StoreConfig(**store))


def decision(key: str, **kw) -> dict:
    row = {"request_key": key, "ts": time.time(), "domain": "math", "features": {"len": 1.0}, "arm": "full",
           "arm_index": 0, "probabilities": {"full": 1.0}, "propensity": 1.0, "lam": 0.2, "token_scale": 1000.0,
           "policy_version": "v", "experiment": "champion"}
    row.update(kw)
    return row


def leftover_spill(tmp_path: Path) -> list[str]:
    d = tmp_path / "spill"
    return sorted(p.name for p in d.iterdir() if "rejected" not in p.name) if d.exists() else []


def spilled_rows(path: Path) -> int:
    """Rows (records after the file's header) written to a spill file so far."""
    return max(0, len(path.read_bytes().splitlines()) - 1)


def serve(sel: Selector, n: int, prefix: str) -> list[str]:
    ids = []
    for i in range(n):
        d = sel.choose("what is 2+2", domain="math", request_id=f"{prefix}{i}")
        sel.reward(d.decision_id, em=float(i % 2), tokens=10 + i)
        ids.append(d.decision_id)
    return ids


def test_outage_keeps_deciding_spills_reports_and_replays_exactly_once(outage_db, tmp_path):
    url, server = outage_db
    outage = Outage(server)
    sel = Selector.open(url, config=cfg(tmp_path))
    outage.attach(sel.store.engine)
    serve(sel, 200, "before-")
    assert sel.flush(10)
    assert sel.health().store_ok and sel.health().spill_backlog == 0

    outage.start()
    t0 = time.monotonic()
    during = serve(sel, 300, "during-")  # never raises, never waits for the database
    assert time.monotonic() - t0 < 20
    assert sel.flush(10)
    assert until(lambda: not sel.health().store_ok, 5)
    h = sel.health()
    assert h.outages == 1 and h.down_since is not None and h.last_error
    assert h.spill_backlog == h.spilled == 600 and h.dropped == 0 and h.rejected == 0
    assert h.max_spill_backlog == 600
    assert leftover_spill(tmp_path)  # the backlog is on disk, not only in memory

    outage.stop()
    assert sel.drain(30), sel.health()
    assert until(lambda: sel.health().store_ok, 5), sel.health()
    h = sel.health()
    assert (h.spill_backlog, h.replayed, h.dropped, h.rejected) == (0, 600, 0, 0)
    serve(sel, 50, "after-")
    sel.close()
    store = ReplayStore(url)
    assert store.counts()["decisions"] == store.counts()["outcomes"] == 550
    assert store.duplicate_keys() == 0
    assert {e.request_key for ch in store.iter_events() for e in ch} >= set(during)
    store.dispose()
    assert leftover_spill(tmp_path) == []  # replayed spill files are removed


def test_durable_mode_during_an_outage_spills_before_returning(outage_db, tmp_path):
    url, server = outage_db
    outage = Outage(server)
    sel = Selector.open(url, config=cfg(tmp_path), durable=True)
    outage.attach(sel.store.engine)
    serve(sel, 20, "a-")
    assert sel.health().queue_depth == 0 and sel.store.counts()["outcomes"] == 20  # committed before returning
    outage.start()
    slowest = 0.0
    for i in range(100):
        t = time.perf_counter()
        d = sel.choose("q", domain="math", request_id=f"b-{i}")
        sel.reward(d.decision_id, em=1.0, tokens=5)
        slowest = max(slowest, time.perf_counter() - t)
        assert sel.health().spill_backlog == 2 * (i + 1)  # fsync'd before choose/reward returned
    assert slowest < 2.0  # circuit breaker: no connect attempt (and timeout) per request while down
    outage.stop()
    assert sel.drain(30), sel.health()
    assert sel.store.counts()["outcomes"] == 120
    sel.close()


def test_late_rewards_and_defaults_survive_an_outage(outage_db, tmp_path):
    url, server = outage_db
    outage = Outage(server)
    config = SelectorConfig(seed=0, follow_interval=0.1, reward_window_s=0.2, default_em=0.0, default_tokens=7,
                            store=cfg(tmp_path).store)
    sel = Selector.open(url, config=config)
    outage.attach(sel.store.engine)
    sel.flush()
    outage.start()
    d = sel.choose("q", domain="math")
    assert until(lambda: sel.health().defaulted == 1, 5)
    sel.reward(d.decision_id, em=1.0, tokens=99)  # late: an ``l`` row goes through the spill after the default
    assert sel.flush(10) and sel.health().spill_backlog == 3
    outage.stop()
    assert sel.drain(30)
    row = sel.store.get_outcome(d.decision_id)
    assert (row["status"], row["em"], row["tokens"]) == ("late", 1.0, 99)
    sel.close()


def test_a_poison_row_is_rejected_and_never_takes_the_store_down(db_url, tmp_path):
    migrate.upgrade(db_url)
    store = ReplayStore(db_url)
    w = BatchWriter(store, spill_path=tmp_path / "s", flush_interval=0.01)
    poison = [decision("p-json", features={"x": {1, 2}})]  # not JSON: refused by the driver layer on any backend
    if store.engine.dialect.name == "postgresql":
        poison += [decision("p-nul", domain="a\x00b"), decision("p-long", domain="x" * 65)]  # DataError
    good = [decision(f"g{i}") for i in range(10)]
    for row in good[:5] + poison + good[5:]:
        w.submit_decision(row)
    w.submit_outcome(outcome_row("g0", 1.0, 2**40))  # out of range for PostgreSQL's INTEGER
    assert w.flush(10)
    h = w.health()
    pg = store.engine.dialect.name == "postgresql"
    assert h.store_ok and h.spill_backlog == 0 and h.outages == 0
    assert h.rejected == len(poison) + (1 if pg else 0)
    assert store.counts()["decisions"] == 10
    lines = [json.loads(x) for x in w.rejected_path.read_text().splitlines()]
    assert {x["r"]["request_key"] for x in lines if x["k"] == "d"} == {r["request_key"] for r in poison}
    assert all(x["error"] for x in lines)
    w.submit_decision(decision("after"))  # and the writer keeps writing
    w.close()
    assert store.get_decision("after") is not None
    store.dispose()


def write_orphan(prefix: Path, items, *, store_id: str, name: str = "4242-deadbeef", replay: bool = False,
                 torn: bytes = b"") -> Path:
    """A dead writer's spill file of the store ``store_id`` (its header names it), in a private directory."""
    base = Path(f"{prefix}.{name}.jsonl")
    target = base.with_name(base.name + ".replay") if replay else base
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    target.write_bytes(header(store_id) + encode(items) + torn)
    return base


def test_orphans_are_adopted_in_order_with_deferred_outcomes(sqlite_url, tmp_path):
    migrate.upgrade(sqlite_url)
    store = ReplayStore(sqlite_url)
    prefix = tmp_path / "sp" / "sb"
    # a queue overflow can spill an outcome before its decision; chunks of 1 put them in different transactions
    sid = store.identity()
    write_orphan(prefix, [("o", outcome_row("k1", 1.0, 3)), ("o", outcome_row("ghost", 1.0, 3)), ("d", decision("k1"))],
                 store_id=sid)
    # a writer that died while replaying: only its .replay file is left
    write_orphan(prefix, [("d", decision("k2")), ("o", outcome_row("k2", 0.0, 4))], store_id=sid,
                 name="4243-deadbeef", replay=True)
    # a writer that died with nothing to replay: only its lock file
    Path(f"{prefix}.4244-deadbeef.jsonl.lock").write_text("")
    # the rejected file is never "adopted"
    Path(f"{prefix}.rejected.jsonl").write_text(json.dumps({"k": "d", "r": decision("zzz"), "error": "x"}) + "\n")
    w = BatchWriter(store, spill_path=prefix, batch_size=1)
    assert w.drain(20)
    h = w.health()
    assert h.adopted_files == 2 and h.rejected == 1  # the ghost (its decision never existed)
    assert store.get_outcome("k1")["em"] == 1.0 and store.get_outcome("k2")["tokens"] == 4
    assert store.get_decision("zzz") is None
    w.close()
    left = sorted(p.name for p in prefix.parent.iterdir())
    assert left == ["sb.rejected.jsonl"], left
    assert "ghost" in Path(f"{prefix}.rejected.jsonl").read_text()
    store.dispose()


def test_corrupt_and_torn_spill_lines(sqlite_url, tmp_path):
    migrate.upgrade(sqlite_url)
    store = ReplayStore(sqlite_url)
    prefix = tmp_path / "sp" / "sb"
    base = write_orphan(prefix, [("d", decision("a"))], store_id=store.identity(), torn=b"")
    with open(base, "ab") as fh:
        fh.write(b'{"k": "d", "r": {"request_key": "bro\n')  # a complete but corrupt line
        fh.write(b'{"k": "x", "r": {}}\n')  # an unknown kind
        fh.write(encode([("d", decision("b"))]))
        fh.write(b'{"k": "d", "r": {"request_key": "torn"')  # a crash mid-write: no newline
    w = BatchWriter(store, spill_path=prefix)
    assert w.drain(20)
    assert w.health().rejected == 2
    assert store.get_decision("a") and store.get_decision("b") and store.counts()["decisions"] == 2
    w.close()
    assert spill_files(prefix) == []
    store.dispose()


def test_a_live_writers_spill_is_never_adopted(sqlite_url, tmp_path):
    migrate.upgrade(sqlite_url)
    store = ReplayStore(sqlite_url)
    prefix = tmp_path / "sp" / "sb"
    alive = SpillFile(prefix, store_id=store.identity())  # holds its lock, like a writer in another process
    alive.append([("d", decision("mine"))])
    w = BatchWriter(store, spill_path=prefix)
    assert w.drain(10)
    assert store.get_decision("mine") is None and alive.path.exists()
    alive.release()  # the owner dies with a backlog: now it is an orphan
    assert w.drain(10)
    assert store.get_decision("mine") is not None and not alive.path.exists()
    w.close()
    store.dispose()


def test_queue_and_spill_are_bounded_and_nothing_is_dropped_silently(sqlite_url, tmp_path):
    migrate.upgrade(sqlite_url)
    store = ReplayStore(sqlite_url)
    outage = Outage()
    outage.attach(store.engine)
    outage.start()
    w = BatchWriter(store, spill_path=tmp_path / "sp" / "sb", max_queue=10, batch_size=5, max_spill_bytes=20_000,
                    retry_interval=0.05)
    for i in range(500):
        w.submit_decision(decision(f"k{i}"))  # never raises or blocks, whatever the state
    assert w.flush(10)
    h = w.health()
    assert h.queue_depth == 0 and h.spilled + h.dropped == 500 and h.dropped > 0
    assert sum(p.stat().st_size for p in (tmp_path / "sp").iterdir() if p.suffix != ".lock") <= 20_000
    outage.stop()
    assert w.drain(10)
    assert store.counts()["decisions"] == h.spilled
    w.close()
    store.dispose()


def test_spill_files_are_fsynced_per_batch(sqlite_url, tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real(fd))
    spill = SpillFile(tmp_path / "sb")
    spill.append([("d", decision("a")), ("d", decision("b"))])
    spill.append([("d", decision("c"))])
    assert len(calls) >= 2 and spill.backlog_lines() == 3
    spill.release()


def test_queued_spill_appends_are_written_at_once_and_fsynced_by_the_syncer(tmp_path, monkeypatch):
    """A slow disk (every fsync 2 s) slows neither a queued append nor reading it back; sync() waits for it."""
    synced: list[int] = []
    real = os.fsync

    def slow_fsync(fd):
        time.sleep(2.0)
        real(fd)
        synced.append(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    spill = SpillFile(tmp_path / "sb")
    t = time.monotonic()
    for i in range(20):
        spill.append([("d", decision(f"q{i}"))], sync=False)
    assert time.monotonic() - t < 1.5  # no append waited for an fsync (one would take 2 s)
    assert spilled_rows(spill.path) == 20  # written: a killed process loses none of them
    assert spill.sync(10) and synced  # ... and fsync'd by the syncer thread, a group at a time
    assert len(synced) < 20
    t = time.monotonic()
    spill.append([("d", decision("durable"))])  # sync=True: fsync'd before returning
    assert time.monotonic() - t >= 2.0
    spill.release()
    assert spill.backlog_lines() == 21 and spill.path.exists()  # a backlog is left for adoption


def slow_disk_writer(url: str, tmp_path: Path, monkeypatch, fsync_s: float) -> tuple[ReplayStore, Outage, BatchWriter]:
    """A queued writer of a SQLite store with an outage switch, every ``os.fsync`` ``fsync_s`` seconds slower."""
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (time.sleep(fsync_s), real(fd)) and None)
    migrate.upgrade(url)
    store = ReplayStore(url)
    outage = Outage()
    outage.attach(store.engine)
    return store, outage, BatchWriter(store, spill_path=tmp_path / "sp" / "sb", flush_interval=0.05,
                                      retry_interval=0.05)


def test_an_outage_spills_every_queued_row_within_the_flush_window_on_a_slow_disk(sqlite_url, tmp_path, monkeypatch):
    """Issue 10: with the store down, rows must reach the spill file promptly, not wait behind the disk."""
    store, outage, w = slow_disk_writer(sqlite_url, tmp_path, monkeypatch, 3.0)
    outage.start()
    for i in range(3000):
        w.submit_decision(decision(f"s{i}"))
        if i % 500 == 0:
            time.sleep(0.02)
    lines = lambda: spilled_rows(w.spill.path) if w.spill.path.exists() else 0  # noqa: E731
    assert until(lambda: lines() == 3000, 2.5), lines()  # before the first (3 s) fsync returns
    assert w.flush(10)  # flush waits for the fsync too
    outage.stop()
    assert w.drain(20)
    assert store.counts()["decisions"] == 3000
    w.close()
    store.dispose()


def test_taking_the_spill_for_replay_does_not_wait_for_the_disk(tmp_path, monkeypatch):
    """The live file is renamed for replay at once; the syncer gives it its last fsync and closes it.

    ``sync()`` still waits for that fsync: what the append promised holds.
    """
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (time.sleep(2.5), real(fd)) and None)
    spill = SpillFile(tmp_path / "sb")
    open_fds = len(os.listdir("/proc/self/fd"))
    spill.append([("d", decision(f"r{i}")) for i in range(50)], sync=False)
    t = time.monotonic()
    assert spill.take_for_replay() == spill.replay_path
    assert time.monotonic() - t < 2.0  # an fsync takes 2.5 s (the old take waited for two in flight, then its own)
    assert spilled_rows(spill.replay_path) == 50
    spill.append([("d", decision("after"))], sync=False)  # a fresh live file
    assert spill.sync(20) and time.monotonic() - t >= 2.5
    assert until(lambda: len(os.listdir("/proc/self/fd")) == open_fds + 1, 5)  # the renamed file is closed
    spill.replayed(50)
    spill.done_replaying()
    spill.release()
    assert spill.backlog_lines() == 1


def test_replay_starts_without_waiting_for_the_disk_when_the_store_answers_again(sqlite_url, tmp_path, monkeypatch):
    """Rows spilled in an outage on a slow disk (every fsync 3 s) reach the store as soon as it answers.

    The writer thread used to fsync the spill file itself before replaying
    it (waiting out the syncer's fsync in flight, then its own), so for
    seconds every row queued behind it waited in memory: what a ``kill -9``
    at that moment would lose.
    """
    real = os.fsync
    store, outage, w = slow_disk_writer(sqlite_url, tmp_path, monkeypatch, 3.0)
    outage.start()
    for i in range(1000):
        w.submit_decision(decision(f"s{i}"))
    assert until(lambda: w.spill.backlog_lines() == 1000, 10), w.health()
    outage.stop()
    t = time.monotonic()
    for i in range(200):
        w.submit_decision(decision(f"after{i}"))
    # the old writer needed the syncer's fsyncs in flight (directory + file, 6 s from the first spill) and its own (3 s)
    assert until(lambda: store.counts()["decisions"] == 1200, 2.5), (w.health(), time.monotonic() - t)
    monkeypatch.setattr(os, "fsync", real)  # the rest of the test need not wait for the slow disk
    assert w.flush(20) and w.drain(20)
    w.close()
    store.dispose()


@pytest.mark.postgres
def test_choose_never_waits_on_a_dead_server_connect(pg_server, tmp_path):
    """A decision made while PostgreSQL restarts, in the default (queued) mode, takes no database time."""
    url = pg_server.create_database()
    sel = Selector.open(url, config=cfg(tmp_path))
    serve(sel, 50, "w-")
    pg_server.stop("immediate")  # like a crash of the database server
    worst = 0.0
    for i in range(200):
        t = time.perf_counter()
        sel.choose("q", domain="math")
        worst = max(worst, time.perf_counter() - t)
    pg_server.start()
    assert worst < 0.5, worst
    assert sel.drain(30)
    assert sel.store.counts()["decisions"] == 250
    sel.close()
