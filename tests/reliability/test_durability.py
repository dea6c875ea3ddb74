"""Nothing acknowledged is lost, forged or mixed up.

Real parts throughout: our own PostgreSQL server (stopped with ``pg_ctl``,
hung with SIGSTOP/SIGCONT of the postmaster and its backends), SQLite files
deleted or locked by another connection, spill files on a small tmpfs that
really fills up, ``fork()``, and second Selectors standing in for other
replicas of a service.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from stopbandit import Selector
from stopbandit.config import SelectorConfig, StoreConfig
from stopbandit.errors import ConfigError, ConflictError, StoreError, UnknownDecisionError
from stopbandit.replay import migrate
from stopbandit.replay.spill import Adopted, SpillFile
from stopbandit.replay.spill_format import SpillReader, encode, header
from stopbandit.replay.store import ReplayStore, outcome_row
from stopbandit.replay.writer import BatchWriter

from tests.reliability.helpers import Outage, fill, mount_tmpfs, until
from tests.reliability.test_crash import ROOT
from tests.reliability.test_outage import decision, leftover_spill, serve, write_orphan


def cfg(tmp_path: Path, **store) -> SelectorConfig:
    store.setdefault("spill_path", str(tmp_path / "spill" / "sb"))
    store.setdefault("retry_interval", 0.1)
    store.setdefault("flush_interval", 0.02)
    return SelectorConfig(seed=0, follow_interval=0.1, store=StoreConfig(**store))


def stored(url: str) -> tuple[int, int]:
    s = ReplayStore(url)
    try:
        c = s.counts()
        assert s.duplicate_keys() == 0
        return c["decisions"], c["outcomes"]
    finally:
        s.dispose()


# -- 1. close() right after the store returns ------------------------------------------------------------
def test_close_right_after_the_store_returns_drains_the_backlog(outage_db, tmp_path):
    """The writer still believes the store is down (its next retry is far off): close() must ask it itself."""
    url, server = outage_db
    outage = Outage(server)
    sel = Selector.open(url, config=cfg(tmp_path, retry_interval=30.0))
    outage.attach(sel.store.engine)
    serve(sel, 100, "before-")
    assert sel.flush(10)
    outage.start()
    serve(sel, 300, "during-")
    assert sel.flush(10) and until(lambda: not sel.health().store_ok, 10)
    outage.stop()
    serve(sel, 100, "after-")  # still spilled: the writer has not retried yet
    assert sel.flush(10)
    sel.close()
    assert stored(url) == (500, 500)
    assert leftover_spill(tmp_path) == []


# -- 2. a replay error keeps the file --------------------------------------------------------------------
def test_a_replay_error_on_the_local_disk_keeps_the_spill_file(sqlite_url, tmp_path):
    migrate.upgrade(sqlite_url)
    store = ReplayStore(sqlite_url)
    prefix = tmp_path / "sp" / "sb"
    rows = [("d", decision(f"k{i}")) for i in range(50)] + [("o", outcome_row("ghost", 1.0, 1))]
    base = write_orphan(prefix, rows, store_id=store.identity())
    rejected = Path(f"{prefix}.rejected.jsonl")
    rejected.mkdir()  # the rejected file cannot be written: every replay step that must reject fails on the disk
    w = BatchWriter(store, spill_path=prefix, retry_interval=0.05)
    assert not w.drain(3)
    h = w.health()
    assert h.replay_errors > 0 and "spill replay" in (h.last_error or "")
    assert base.exists() or base.with_name(base.name + ".replay").exists()  # nothing deleted
    rejected.rmdir()  # the disk takes it again
    assert w.drain(20)
    assert store.counts()["decisions"] == 50 and w.health().rejected == 1
    assert "ghost" in rejected.read_text()
    w.close()
    assert not base.exists() and not base.with_name(base.name + ".replay").exists()
    store.dispose()


# -- 3. hung databases -----------------------------------------------------------------------------------
@pytest.mark.postgres
def test_a_hung_server_is_an_outage_close_spills_and_nothing_is_lost(pg_server, tmp_path):
    """SIGSTOP of the server while a serving process runs and then shuts down.

    Its writer must report the store down within its deadline (not only the
    follower), its ``close`` must return and leave every acknowledged row in
    the spill, and a new process must store them all once the server resumes.
    """
    url = pg_server.create_database()
    Selector.open(url, follow=False).close()  # schema in place
    spill = tmp_path / "spill" / "sb"
    child = subprocess.Popen([sys.executable, "-m", "tests.reliability.child_hang", url, str(spill), str(tmp_path)],
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        assert until(lambda: (tmp_path / "ready").exists() or child.poll() is not None, 60)
        pg_server.freeze()
        (tmp_path / "go").touch()
        out, _ = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
        pg_server.thaw()
    assert child.returncode == 0, out[-3000:]
    assert "writer_down never" not in out, out[-3000:]
    close_s = float(out.split("close ")[1].split()[0])
    assert close_s < 30, out[-3000:]  # bounded by close's timeout, not by the hang
    again = Selector.open(url, config=cfg(tmp_path), follow=False)
    assert again.drain(60), again.health()
    again.close()
    assert stored(url) == (400, 400)
    assert leftover_spill(tmp_path) == []


@pytest.mark.postgres
def test_durable_choose_waits_at_most_the_timeout_on_a_hung_server(pg_server, tmp_path):
    url = pg_server.create_database()
    sel = Selector.open(url, config=cfg(tmp_path, timeout=1.0), durable=True)
    d0 = sel.choose("q", domain="math", request_id="first")
    assert d0.durable
    pg_server.freeze()
    result: dict = {}
    try:
        def call() -> None:
            t = time.monotonic()
            result["decision"] = sel.choose("q", domain="math", request_id="during-hang")
            result["s"] = time.monotonic() - t

        th = threading.Thread(target=call, daemon=True)
        th.start()
        th.join(30)
        assert not th.is_alive(), "a durable choose blocked for the whole hang"
        assert result["decision"].durable  # fsync'd to the spill once the commit overran
        assert not sel.health().store_ok
        assert sel.health().spill_backlog == 1

        def lookup() -> None:  # a reward that must ask the store: its read has a deadline too
            t = time.monotonic()
            try:
                sel.reward("made-elsewhere", em=1.0, tokens=1)
            except StoreError as exc:
                result["lookup"] = exc
            result["lookup_s"] = time.monotonic() - t

        th = threading.Thread(target=lookup, daemon=True)
        th.start()
        th.join(30)
        assert not th.is_alive() and isinstance(result.get("lookup"), StoreError)
        # bounded like a durable choose: timeout (1 s) + connect timeout (2 s), with 0.5 s for scheduling
        assert result["lookup_s"] < 3.5, result["lookup_s"]
    finally:
        pg_server.thaw()
    assert sel.drain(60), sel.health()
    assert sel.store.get_decision("during-hang") is not None
    sel.close()


@contextlib.contextmanager
def sqlite_write_locked(url: str) -> Iterator[None]:
    """Another process's view: SQLite's write lock held (``BEGIN EXCLUSIVE``) for the block."""
    blocker = sqlite3.connect(url[len("sqlite:///"):], timeout=1)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        blocker.rollback()
        blocker.close()


def test_a_locked_sqlite_database_is_an_outage_after_the_timeout(sqlite_url, tmp_path):
    """Another process holds SQLite's write lock: the busy wait is bounded by ``timeout``, then rows spill."""
    sel = Selector.open(sqlite_url, config=cfg(tmp_path, timeout=1.0))
    serve(sel, 20, "a-")
    assert sel.flush(10)
    with sqlite_write_locked(sqlite_url):
        serve(sel, 50, "b-")
        assert until(lambda: not sel.health().store_ok, 10), sel.health()
        assert sel.flush(10) and sel.health().spill_backlog > 0
    assert sel.drain(30), sel.health()
    sel.close()
    assert stored(sqlite_url) == (70, 70)


