"""A Selector pointed at a production store: checkpoints and restarts, refused snapshots, λ writes off the
request path, bounded per-domain state."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np
import pytest

from stopbandit import Selector
from stopbandit.bandit.snapshot import SIGNATURE_FIELD, compute_checksum, pack, unpack
from stopbandit.bandit.vw import shared_line
from stopbandit.config import SelectorConfig
from stopbandit.errors import SnapshotError
from stopbandit.replay.store import ReplayStore
from stopbandit.sim import Simulator
from tests.control.sim_loop import serve

FAST = SelectorConfig(follow_interval=0.05)
LINES = ("What is 17 * 23?", "Name the capital of France.", "Prove that the sum of two even numbers is even.")


def until(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)
    return cond()


def scores(sel: Selector) -> list[np.ndarray]:
    out = []
    for i, text in enumerate(LINES):
        em, tok = sel.policy.predict_heads(shared_line(sel.extractor.extract(text, ("math", "trivia", "logic")[i])))
        out += [np.asarray(em), np.asarray(tok)]
    return out


# -- checkpoints and restarts ------------------------------------------------------------------------------------
def test_a_restarted_selector_resumes_the_policy_it_learned(sqlite_url):
    sel = Selector.open(sqlite_url, seed=1, follow=False)
    serve(sel, Simulator(seed=1).stream(2000))
    before = scores(sel)
    t_before = sel.policy.t
    sel.close()  # checkpoints at close

    store = ReplayStore(sqlite_url)
    versions = [v for v, _, _ in store.list_snapshots(role="candidate")]
    assert len(versions) == 1 and versions[0].startswith("ckpt-")
    assert store.latest_snapshot_version() is None  # a checkpoint is no serving snapshot: nobody hot-swaps to it
    store.dispose()

    again = Selector.open(sqlite_url, seed=2, follow=False)
    assert again.policy_version == versions[0] and again.policy.t == t_before
    for a, b in zip(before, scores(again)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    fresh = Selector.open(f"{sqlite_url}-other.db", seed=2, follow=False)
    assert any(not np.allclose(a, b) for a, b in zip(scores(fresh), before))  # what it resumed is no fresh policy
    fresh.close()
    again.close()


def test_checkpoints_are_taken_every_n_outcomes_off_the_request_path(sqlite_url):
    sel = Selector.open(sqlite_url, seed=1, config=FAST.with_(checkpoint_every=150, checkpoint_interval_s=0))
    serve(sel, Simulator(seed=1).stream(400))
    assert until(lambda: sel.health().last_checkpoint is not None, 10)
    first = sel.health().last_checkpoint
    assert first.startswith("ckpt-")
    store = ReplayStore(sqlite_url)
    assert first in {v for v, _, _ in store.list_snapshots(role="candidate")}
    assert sel.policy_version.startswith("fresh-")  # its own checkpoint is never swapped to
    store.dispose()
    sel.close()


def test_a_newer_serving_snapshot_wins_over_an_older_checkpoint(sqlite_url):
    a = Selector.open(sqlite_url, seed=1, follow=False)
    serve(a, Simulator(seed=1).stream(300))
    a.close()  # checkpoint
    trainer = Selector.open(sqlite_url, seed=3, follow=False, snapshot=None)
    serve(trainer, Simulator(seed=3).stream(300))
    serving = trainer.snapshot()
    trainer.close()  # nothing learned since its snapshot: no checkpoint
    b = Selector.open(sqlite_url, seed=4, follow=False)
    assert b.policy_version == serving
    b.close()


def test_checkpoints_can_be_turned_off_and_frozen_selectors_store_none(sqlite_url):
    off = Selector.open(sqlite_url, seed=1, follow=False, checkpoint_every=0, checkpoint_interval_s=0)
    serve(off, Simulator(seed=1).stream(200))
    off.close()
    frozen = Selector.open(sqlite_url, seed=1, follow=False, learn=False)
    serve(frozen, Simulator(seed=2).stream(200))
    frozen.close()
    store = ReplayStore(sqlite_url)
    assert store.list_snapshots(role="candidate") == []
    store.dispose()


# -- tampered or broken snapshots never stop serving -------------------------------------------------------------
def _tampered(base_model: bytes, base_meta: dict, change) -> tuple[bytes, dict, str]:
    model, meta = bytes(base_model), {**base_meta, "version": f"bad-{time.time_ns()}"}
    model, meta = change(model, meta)
    return model, meta, compute_checksum(model, meta)


def _cut(model: bytes, meta: dict) -> tuple[bytes, dict]:
    (n0, l0), (n1, l1) = meta["blobs"]
    cut = int(l0 * 0.7) | 1  # not on a weight boundary
    return model[:cut] + model[l0:], {**meta, "blobs": [[n0, cut], [n1, l1]]}


TAMPERS = {
    "nan prior": (lambda m, meta: (m, {**meta, "extra": {"prior": {"math": float("nan")}}}), "extra.prior"),
    "huge prior": (lambda m, meta: (m, {**meta, "extra": {"prior": {"math": 1e308}}}), "extra.prior"),
    "non-string policy": (lambda m, meta: (m, {**meta, "policy": 7}), "'policy' must be a string"),
    "non-string prior key": (lambda m, meta: (m, {**meta, "extra": {"prior": [1, 2]}}), "extra.prior"),
    "huge lam": (lambda m, meta: (m, {**meta, "lam": 1e308}), "'lam'"),
    "t is text": (lambda m, meta: (m, {**meta, "t": "many"}), "'t'"),
    "positional vw argument": (lambda m, meta: (m, {**meta, "vw_args": {
        k: v + " /dev/stdin" for k, v in meta["vw_args"].items()}}), "positional VW argument"),
    "option without value": (lambda m, meta: (m, {**meta, "vw_args": {
        k: v + " -b" for k, v in meta["vw_args"].items()}}), "without its value"),
    "truncated model": (_cut, "truncated or corrupt"),
}


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_a_bad_serving_snapshot_is_refused_once_and_serving_goes_on(sqlite_url, name):
    change, message = TAMPERS[name]
    sel = Selector.open(sqlite_url, seed=1, config=FAST)
    serve(sel, Simulator(seed=1).stream(200))
    stored = sel.store.get_snapshot(sel.snapshot())
    good = sel.policy_version  # what it serves (its own snapshot is not swapped to)
    model, meta, checksum = _tampered(stored.model, stored.meta, change)
    with pytest.raises(SnapshotError, match=message):
        unpack(model, meta, checksum, arms=sel.arms)
    sel.store.save_snapshot(meta["version"], model, meta, checksum)
    assert until(lambda: sel.health().snapshot_error is not None, 10)
    h = sel.health()
    assert h.snapshot_error.startswith(meta["version"]) and h.policy_version == good
    served = serve(sel, Simulator(seed=2).stream(50))  # choose and reward go on, on the last good policy
    assert len(served) == 50 and sel.policy_version == good
    assert all(math.isfinite(p) for p in sel.choose("What is 2 + 2?", domain="math").probabilities.values())
    assert sel.health().store_ok  # refused once, not retried as a store fault every tick
    sel.close()


def test_signed_snapshots_with_a_key_from_the_environment(sqlite_url, monkeypatch):
    monkeypatch.setenv("STOPBANDIT_SNAPSHOT_KEY", "first key")
    a = Selector.open(sqlite_url, seed=1, follow=False)
    serve(a, Simulator(seed=1).stream(200))
    signed = a.snapshot()
    stored = a.store.get_snapshot(signed)
    assert isinstance(stored.meta.get(SIGNATURE_FIELD), str)
    a.close()
    b = Selector.open(sqlite_url, seed=1, follow=False)  # same key: loads
    assert b.policy_version == signed
    b.close()

    # unsigned (saved without a key), then tampered with a recomputed checksum: both refused under the key
    unsigned = pack(b.policy if False else _fresh_policy(sqlite_url), lam=0.2, feature_config=stored.meta["features"])
    with pytest.raises(SnapshotError, match="is not signed"):
        unpack(unsigned.model, unsigned.meta, unsigned.checksum, key=b"first key")
    meta = {**stored.meta, "lam": 0.9}
    with pytest.raises(SnapshotError, match="signature does not match"):
        unpack(stored.model, meta, compute_checksum(stored.model, meta), key=b"first key")

    monkeypatch.setenv("STOPBANDIT_SNAPSHOT_KEY", "another key")
    with pytest.raises(SnapshotError, match="signature does not match"):
        Selector.open(sqlite_url, seed=1, follow=False)
    monkeypatch.delenv("STOPBANDIT_SNAPSHOT_KEY")
    c = Selector.open(sqlite_url, seed=1, follow=False)  # no key: signatures are not checked
    assert c.policy_version == signed
    c.close()


def _fresh_policy(url: str):
    from stopbandit.bandit.policy import make_policy

    cfg = SelectorConfig()
    return make_policy(cfg.policy, cfg.arms, cfg.exploration, cfg.token_scale)


# -- λ writes never block the reward path --------------------------------------------------------------------------
HOLD_LOCK = """
import sqlite3, sys, time, pathlib
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
con.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
release = pathlib.Path(sys.argv[2])
while not release.exists():
    time.sleep(0.02)
