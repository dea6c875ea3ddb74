"""The replay store suite, run against SQLite and the real PostgreSQL."""

from __future__ import annotations

import math
import multiprocessing as mp
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from stopbandit.errors import ConfigError, ConflictError, InputError, StoreError, UnknownDecisionError
from stopbandit.replay import migrate
from stopbandit.replay.store import ReplayStore, outcome_row
from stopbandit.replay.writer import BatchWriter


def decision(key: str, arm: str = "balanced", idx: int = 2) -> dict:
    return dict(
        request_key=key, ts=time.time(), domain="math", features={"len": 3.1, "domain": "math"},
        arm=arm, arm_index=idx, probabilities={"full": 0.1, "careful": 0.1, "balanced": 0.7, "aggressive": 0.1},
        propensity=0.7, lam=0.2, token_scale=1000.0, policy_version="v0", experiment="champion",
    )


@pytest.fixture
def store(db_url):
    s = ReplayStore(db_url, migrate_schema=True)
    yield s
    s.dispose()


def test_round_trip(store):
    store.record_decision(decision("r1"))
    assert store.record_outcome("r1", em=1.0, tokens=812, latency_ms=3.5) is True
    [chunk] = list(store.iter_events())
    [ev] = chunk
    assert (ev.request_key, ev.arm, ev.arm_index, ev.em, ev.tokens, ev.latency_ms) == ("r1", "balanced", 2, 1.0, 812, 3.5)
    assert ev.probabilities["balanced"] == pytest.approx(0.7)
    assert ev.features == {"len": 3.1, "domain": "math"}
    assert store.get_decision("r1")["propensity"] == pytest.approx(0.7)


def test_outcomes_are_idempotent(store):
    store.record_decision(decision("r1"))
    store.record_decision(decision("r1"))  # a retried decision is stored once
    assert store.record_outcome("r1", 1.0, 10) is True
    assert store.record_outcome("r1", 1.0, 10) is False
    assert store.counts()["decisions"] == 1
    assert store.counts()["outcomes"] == 1


def test_conflicting_outcome_is_an_error(store):
    store.record_decision(decision("r1"))
    store.record_outcome("r1", 1.0, 10)
    with pytest.raises(ConflictError, match=r"conflicting outcome for decision 'r1' \(em: stored 1.0 vs new 0.0\)"):
        store.record_outcome("r1", 0.0, 10)
    assert store.get_outcome("r1")["em"] == 1.0


def test_outcome_for_unknown_decision(store):
    with pytest.raises(UnknownDecisionError, match="no decision with request key 'nope'"):
        store.record_outcome("nope", 1.0, 10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(em=math.nan, tokens=1), "em must be a finite number"),
        (dict(em=1.5, tokens=1), r"em must be a finite number in \[0, 1\], got 1.5"),
        (dict(em="1", tokens=1), "em must be a number"),
        (dict(em=1.0, tokens=-3), "tokens must be >= 0, got -3"),
        (dict(em=1.0, tokens=math.nan), "tokens must be a non-negative integer, got nan"),
        (dict(em=1.0, tokens=2.5), "tokens must be a non-negative integer, got 2.5"),
        (dict(em=1.0, tokens=True), "tokens must be a non-negative integer"),
        (dict(em=1.0, tokens=1, latency_ms=-1.0), "latency_ms must be a finite number >= 0"),
    ],
)
def test_invalid_outcomes_name_the_field(store, kwargs, match):
    store.record_decision(decision("r1"))
    with pytest.raises(InputError, match=match):
        store.record_outcome("r1", **kwargs)
    assert store.get_outcome("r1") is None


def test_migrations_up_down_up(db_url):
    migrate.upgrade(db_url)
    assert migrate.current_revision(db_url) == migrate.head_revision()
    s = ReplayStore(db_url)
    s.record_decision(decision("r1"))
    s.dispose()
    migrate.downgrade(db_url, "base")
    assert migrate.current_revision(db_url) is None
    with pytest.raises(StoreError, match="expected .*; run `stopbandit db upgrade"):
        ReplayStore(db_url)
    migrate.upgrade(db_url)
    s = ReplayStore(db_url)
    assert s.counts()["decisions"] == 0
    s.record_decision(decision("r2"))
    assert s.counts()["decisions"] == 1
    s.dispose()


