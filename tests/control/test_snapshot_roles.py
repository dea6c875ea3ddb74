"""Snapshot roles (migration 0005): a candidate is never followed; promotion makes it serve."""

from __future__ import annotations

import time

import pytest

from stopbandit import Selector
from stopbandit.bandit.vw import shared_line
from stopbandit.config import SelectorConfig
from stopbandit.control.experiment import promote
from stopbandit.errors import InputError
from stopbandit.replay.store import ReplayStore
from stopbandit.sim import Simulator
from tests.control.sim_loop import serve

FOLLOW_S = 0.1
FAST = SelectorConfig(follow_interval=FOLLOW_S)


def until(cond, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_store_latest_is_the_newest_serving_snapshot(db_url):
    store = ReplayStore(db_url, migrate_schema=True)
    meta = {"version": "x"}
    store.save_snapshot("s1", b"m1", meta, "c1", ts=1.0)
    store.save_snapshot("c1", b"m2", meta, "c2", ts=2.0, role="candidate")
    assert store.latest_snapshot_version() == "s1"
    assert store.latest_snapshot_version("candidate") == "c1"
    assert store.get_snapshot("latest").version == "s1" and store.get_snapshot().role == "serving"
    got = store.get_snapshot("c1")  # a candidate is loadable by its version
    assert (got.version, got.model, got.role) == ("c1", b"m2", "candidate")
    assert [v for v, _, _ in store.list_snapshots()] == ["c1", "s1"]
    assert [v for v, _, _ in store.list_snapshots(role="candidate")] == ["c1"]
    with pytest.raises(InputError, match=r"snapshot role must be one of \['serving', 'candidate'\], got 'draft'"):
        store.save_snapshot("d1", b"m3", meta, "c3", role="draft")
    with pytest.raises(InputError, match="got 'draft'"):
        store.latest_snapshot_version("draft")
    assert store.counts()["snapshots"] == 2
    store.dispose()


def test_candidate_is_not_hot_swapped_but_serving_is_and_promote_makes_it_followed(sqlite_url):
    trainer = Selector.open(sqlite_url, lam=0.25, seed=1, follow=False, snapshot=None)
    serve(trainer, Simulator(seed=1).stream(300))
    first = trainer.snapshot()  # serving
    serving = Selector.open(sqlite_url, seed=2, config=FAST, snapshot="latest")
    assert serving.policy_version == first

    serve(trainer, Simulator(seed=2).stream(300))
    candidate = trainer.snapshot(role="candidate")
    time.sleep(10 * FOLLOW_S)  # many follower ticks
    assert serving.policy_version == first  # a candidate is never followed
    late = Selector.open(sqlite_url, seed=3, follow=False)  # nor loaded as "latest" by a new Selector
    assert late.policy_version == first
    late.close()

    serve(trainer, Simulator(seed=3).stream(100))
    second = trainer.snapshot()  # a serving one is
    assert until(lambda: serving.policy_version == second, 5)

    store = ReplayStore(sqlite_url)
    p = promote(store, version=candidate, reason="candidate wins", who="test")
    assert p.previous == second and p.new_version != candidate
    newest = store.get_snapshot("latest")
    assert newest.version == p.new_version and newest.role == "serving"
    assert newest.model == store.get_snapshot(candidate).model
    assert store.get_snapshot(candidate).role == "candidate"  # the evaluated row is kept as it was
    extra = newest.meta["extra"]
    assert (extra["promoted_from"], extra["promote_reason"], extra["promoted_by"]) == (candidate, "candidate wins",
                                                                                       "test")
    assert extra["promoted_at"] == pytest.approx(time.time(), abs=60)
    audit = store.current_lambda()
    assert audit.who == "test" and f"challenger snapshot {candidate} now serves as {p.new_version}" in audit.reason
    store.dispose()
    assert until(lambda: serving.policy_version == p.new_version, 5)  # promotion makes it followed
    serving.close()
    trainer.close()


def test_a_selector_opened_on_a_candidate_serves_it_and_a_fresh_store_has_no_latest(sqlite_url):
    trainer = Selector.open(sqlite_url, seed=1, follow=False, snapshot=None)
    serve(trainer, Simulator(seed=1).stream(200))
    candidate = trainer.snapshot(role="candidate")
    trainer.close()
    fresh = Selector.open(sqlite_url, seed=2, follow=False)  # only a candidate in the store: nothing to load
    assert fresh.policy_version.startswith("fresh-")
    fresh.close()
    named = Selector.open(sqlite_url, seed=2, follow=False, snapshot=candidate)
    assert named.policy_version == candidate
    named.close()
    sel = Selector.open(sqlite_url, follow=False)
    with pytest.raises(InputError, match=r"snapshot role must be one of"):
        sel.snapshot(role="both")
    sel.close()


def test_frozen_selector_follows_lambda_only_and_never_learns(sqlite_url):
    champion = Selector.open(sqlite_url, lam=0.2, seed=1, follow=False, snapshot=None)
    serve(champion, Simulator(seed=1).stream(300))
    candidate = champion.snapshot(role="candidate")
    frozen = Selector.open(sqlite_url, seed=2, config=FAST, snapshot=candidate, follow="lambda", learn=False)
    line = shared_line(frozen.extractor.extract("What is 17 * 23?", "math"))
    t0 = frozen.policy.t
    before = frozen.policy.predict_heads(line)
    served = serve(frozen, Simulator(seed=4).stream(200))
    assert frozen.policy.t == t0 and frozen.health().rewards == 200
    after = frozen.policy.predict_heads(line)
    assert (before[0] == after[0]).all() and (before[1] == after[1]).all()
    champion.set_lambda(0.45, reason="test")
    newer = champion.snapshot()  # serving: a following champion would swap; the frozen one must not
    assert until(lambda: frozen.lam == 0.45, 5)
    time.sleep(5 * FOLLOW_S)
    assert frozen.policy_version == candidate != newer
    frozen.flush()
    assert frozen.store.get_decision(served[0].decision_id)["policy_version"] == candidate
    with pytest.raises(InputError, match=r"follow must be one of \[True, False, 'all', 'lambda'\], got 'snapshots'"):
        Selector.open(sqlite_url, follow="snapshots")
    frozen.close()
    champion.close()
