"""Crash safety: ``kill -9`` of a serving process, with and without a store outage, in both write modes.

The child (``child_serve.py``) acknowledges every ``choose``/``reward`` that
returned, with a timestamp. After the kill, a new Selector on the same store
and spill prefix adopts the child's orphaned spill file and replays it; then
the database must hold

* durable mode: every acknowledged decision and outcome;
* queued mode: every acknowledged row except those acknowledged within the
  last flush window before the kill (``flush_interval`` plus one commit); the
  number lost is printed;

and in both: nothing twice, nothing that was never attempted, every outcome's
decision, and no spill file left behind. The outage cases kill once the child
spills; the slow-disk case (every fsync 1.5 s) 1.5 s after that, and
the slow-disk replay case (every fsync 2.5 s) once the store has been back
for 3.5 s. A child whose loop is faster than the store holds the bound of a
writer that falls behind, ``BEHIND_LOSS_WINDOW_S`` (``max_lag``, the store
timeout, plus one commit cut at the timeout). The loaded
cases run two CPU-bound processes and a process that keeps reading the store
next to the child, on a 2-core machine: there the queued mode holds the
looser bound ``LOADED_LOSS_WINDOW_S`` (the flush window, plus the longest a
commit may take, ``store.timeout``, plus scheduling delay); the figures
measured are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from stopbandit import Selector
from stopbandit.config import SelectorConfig, StoreConfig
from stopbandit.replay.store import DECISIONS, OUTCOMES

from tests.reliability.helpers import until

ROOT = Path(__file__).resolve().parents[2]
FLUSH_INTERVAL = 0.1
# rows acknowledged this long before the kill must be stored in queued mode: the flush window
# plus one commit of a batch on a loaded 2-core CI machine
LOSS_WINDOW_S = FLUSH_INTERVAL + 1.0
STORE_TIMEOUT = 1.0  # the child's [store] timeout: no commit holds its rows in memory longer
# under load: the flush window, one commit cut at its deadline, and the CPU the writer thread had to wait for
LOADED_LOSS_WINDOW_S = FLUSH_INTERVAL + STORE_TIMEOUT + 2.0
# a writer that falls behind (rows come faster than it commits them) spills its queue once the oldest row has
# waited max_lag (the store timeout); a row may also wait out the commit in flight, itself cut at the timeout
BEHIND_LOSS_WINDOW_S = FLUSH_INTERVAL + 2 * STORE_TIMEOUT


def read_acks(path: Path) -> dict[str, dict[str, float]]:
    acks: dict[str, dict[str, float]] = {"d": {}, "o": {}}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            acks[parts[0]][parts[1]] = float(parts[2])
    return acks


def n_acked(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\nd ")
    except FileNotFoundError:
        return 0


def stored_keys(sel: Selector) -> tuple[set[str], set[str], int, int]:
    with sel.store.engine.connect() as conn:
        d = [r[0] for r in conn.execute(select(DECISIONS.c.request_key))]
        o = [r[0] for r in conn.execute(select(OUTCOMES.c.decision_key))]
    return set(d), set(o), len(d), len(o)


def spilled(spill: Path) -> bool:
    return spill.parent.exists() and any(p.name.endswith(".jsonl") for p in spill.parent.iterdir())


def serve_and_kill(url: str, server, tmp_path: Path, *, durable: bool, during_outage: bool,
                   slow_fsync: float = 0.0, hold: float = 0.0, back_for: float | None = None,
                   min_acks: int = 300) -> tuple[dict[str, dict[str, float]], float, Path]:
    """Run a serving child, take the store down if asked, ``kill -9`` it; returns (acks, kill time, spill prefix).

    With an outage the kill comes once the child spills, ``hold`` seconds
    later; with ``back_for`` the store comes back then, and the kill that
    many seconds after (while the child replays its spill).
    """
    spill = tmp_path / "spill" / "sb"
    acks = tmp_path / "acks"
    flag = tmp_path / "outage"
    Selector.open(url, follow=False).close()  # schema in place before the child starts
    cmd = [sys.executable, "-m", "tests.reliability.child_serve", url, str(acks), str(spill),
           "--flush-interval", str(FLUSH_INTERVAL), "--timeout", str(STORE_TIMEOUT)]
    if durable:
        cmd.append("--durable")
    if server is None:
        cmd += ["--outage-flag", str(flag)]
    if slow_fsync:
        cmd += ["--slow-fsync", str(slow_fsync)]
    log = open(tmp_path / "child.log", "wb")  # noqa: SIM115 - closed below
    child = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert until(lambda: n_acked(acks) >= min_acks, 120), (tmp_path / "child.log").read_text()[-3000:]
        if during_outage:
            if server is not None:
                server.stop("fast")
            else:
                flag.touch()
            start = n_acked(acks)
            assert until(lambda: n_acked(acks) >= start + 300, 60), (tmp_path / "child.log").read_text()[-3000:]
            # kill only once the outage has reached the writer: rows must be in the spill, not just queued
            assert until(lambda: spilled(spill), 30), "the child never spilled: " + \
                (tmp_path / "child.log").read_text()[-3000:]
            time.sleep(hold)
            if back_for is not None:
                flag.unlink()
                time.sleep(back_for)
        child.send_signal(signal.SIGKILL)
        t_kill = time.monotonic()
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
        log.close()
        if during_outage:
            if server is not None:
                server.start()
            flag.unlink(missing_ok=True)
    assert child.returncode == -signal.SIGKILL
    if during_outage and back_for is None:
        assert spilled(spill), "the child never spilled"
    return read_acks(acks), t_kill, spill


def check_recovery(url: str, spill: Path, acked: dict[str, dict[str, float]], t_kill: float, *, durable: bool,
                   label: str, window: float = LOSS_WINDOW_S) -> None:
    """Adopt the dead child's spill and check what the database holds against what the child acknowledged."""
    sel = Selector.open(url, config=SelectorConfig(store=StoreConfig(spill_path=str(spill))), follow=False)
    assert sel.drain(60), sel.health()
    d_keys, o_keys, n_d, n_o = stored_keys(sel)
    h = sel.writer.health()
    sel.close()

    assert n_d == len(d_keys) and n_o == len(o_keys)  # nothing twice
    assert o_keys <= d_keys  # every outcome has its decision
    last = max(int(k[1:]) for k in acked["d"])
    attempted = {f"c{i}" for i in range(last + 2)}  # what was acked, plus the one in flight at the kill
    assert d_keys <= attempted and o_keys <= attempted
    assert h.rejected == 0 and h.dropped == 0
    assert sorted(p.name for p in spill.parent.iterdir() if "rejected" not in p.name) == []  # orphan adopted, removed
    lost = {kind: {k: t_kill - t for k, t in acked[kind].items() if k not in (d_keys if kind == "d" else o_keys)}
            for kind in ("d", "o")}
    print(f"\n{label}: acked {len(acked['d'])} decisions + {len(acked['o'])} outcomes; stored {n_d} + {n_o}; "
          f"lost {len(lost['d'])} + {len(lost['o'])} "
          f"(oldest lost acked {max([*lost['d'].values(), *lost['o'].values(), 0.0]):.3f} s before the kill)")
    if durable:
        assert lost == {"d": {}, "o": {}}
    else:
        too_old = {k: age for kind in lost for k, age in lost[kind].items() if age > window}
        oldest = sorted(too_old.items(), key=lambda kv: -kv[1])[:5]
        assert not too_old, (f"lost {len(too_old)} rows acknowledged more than {window} s before the kill; "
                             f"the oldest: {oldest}")


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "queued"])
@pytest.mark.parametrize("during_outage", [False, True], ids=["store-up", "store-down"])
def test_kill_9_loses_at_most_the_flush_window(outage_db, tmp_path, durable, during_outage):
    url, server = outage_db
    acked, t_kill, spill = serve_and_kill(url, server, tmp_path, durable=durable, during_outage=during_outage)
    check_recovery(url, spill, acked, t_kill, durable=durable,
                   label=f"{'durable' if durable else 'queued'} store-{'down' if during_outage else 'up'}")