def test_iter_events_is_chunked_and_resumable(store):
    w = BatchWriter(store, batch_size=100)
    for i in range(1050):
        w.submit_decision(decision(f"r{i}"))
        w.submit_outcome(outcome_row(f"r{i}", i % 2, i))
    w.close()
    chunks = list(store.iter_events(chunk=200))
    assert [len(c) for c in chunks] == [200] * 5 + [50]
    cursors = [e.cursor for c in chunks for e in c]
    assert cursors == sorted(cursors) and len(set(cursors)) == 1050
    rest = [e for c in store.iter_events(after=cursors[999], chunk=200) for e in c]
    assert [e.request_key for e in rest] == [f"r{i}" for i in range(1000, 1050)]


def test_writer_flush_and_counts(store):
    w = BatchWriter(store, batch_size=64, flush_interval=0.01)
    for i in range(500):
        w.submit_decision(decision(f"k{i}"))
        w.submit_outcome(outcome_row(f"k{i}", 1.0, 10))
    assert w.flush(30)
    h = w.health()
    assert (h.store_ok, h.written, h.spilled, h.dropped, h.queue_depth) == (True, 1000, 0, 0, 0)
    assert store.counts()["outcomes"] == 500
    w.close()


def test_writer_flush_is_exact_and_returns_under_continuous_traffic(store):
    """flush() waits for every row submitted before it (and only those), while another thread keeps submitting."""
    w = BatchWriter(store, batch_size=50, flush_interval=0.05)
    stop = threading.Event()

    def noise() -> None:
        i = 0
        while not stop.is_set():
            w.submit_decision(decision(f"noise{i}"))
            i += 1
            if i % 10 == 0:
                time.sleep(0.001)

    t = threading.Thread(target=noise)
    t.start()
    try:
        for round_ in range(20):
            keys = [f"r{round_}-{i}" for i in range(round_ * 7)]
            for k in keys:
                w.submit_decision(decision(k))
            assert w.flush(30)
            assert all(store.get_decision(k) is not None for k in keys[-3:] + keys[:1])
    finally:
        stop.set()
        t.join()
    w.close()
    assert store.counts()["decisions"] == w.health().written


def test_writer_rejects_orphan_outcome_without_losing_the_batch(store, tmp_path):
    w = BatchWriter(store, spill_path=tmp_path / "s.jsonl")
    w.submit_decision(decision("a"))
    w.submit_outcome(outcome_row("ghost", 1.0, 1))
    w.submit_outcome(outcome_row("a", 1.0, 1))
    w.close()
    assert store.counts()["outcomes"] == 1 and store.counts()["decisions"] == 1
    assert w.health().rejected == 1
    assert "ghost" in w.rejected_path.read_text()


def _burst(store, tmp_path, prefix: str, n: int) -> BatchWriter:
    """A writer of 5-row transactions and a 0.2 s ``max_lag``, handed ``n`` decisions and their outcomes at once."""
    # a deadline no 5-row commit overruns even on a loaded machine (an overrun would be an outage instead)
    w = BatchWriter(store, batch_size=5, flush_interval=0.01, timeout=5.0, max_lag=0.2,
                    spill_path=tmp_path / "spill" / "w")
    for i in range(n):
        w.submit_decision(decision(f"{prefix}{i}"))
        w.submit_outcome(outcome_row(f"{prefix}{i}", 1.0, i))
    return w


def test_a_writer_that_falls_behind_spills_its_queue_and_replays_it(store, tmp_path):
    """A burst that 5-row transactions take seconds to commit: no row waits in memory past ``max_lag``.

    Once the oldest queued row is older than ``max_lag`` the queue goes to
    the spill (counted in ``overloads`` and ``spilled``) and reaches the
    database from there, each row once.
    """
    n = 10_000
    w = _burst(store, tmp_path, "b", n)
    assert w.drain(120), w.health()
    h = w.health()
    w.close()
    assert h.overloads >= 1 and h.spilled > 0 and h.rejected == h.dropped == 0, h
    c = store.counts()
    assert (c["decisions"], c["outcomes"]) == (n, n) and store.duplicate_keys() == 0


def test_flush_with_the_store_up_waits_for_what_an_overload_spilled(store, tmp_path):
    """A writer that fell behind spilled rows though the store answers: ``flush`` returns with them in the database.

    A caller that flushes and then reads the store (an evaluation, a test)
    must not find rows missing because they took the overload path.
    """
    n = 6_000
    w = _burst(store, tmp_path, "f", n)
    assert w.flush(120), w.health()
    c = store.counts()
    h = w.health()
    w.close()
    assert h.overloads >= 1 and h.spilled > 0, h
    assert (c["decisions"], c["outcomes"]) == (n, n), (c, h)