def test_flush_after_a_stall_that_ended_returns_with_the_rows_in_the_store(sqlite_url, tmp_path):
    """One stall past ``timeout`` marks the store down; once it answers again, ``flush`` waits for the database.

    A caller that flushes and then reads the store (an evaluation, a test)
    must find every row there when the store answers at the time of the
    flush, whatever the writer believed. The probe thread is kept out of it
    (``retry_interval`` 60 s): ``flush`` itself asks the store.
    """
    sel = Selector.open(sqlite_url, config=cfg(tmp_path, timeout=1.0, retry_interval=60.0))
    serve(sel, 20, "a-")
    assert sel.flush(10)
    with sqlite_write_locked(sqlite_url):
        serve(sel, 50, "b-")
        assert until(lambda: not sel.health().store_ok, 10), sel.health()
    assert sel.flush(30), sel.health()
    assert stored(sqlite_url) == (70, 70)
    sel.close()


# -- 4. private spill directory, store identity ----------------------------------------------------------
def test_spill_files_are_private_and_belong_to_a_store_by_identity(sqlite_url, tmp_path):
    url_b = f"sqlite:///{tmp_path / 'other.db'}"
    migrate.upgrade(sqlite_url)
    migrate.upgrade(url_b)
    a, b = ReplayStore(sqlite_url), ReplayStore(url_b)
    assert a.identity() != b.identity()
    shared = tmp_path / "shared"
    # another store's file in the same directory, under the same prefix (as if the URLs shared a prefix)
    write_orphan(shared / "sb", [("d", decision("tenant-b"))], store_id=b.identity(), name="4242-deadbeef")
    # a file without a header (planted, or another program's)
    (shared / "sb.4243-deadbeef.jsonl").write_bytes(encode([("d", decision("planted", propensity=1e-6))]))
    w = BatchWriter(a, spill_path=shared / "sb")
    assert w.drain(10)
    assert a.get_decision("tenant-b") is None and a.get_decision("planted") is None
    w.submit_decision(decision("mine"))
    w.close()
    wb = BatchWriter(b, spill_path=shared / "sb")
    assert wb.drain(10) and b.get_decision("tenant-b") is not None  # its own store adopts it
    wb.close()
    assert (shared.stat().st_mode & 0o777) == 0o700
    a.dispose()
    b.dispose()