def test_kill_9_of_a_serving_loop_faster_than_the_store_loses_at_most_max_lag_and_one_commit(outage_db, tmp_path):
    """The child's loop makes rows (no I/O between requests) faster than the writer thread can commit them.

    The writer's share of the interpreter is what the serving thread leaves
    it, so a queue that only waits for commits grows without bound (its
    oldest rows seconds old at the kill). However fast rows come, none waits
    in memory longer than ``max_lag`` (the store timeout) plus the commit in
    flight, itself cut at the timeout (``BEHIND_LOSS_WINDOW_S``): a writer
    that falls behind spills its queue and replays it. The kill comes after
    30,000 acknowledged decisions with the store up.
    """
    url, server = outage_db
    acked, t_kill, spill = serve_and_kill(url, server, tmp_path, durable=False, during_outage=False,
                                          min_acks=30_000)
    check_recovery(url, spill, acked, t_kill, durable=False, window=BEHIND_LOSS_WINDOW_S,
                   label="queued store-up, a loop faster than the store")


def test_kill_9_during_an_outage_on_a_slow_disk_loses_at_most_the_flush_window(sqlite_url, tmp_path):
    """Every fsync takes 1.5 s, and the kill comes 1.5 s into the spilling.

    A killed process loses what it has not *written*; fsync only matters if
    the machine goes down. So queued rows must reach the spill file within the
    flush window however slow the disk is: they may not wait in the writer's
    memory behind an fsync (which is what the writer did before issue 10's fix:
    it fsync'd every spilled batch itself, a batch at a time).
    """
    acked, t_kill, spill = serve_and_kill(sqlite_url, None, tmp_path, durable=False, during_outage=True,
                                          slow_fsync=1.5, hold=1.5)
    check_recovery(sqlite_url, spill, acked, t_kill, durable=False, label="queued store-down, slow disk")