def _hammer(url: str, worker: int, n: int) -> None:
    s = ReplayStore(url)
    w = BatchWriter(s, batch_size=1000, spill_path=Path(tempfile.mkdtemp(prefix="sb-hammer-")) / f"w{worker}")
    for i in range(n):
        key = f"w{worker}-{i}"
        w.submit_decision(decision(key))
        w.submit_outcome(outcome_row(key, i % 2, i))
    w.close(120)
    h = w.health()
    if h.rejected or h.dropped or h.outages or (h.spilled and not h.overloads):  # spilling only if it fell behind
        raise SystemExit(f"worker {worker}: {h}")
    s.dispose()


def test_four_processes_nothing_lost_or_duplicated(db_url):
    migrate.upgrade(db_url)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(db_url, w, 10_000)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    s = ReplayStore(db_url)
    c = s.counts()
    assert (c["decisions"], c["outcomes"]) == (40_000, 40_000)
    assert s.duplicate_keys() == 0
    events = sum(len(ch) for ch in s.iter_events(chunk=10_000))
    assert events == 40_000
    s.dispose()


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("not a url", "is not a valid SQLAlchemy URL"),
        ("nosuchdb://x/y", "no database driver for URL"),
    ],
)
def test_bad_urls_are_config_errors(url, match):
    with pytest.raises(ConfigError, match=match):
        ReplayStore(url)


def test_unreachable_database_is_a_store_error():
    with pytest.raises(StoreError, match="cannot reach database|unavailable"):
        ReplayStore("postgresql+psycopg://nobody@127.0.0.1:1/none")


@pytest.mark.parametrize("n", [1, 2, 3, 255, 256, 257, 1000])
def test_write_batch_stores_every_row_once_whatever_the_batch_size(store, n):
    """The bulk path (multi-row VALUES in power-of-two chunks on SQLite, executemany on PostgreSQL)."""
    rows = [decision(f"b{i}") for i in range(n)]
    store.write_batch(rows + rows[: n // 2], [outcome_row(f"b{i}", i % 2, i) for i in range(n)])
    store.write_batch(rows[:3], [])  # again: duplicates by key are ignored
    c = store.counts()
    assert (c["decisions"], c["outcomes"], store.duplicate_keys()) == (n, n, 0)
    last = store.get_decision(f"b{n - 1}")
    assert last["features"] == {"len": 3.1, "domain": "math"} and last["probabilities"]["balanced"] == 0.7
    assert store.get_outcome(f"b{n - 1}")["tokens"] == n - 1


def test_write_batch_fills_in_optional_fields(store):
    row = decision("opt")
    del row["experiment"], row["domain"]
    out = {"decision_key": "opt", "ts": 1.0, "em": 1.0, "tokens": 3}
    store.write_batch([row], [out])
    assert (store.get_decision("opt")["experiment"], store.get_decision("opt")["domain"]) == ("champion", None)
    got = store.get_outcome("opt")
    assert (got["status"], got["trace"], got["latency_ms"], got["reference_key"]) == ("ok", None, None, None)


@pytest.mark.parametrize(("change", "match"), [
    ({"features": {"x": {1, 2}}}, r"row 'bad' cannot be stored: .*not JSON serializable"),
    ({"arm": None, "features": object()}, r"row 'bad' cannot be stored"),
])
def test_write_batch_names_a_row_it_cannot_encode(store, change, match):
    with pytest.raises(InputError, match=match):
        store.write_batch([{**decision("bad"), **change}], [])
    assert store.counts()["decisions"] == 0


@pytest.mark.parametrize("value", [
    {"len": 3.1, "lbin": "l4", "domain": "math"},
    {"é": "ü\u2028", "x": 1e-300, "big": 1.7976931348623157e308, "neg": -0.0, "i": 3},
    {"nested": {"a": [1, 2.5, None, True, "s"]}},
    {"np": np.float64(0.25)},  # a numpy scalar: not orjson's, the standard library's
    None,
])
def test_json_columns_read_back_the_same(store, value):
    for accelerated in (True,):
        key = f"j-{accelerated}"
        trace = value if isinstance(value, dict) else None
        store.write_batch([{**decision(key), "features": value}],
                          [{**outcome_row(key, 1.0, 1), "trace": trace}])
        assert store.get_decision(key)["features"] == value
        assert store.get_outcome(key)["trace"] == trace