def test_the_spill_directory_must_be_private(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o777)
    with pytest.raises(ConfigError, match="must be private"):
        SpillFile(open_dir / "sb")
    with pytest.raises(ConfigError, match="must be private"):
        SpillFile("/tmp/sb")  # world-writable /tmp is refused
    s = SpillFile(tmp_path / "private" / "sb")
    s.append([("d", decision("x"))])
    assert (s.path.stat().st_mode & 0o777) == 0o600
    assert ((tmp_path / "private").stat().st_mode & 0o777) == 0o700
    s.release()


def test_the_default_spill_dir_is_under_the_users_state_dir(sqlite_url, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    sel = Selector.open(sqlite_url, config=SelectorConfig(seed=0), follow=False)
    path = sel.writer.spill.path
    assert path.parent == tmp_path / "state" / "stopbandit" / "spill" / sel.store.identity()
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    sel.close()
    custom = tmp_path / "custom"
    sel = Selector.open(sqlite_url, config=SelectorConfig(seed=0, store=StoreConfig(spill_dir=str(custom))),
                        follow=False)
    assert sel.writer.spill.path.parent == custom / sel.store.identity()
    sel.close()


# -- 5. torn records -------------------------------------------------------------------------------------
def test_a_fragment_fused_with_the_next_record_is_cut_and_the_record_kept(tmp_path):
    d = tmp_path / "sp"
    d.mkdir(mode=0o700)
    full = encode([("d", decision("torn"))])
    path = d / "sb.1-00000000.jsonl"
    path.write_bytes(header("id") + full[: len(full) // 2] + encode([("d", decision("next"))]))
    chunk = SpillReader(path).read(100)
    assert [r["request_key"] for _, r in chunk.items] == ["next"]
    assert len(chunk.bad) == 1 and "torn" in chunk.bad[0][2]


@pytest.fixture
def tiny_fs(tmp_path):
    """A 256 KiB tmpfs that really fills up (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / "tiny"
    why = mount_tmpfs(mnt, "256k")
    if why is not None:
        pytest.skip(f"cannot mount a small tmpfs here: {why}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_holds_rows_cuts_the_torn_record_and_loses_nothing(outage_db, tiny_fs, tmp_path):
    url, server = outage_db
    outage = Outage(server)
    sel = Selector.open(url, config=cfg(tmp_path, spill_path=str(tiny_fs / "sp" / "sb")))
    outage.attach(sel.store.engine)
    serve(sel, 20, "up-")
    assert sel.flush(10)
    outage.start()
    serve(sel, 50, "spilled-")
    assert sel.flush(10)
    filler = fill(tiny_fs)
    serve(sel, 200, "full-")  # the spill's disk is full too: rows are held in memory, not dropped
    assert sel.flush(10)
    h = sel.health()
    assert h.unspilled > 0 and h.dropped == 0, h
    filler.unlink()  # space returns: the held rows reach the spill
    assert until(lambda: sel.health().unspilled == 0, 10), sel.health()
    outage.stop()
    assert sel.drain(30), sel.health()
    h = sel.health()
    assert h.rejected == 0 and h.dropped == 0, h
    sel.close()
    assert stored(url) == (270, 270)


# -- 6. fork -----------------------------------------------------------------------------------------------
def test_a_forked_child_gets_its_own_writer_and_keeps_the_parents_lock(outage_db, tmp_path):
    url, _ = outage_db
    sel = Selector.open(url, config=cfg(tmp_path), follow=False)
    serve(sel, 10, "parent-a-")
    assert sel.flush(10)
    parent_file = sel.writer.spill.path
    pid = os.fork()
    if pid == 0:  # the child: serve, close, exit without running the parent's cleanup
        code = 1
        try:
            serve(sel, 40, "child-")
            sel.close()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the forked child hung")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not Adopted(parent_file, sel.writer.store_id).ok  # the parent still holds its lock
    serve(sel, 10, "parent-b-")
    sel.close()
    assert stored(url) == (60, 60)


# -- 7. request ids reused across processes ----------------------------------------------------------------
@pytest.mark.parametrize("restart", [False, True], ids=["two-replicas", "after-restart"])
def test_a_reused_request_id_is_a_counted_conflict_never_a_silent_loss(db_url, tmp_path, restart):
    a = Selector.open(db_url, config=cfg(tmp_path / "a"), follow=False)
    d = a.choose("q", domain="math", request_id="dup-1")
    a.reward(d.decision_id, em=1.0, tokens=100)
    assert a.flush(10)
    if restart:
        a.close()
    b = Selector.open(db_url, config=cfg(tmp_path / "b"), follow=False)
    b.choose("another question", domain="trivia", request_id="dup-1")
    assert b.flush(10)
    h = b.health()
    assert h.conflicts == 1 and h.rejected == 1
    with pytest.raises(ConflictError, match="dup-1"):
        b.reward("dup-1", em=0.0, tokens=5)
    lines = [json.loads(x) for x in b.writer.rejected_path.read_text().splitlines()]
    assert lines[0]["stored"]["request_key"] == "dup-1" and "conflict" in lines[0]["error"]
    b.close()
    if not restart:
        a.close()
    s = ReplayStore(db_url)
    assert s.get_decision("dup-1")["domain"] == "math"
    assert (s.get_outcome("dup-1")["em"], s.get_outcome("dup-1")["tokens"]) == (1.0, 100)
    s.dispose()


def test_a_conflicting_reward_from_another_process_is_refused_before_the_conflict_is_known(db_url, tmp_path):
    a = Selector.open(db_url, config=cfg(tmp_path / "a"), follow=False)
    d = a.choose("q", domain="math", request_id="dup-2")
    a.reward(d.decision_id, em=1.0, tokens=100)
    assert a.flush(10)
    b = Selector.open(db_url, config=cfg(tmp_path / "b"), follow=False)
    b.choose("q", domain="math", request_id="dup-2")
    b.reward("dup-2", em=0.0, tokens=7)  # in the same batch as its (conflicting) decision
    assert b.flush(10)
    assert b.health().conflicts == 2  # the decision and its outcome
    b.close()
    a.close()
    s = ReplayStore(db_url)
    assert (s.get_outcome("dup-2")["em"], s.get_outcome("dup-2")["tokens"]) == (1.0, 100)
    s.dispose()


# -- 8. a reward at another replica before the decision is flushed -----------------------------------------
def test_a_reward_sent_to_another_replica_waits_for_its_decision(db_url, tmp_path):
    a = Selector.open(db_url, config=cfg(tmp_path / "a"), follow=False)
    b = Selector.open(db_url, config=cfg(tmp_path / "b", decision_wait=5.0), follow=False)
    for i in range(200):
        d = a.choose("q", domain="math", request_id=f"x-{i}")
        b.reward(d.decision_id, em=1.0, tokens=i)  # right away, at the other replica
    with pytest.raises(UnknownDecisionError, match="decision_wait"):
        b.reward("never-logged", em=1.0, tokens=1)
    a.close()
    b.close()
    assert stored(db_url) == (200, 200)


# -- 9. replayed rows are validated; the schema checks values ----------------------------------------------
def test_replayed_rows_are_validated_like_live_ones(db_url, tmp_path):
    migrate.upgrade(db_url)
    store = ReplayStore(db_url)
    prefix = tmp_path / "sp" / "sb"
    bad = [("d", decision("bad-prop", propensity=7.0, probabilities={"full": 7.0})),
           ("d", decision("bad-str", propensity="0.5", probabilities={"full": 0.5})),
           ("d", decision("bad-arm", arm="nope")),
           ("d", decision("ok-1")),
           ("o", outcome_row("ok-1", 1.0, 3) | {"em": 55}),
           ("o", outcome_row("ok-1", 1.0, 3) | {"tokens": -3}),
           ("d", decision("ok-2")), ("o", outcome_row("ok-2", 0.0, 9))]
    write_orphan(prefix, bad, store_id=store.identity())
    w = BatchWriter(store, spill_path=prefix)
    assert w.drain(20)
    assert w.health().rejected == 5
    assert store.counts() == {"decisions": 2, "outcomes": 1, "snapshots": 0, "lambda_changes": 0}
    reasons = [json.loads(x)["error"] for x in w.rejected_path.read_text().splitlines()]
    assert all(r.startswith("invalid spilled row") for r in reasons)
    assert any("propensity" in r for r in reasons) and any("em must be" in r for r in reasons)
    w.close()
    store.dispose()


@pytest.mark.parametrize("table, values", [
    ("decisions", {"propensity": 7.0}), ("decisions", {"propensity": 0.0}), ("decisions", {"arm_index": -1}),
    ("decisions", {"token_scale": 0.0}), ("outcomes", {"em": 55.0}), ("outcomes", {"tokens": -3}),
    ("outcomes", {"status": "made-up"}),
])
def test_the_schema_refuses_values_out_of_their_domain(db_url, table, values):
    migrate.upgrade(db_url)
    store = ReplayStore(db_url)
    store.record_decision(decision("base"))
    row = decision("k") if table == "decisions" else outcome_row("base", 1.0, 3)
    row.update(values)
    cols = ", ".join(row)
    params = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in row.items()}
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        conn.execute(text(f"INSERT INTO {table} ({cols}) VALUES ({', '.join(':' + k for k in row)})"), params)
    store.dispose()


# -- 10. the SQLite file deleted while serving -------------------------------------------------------------
def test_a_deleted_sqlite_file_is_an_outage_and_a_restored_copy_takes_the_backlog(sqlite_url, tmp_path):
    path = Path(sqlite_url[len("sqlite:///"):])
    sel = Selector.open(sqlite_url, config=cfg(tmp_path), follow=False)
    serve(sel, 50, "before-")
    assert sel.flush(10)
    with sqlite3.connect(path) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    backup = tmp_path / "backup.db"
    shutil.copy(path, backup)
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)
    serve(sel, 200, "after-")
    assert sel.flush(10)
    h = sel.health()
    assert not h.store_ok and h.spilled >= 400, h  # not "written" into the unlinked file
    shutil.copy(backup, path)  # the operator restores the store (same identity)
    assert sel.drain(30), sel.health()
    sel.close()
    assert stored(sqlite_url) == (250, 250)