def test_kill_9_while_replaying_on_a_slow_disk_loses_at_most_max_lag_and_one_commit(sqlite_url, tmp_path):
    """Every fsync takes 2.5 s; the store comes back after 1 s of spilling, and the kill 3.5 s after that.

    Taking the spill file for replay may not make the writer wait for the
    disk: rows queued meanwhile would wait in memory for seconds (the old
    writer waited out two fsyncs in flight and one of its own). The child's
    loop is faster than the store, so the bound is a writer's that falls
    behind (``BEHIND_LOSS_WINDOW_S``); while the backlog replays, new rows go
    to the spill between replay steps.
    """
    acked, t_kill, spill = serve_and_kill(sqlite_url, None, tmp_path, durable=False, during_outage=True,
                                          slow_fsync=2.5, hold=1.0, back_for=3.5)
    check_recovery(sqlite_url, spill, acked, t_kill, durable=False, window=BEHIND_LOSS_WINDOW_S,
                   label="queued, replaying, slow disk")


_HOG = "while True: pass"
_READER = """
import sys, time
from sqlalchemy import create_engine, text
engine = create_engine(sys.argv[1])
while True:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT count(*), sum(o.tokens) FROM decisions d JOIN outcomes o "
                              "ON o.decision_key = d.request_key")).all()
    except Exception:
        time.sleep(0.05)
"""


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "queued"])
def test_kill_9_under_cpu_load_and_a_busy_reader(outage_db, tmp_path, durable):
    """Two CPU hogs and a process reading the whole log in a loop share the machine with the child."""
    url, server = outage_db
    load = [subprocess.Popen([sys.executable, "-c", _HOG]) for _ in range(2)]
    load.append(subprocess.Popen([sys.executable, "-c", _READER, url], cwd=ROOT, stderr=subprocess.DEVNULL))
    try:
        acked, t_kill, spill = serve_and_kill(url, server, tmp_path, durable=durable, during_outage=False,
                                              min_acks=200 if durable else 3000)
    finally:
        for p in load:
            p.kill()
            p.wait(10)
    check_recovery(url, spill, acked, t_kill, durable=durable, window=LOADED_LOSS_WINDOW_S,
                   label=f"{'durable' if durable else 'queued'} store-up, 2 CPU hogs + a busy reader")
