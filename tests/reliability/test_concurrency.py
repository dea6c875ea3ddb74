"""Concurrency: threads and processes on one SQLite file / one PostgreSQL database, with a learner
publishing snapshots and the servers hot-swapping to them; and proof that no VW workspace is ever
used by two threads at once.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager

import numpy as np
import pylibvw
from sqlalchemy import select

from stopbandit import Selector
from stopbandit.config import SelectorConfig, StoreConfig
from stopbandit.errors import StopbanditError
from stopbandit.replay import migrate
from stopbandit.replay.store import DECISIONS, ReplayStore

from tests.bandit.envs import CELLS, outcome, prompt

THREADS = 4
PER_THREAD = 100


def _serve_process(url: str, proc: int, spill: str, out: str) -> None:
    """One serving process: THREADS threads choose+reward with unique ids; the Selector follows snapshots."""
    cfg = SelectorConfig(seed=proc, follow_interval=0.1, store=StoreConfig(spill_path=spill))
    sel = Selector.open(url, config=cfg)
    errors: list[str] = []
    versions: Counter[str] = Counter()
    lock = threading.Lock()

    swapped = threading.Event()  # a decision served by a snapshot the learner published
    deadline = time.monotonic() + 60.0

    def worker(t: int) -> None:
        rng = np.random.default_rng(proc * 100 + t)
        try:
            # at least PER_THREAD requests, and on until the process serves a published snapshot (a loaded
            # machine can start this process and finish PER_THREAD requests before the learner publishes)
            for i in itertools.count():
                if i >= PER_THREAD and (swapped.is_set() or time.monotonic() > deadline):
                    break
                cell = CELLS[i % len(CELLS)]
                d = sel.choose(prompt(rng, cell), domain=cell[0], request_id=f"p{proc}-t{t}-{i}")
                em, tokens = outcome(rng, cell, d.arm.name)
                sel.reward(d.decision_id, em=em, tokens=tokens)
                with lock:
                    versions[d.policy_version] += 1
                if not d.policy_version.startswith(("fresh-", "ckpt-")):
                    swapped.set()
                if i % 10 == 0:
                    time.sleep(0.01)  # spread the work over the learner's snapshots
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
        if th.is_alive():
            errors.append("worker thread did not finish in 120 s (deadlock?)")
    ok = sel.flush(60)
    h = sel.health()
    sel.close()
    with open(out, "w") as fh:
        json.dump({"errors": errors, "versions": dict(versions), "flushed": ok, "spilled": h.spilled,
                   "rejected": h.rejected, "dropped": h.dropped}, fh)


def test_processes_threads_learner_and_hot_swaps(db_url, tmp_path):
    migrate.upgrade(db_url)
    ctx = mp.get_context("spawn")
    outs = [tmp_path / f"out{p}.json" for p in range(2)]
    procs = [ctx.Process(target=_serve_process, args=(db_url, p, str(tmp_path / f"spill{p}"), str(outs[p])))
             for p in range(2)]
    for p in procs:
        p.start()
    # in this process: a learner that trains and publishes snapshots, and two more serving threads
    learner = Selector.open(db_url, config=SelectorConfig(seed=99, store=StoreConfig(spill_path=str(tmp_path / "L"))),
                            follow=False, snapshot=None)
    local = Selector.open(db_url, config=SelectorConfig(seed=98, follow_interval=0.1,
                                                        store=StoreConfig(spill_path=str(tmp_path / "S"))))
    published: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    served = [0, 0]

    def learn_and_publish() -> None:
        rng = np.random.default_rng(7)
        i = 0
        try:
            while not stop.is_set():
                for _ in range(20):
                    cell = CELLS[i % len(CELLS)]
                    d = learner.choose(prompt(rng, cell), domain=cell[0], request_id=f"L-{i}")
                    learner.reward(d.decision_id, *outcome(rng, cell, d.arm.name))
                    i += 1
                published.append(learner.snapshot())
                time.sleep(0.2)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)
        served.append(i)

    def local_worker(t: int) -> None:
        rng = np.random.default_rng(50 + t)
        try:
            while not stop.is_set():
                cell = CELLS[served[t] % len(CELLS)]
                d = local.choose(prompt(rng, cell), domain=cell[0], request_id=f"local-{t}-{served[t]}")
                local.reward(d.decision_id, *outcome(rng, cell, d.arm.name))
                served[t] += 1
                time.sleep(0.002)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=learn_and_publish)] + [threading.Thread(target=local_worker, args=(t,))
                                                              for t in range(2)]
    for th in threads:
        th.start()
    for p in procs:
        p.join(180)
    stop.set()
    for th in threads:
        th.join(60)
    alive = [p.name for p in procs if p.is_alive()] + [th.name for th in threads if th.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not alive, f"deadlock: {alive} still running"
    assert [p.exitcode for p in procs] == [0, 0]
    assert not errors, errors[:3]
    results = [json.loads(o.read_text()) for o in outs]
    for r in results:
        assert r["errors"] == [] and r["flushed"] and (r["spilled"], r["rejected"], r["dropped"]) == (0, 0, 0), r
    assert local.flush(30) and learner.flush(30)
    local_versions = local.policy_version
    local.close()
    learner.close()

    assert all(sum(r["versions"].values()) >= THREADS * PER_THREAD for r in results)
    expected = sum(sum(r["versions"].values()) for r in results) + served[0] + served[1] + served[2]
    store = ReplayStore(db_url)
    c = store.counts()
    assert c["decisions"] == c["outcomes"] == expected
    assert store.duplicate_keys() == 0
    serving = [v for v, _, _ in store.list_snapshots(1000, role="serving")]
    checkpoints = [v for v, _, _ in store.list_snapshots(1000, role="candidate") if v.startswith("ckpt-")]
    assert sorted(serving) == sorted(published) and len(published) >= 3
    assert c["snapshots"] == len(published) + len(checkpoints)  # the rest: the serving processes' checkpoints
    # every decision logs the version of a policy that existed: a fresh start, a published snapshot, or the
    # checkpoint a process opened after it resumed from (a restart resumes the newest checkpoint)
    with store.engine.connect() as conn:
        logged = Counter(r[0] for r in conn.execute(select(DECISIONS.c.policy_version)))
    assert all(v.startswith("fresh-") or v in published or v in checkpoints for v in logged), \
        set(logged) - set(published) - set(checkpoints)
    swapped = [sum(n for v, n in r["versions"].items() if v in published) for r in results]
    assert all(s > 0 for s in swapped), f"a serving process never hot-swapped: {swapped}"
    assert local_versions in published
    store.dispose()


class WorkspaceGuard:
    """Instruments VW's extension: a workspace used by a second thread while a first thread is in the
    middle of a parse → predict/learn → finish sequence on it (or saving or closing it) is a violation.
    """

    SEQ_START, SEQ_MID, SEQ_END = ("_parse",), ("predict_multi", "learn_multi"), ("_finish_example_multi_ex",)
    WHOLE = ("save", "finish")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.owner: dict[int, int] = {}
        self.violations: list[str] = []
        self.calls = 0
        self._saved: dict[str, object] = {}

    def _check(self, ws, name: str) -> None:
        me = threading.get_ident()
        with self.lock:
            self.calls += 1
            holder = self.owner.get(id(ws))
            if holder is not None and holder != me:
                self.violations.append(f"{name} on workspace {id(ws):x} while another thread is using it")
            return holder

    def _wrap(self, name: str):
        real = getattr(pylibvw.vw, name)
        guard = self

        def wrapped(ws, *args):
            guard._check(ws, name)
            me = threading.get_ident()
            if name in guard.SEQ_START or name in guard.WHOLE:
                with guard.lock:
                    guard.owner[id(ws)] = me
            try:
                return real(ws, *args)
            finally:
                if name in guard.SEQ_END or name in guard.WHOLE:
                    with guard.lock:
                        if guard.owner.get(id(ws)) == me:
                            del guard.owner[id(ws)]

        return real, wrapped

    @contextmanager
    def installed(self):
        names = (*self.SEQ_START, *self.SEQ_MID, *self.SEQ_END, *self.WHOLE)
        for n in names:
            real, wrapped = self._wrap(n)
            self._saved[n] = real
            setattr(pylibvw.vw, n, wrapped)
        try:
            yield self
        finally:
            for n, real in self._saved.items():
                setattr(pylibvw.vw, n, real)


def _hammer(sel: Selector, learner_snapshots: bool, seconds: float) -> list[BaseException]:
    errors: list[BaseException] = []
    stop = threading.Event()

    def worker(t: int) -> None:
        rng = np.random.default_rng(t)
        try:
            i = 0
            while not stop.is_set():
                cell = CELLS[i % len(CELLS)]
                d = sel.choose(prompt(rng, cell), domain=cell[0])
                sel.reward(d.decision_id, *outcome(rng, cell, d.arm.name))
                i += 1
        except BaseException as exc:  # noqa: BLE001 - returned
            errors.append(exc)

    def swapper() -> None:
        try:
            while not stop.is_set():
                if learner_snapshots:
                    v = sel.snapshot()  # saves every head while the workers learn on them
                    sel.load_snapshot(v)  # and swaps the live policy under them
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 - returned
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)] + [threading.Thread(target=swapper)]
    for th in threads:
        th.start()
    time.sleep(seconds)
    stop.set()
    for th in threads:
        th.join(30)
        assert not th.is_alive(), "deadlock"
    return errors


def test_no_vw_workspace_is_ever_used_by_two_threads_at_once(sqlite_url):
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads as often as possible, to give a race every chance
    try:
        sel = Selector.open(sqlite_url, seed=1, follow=False)
        with WorkspaceGuard().installed() as guard:
            errors = _hammer(sel, learner_snapshots=True, seconds=1.5)
        sel.close()
        assert not errors, errors[:3]
        assert guard.calls > 1000 and guard.violations == [], guard.violations[:5]

        # the instrument has teeth: without VWHead's lock, the same load trips it
        class NoLock:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        sel = Selector.open(sqlite_url, seed=1, follow=False, snapshot=None)
        for head in (sel.policy.em, sel.policy.tokens):
            head._lock = NoLock()
        with WorkspaceGuard().installed() as control:
            _hammer(sel, learner_snapshots=False, seconds=1.0)
        sel.close()
        assert control.violations, "the guard saw no violation even without locks: it proves nothing"
    finally:
        sys.setswitchinterval(old)


def test_close_while_serving_does_not_hang_or_lose_what_was_returned(sqlite_url):
    """close() while other threads keep calling: it returns promptly, later calls get a clear error,
    and every decision that was returned (and every reward that returned) is in the store."""
    sel = Selector.open(sqlite_url, seed=1, config=SelectorConfig(reward_window_s=0.05,
                                                                  store=StoreConfig(flush_interval=0.01)))
    stop = threading.Event()
    errors: list[BaseException] = []
    chosen: list[str] = []
    rewarded: list[str] = []

    def worker() -> None:
        while not stop.is_set():
            try:
                d = sel.choose("q", domain="math")
                chosen.append(d.decision_id)
                sel.reward(d.decision_id, em=1.0, tokens=1)
                rewarded.append(d.decision_id)
            except Exception as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)
                return

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    time.sleep(0.3)
    t = time.monotonic()
    sel.close()
    assert time.monotonic() - t < 15
    stop.set()
    for th in threads:
        th.join(10)
        assert not th.is_alive()
    assert errors and all(isinstance(e, StopbanditError) and "closed" in str(e) for e in errors), errors[:3]
    store = ReplayStore(sqlite_url)
    with store.engine.connect() as conn:
        stored = {r[0] for r in conn.execute(select(DECISIONS.c.request_key))}
    assert set(chosen) <= stored and len(stored) == len(chosen)
    outcomes = {k: store.get_outcome(k)["status"] for k in rewarded}
    assert all(v in ("ok", "late") for v in outcomes.values())
    assert store.counts()["outcomes"] == len(chosen)  # every window settled at close (reward or default)
    store.dispose()