con.execute("ROLLBACK")
"""


def test_controller_lambda_moves_do_not_wait_for_a_locked_store(sqlite_url, tmp_path):
    from stopbandit.control import ControlledSelector, ControllerConfig, LambdaController, Target

    sel = Selector.open(sqlite_url, lam=0.1, seed=3, follow=False)
    ctl = LambdaController(Target.token_budget(300), ControllerConfig(interval=25, max_step=0.1))
    cs = ControlledSelector(sel, controller=ctl, seed=3)
    serve(cs, Simulator(seed=4).stream(50))
    assert sel.flush()
    release = tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, sqlite_url.removeprefix("sqlite:///"), str(release)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        moves_before = cs.health().controller.moves
        serve(cs, Simulator(seed=5).stream(100))  # every reward returns while another process holds the lock
        moves = cs.health().controller.moves - moves_before
        assert moves >= 2 and holder.poll() is None  # the lock was still held when the λ moves were made
        assert sel.health().lambda_pending >= 1  # ... so they are waiting to be written, not lost
    finally:
        release.touch()
        holder.wait(30)
    assert sel.flush(30)
    assert sel.health().lambda_pending == 0
    stored = [c for c in sel.store.lambda_history(1000) if c.who == "controller"]
    assert len(stored) == cs.health().controller.moves and stored[0].value == pytest.approx(sel.lam)
    cs.close()


def test_set_lambda_is_kept_over_the_stores_older_value_until_written(sqlite_url, tmp_path):
    sel = Selector.open(sqlite_url, lam=0.2, seed=1, config=FAST)
    release = tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, sqlite_url.removeprefix("sqlite:///"), str(release)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        sel.set_lambda(0.6, reason="budget cut")
        time.sleep(10 * FAST.follow_interval)  # the follower reads λ = 0.2 from the store meanwhile
        assert sel.lam == 0.6 and sel.choose("x", domain="math").lam == 0.6
    finally:
        release.touch()
        holder.wait(30)
    assert sel.flush(30)
    assert sel.store.current_lambda().value == 0.6
    sel.close()


# -- per-domain state is bounded -----------------------------------------------------------------------------------
def test_many_distinct_domains_fold_into_one_bucket(sqlite_url):
    sel = Selector.open(sqlite_url, seed=1, follow=False, max_domains=20)
    for i in range(3000):
        d = sel.choose("What is 2 + 2?", domain=f"tenant-{i}")
        sel.reward(d.decision_id, em=float(i % 3 == 0), tokens=100)
    h = sel.health()
    assert h.max_domains == 20 and h.domains_tracked <= 21 and h.domains_folded == 3000 - 20
    version = sel.snapshot()
    prior = sel.store.get_snapshot(version).meta["extra"]["prior"]
    assert len(prior) <= 21 and "(other)" in prior
    # an untracked domain reads the shared bucket's rate, a tracked one its own
    assert sel.extractor.extract("q", "tenant-99999")["prior"] == round(prior["(other)"], 4)
    assert sel.extractor.extract("q", "tenant-0")["prior"] == round(prior["tenant-0"], 4)
    sel.close()


def test_the_guardrail_tests_at_most_max_domains_and_folds_the_rest(sqlite_url):
    from stopbandit.control import ControlledSelector, GuardrailConfig

    sel = Selector.open(sqlite_url, seed=1, follow=False, max_domains=10)
    cs = ControlledSelector(sel, guardrail=GuardrailConfig(holdout_share=0.5, max_domains=10), seed=1)
    for i in range(600):
        d = cs.choose("What is 2 + 2?", domain=f"tenant-{i}")
        cs.reward(d.decision_id, em=1.0, tokens=100)
    h = cs.health()
    assert len(h.guardrail) <= 11 and "(other)" in h.guardrail and h.guardrail_folded > 0
    assert h.selector.domains_tracked <= 11 and h.selector.domains_folded == 600 - 10
    cs.close()
