"""The Selector contract: learning, λ at runtime, propensities, hot swap, store outages."""

from __future__ import annotations

import math
import multiprocessing as mp
import threading
import time

import numpy as np
import pytest

from stopbandit import Selector
from stopbandit.bandit.arms import Arm
from stopbandit.errors import ConflictError, InputError, SnapshotError, UnknownDecisionError
from stopbandit.replay.store import ReplayStore
from tests.bandit.envs import ARM_NAMES, CELLS, PROMPTS, best_arm, outcome, prompt


def train(sel: Selector, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        cell = CELLS[i % len(CELLS)]
        d = sel.choose(prompt(rng, cell), domain=cell[0])
        em, tokens = outcome(rng, cell, d.arm.name)
        sel.reward(d.decision_id, em=em, tokens=tokens)


def greedy(sel: Selector, cell: tuple[str, str], n: int = 30) -> str:
    """The arm the policy rates best for most prompts of the cell (exploration off)."""
    from stopbandit.bandit.vw import shared_line

    rng = np.random.default_rng(123)
    votes = []
    for _ in range(n):
        feats = sel.extractor.extract(prompt(rng, cell), cell[0])
        _, scores = sel.policy.decide(shared_line(feats), sel.lam)
        votes.append(ARM_NAMES[int(np.argmax(scores))])
    return max(set(votes), key=votes.count)


@pytest.fixture
def sel(sqlite_url):
    s = Selector.open(sqlite_url, lam=0.2, token_scale=1000, seed=7)
    yield s
    s.close()


def test_cells_are_distinguishable_by_features(sel):
    rng = np.random.default_rng(0)
    for c in CELLS:
        others = {sel.extractor.extract(prompt(rng, o), o[0])["dd"] for o in CELLS if o != c}
        assert sel.extractor.extract(prompt(rng, c), c[0])["dd"] not in others


def test_learns_best_arm_per_domain_and_difficulty(sel):
    train(sel, 5000)
    got = {cell: greedy(sel, cell) for cell in CELLS}
    assert got == {cell: best_arm(cell) for cell in CELLS}


def test_lambda_shifts_choices_immediately(sel):
    train(sel, 3000)
    sel.set_lambda(0.0, reason="accuracy first")
    assert {greedy(sel, c) for c in CELLS} <= {"full", "careful", "balanced", "aggressive"}
    tokens_at = {}
    for lam in (0.0, 1.5):
        sel.set_lambda(lam, reason=f"test {lam}")
        picks = [sel.choose(PROMPTS[c[1]], domain=c[0]) for c in CELLS for _ in range(50)]
        assert all(d.lam == lam for d in picks)
        tokens_at[lam] = np.mean([{"full": 1000, "careful": 700, "balanced": 500, "aggressive": 300}[d.arm.name]
                                  for d in picks])
    assert tokens_at[1.5] < tokens_at[0.0] - 150
    assert greedy(sel, ("math", "hard")) in ("balanced", "aggressive")  # at λ=1.5 tokens dominate


def test_logged_propensities_are_the_probabilities_used(sel, sqlite_url):
    decisions = [sel.choose(PROMPTS["hard"], domain="math", request_id=f"p{i}") for i in range(200)]
    sel.flush()
    store = ReplayStore(sqlite_url)
    for d in decisions:
        row = store.get_decision(d.decision_id)
        assert row["arm"] == d.arm.name
        assert row["propensity"] == pytest.approx(d.probability, abs=1e-12)
        assert row["probabilities"][d.arm.name] == pytest.approx(d.probability, abs=1e-12)
        assert math.fsum(row["probabilities"].values()) == pytest.approx(1.0)
        assert row["probabilities"] == pytest.approx(d.probabilities)
    store.dispose()


def test_chosen_arm_frequencies_follow_the_logged_probabilities(sqlite_url):
    sel = Selector.open(sqlite_url, seed=3)
    picks = [sel.choose("hello there", domain="trivia") for _ in range(4000)]
    sel.close()
    probs = picks[0].probabilities  # untrained policy: identical distribution for identical requests
    assert all(p.probabilities == probs for p in picks)
    for name, p in probs.items():
        freq = np.mean([d.arm.name == name for d in picks])
        assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / 4000) + 1e-9


def test_generated_decision_ids_are_unique_and_time_ordered(sqlite_url):
    """32 hex digits, unique across threads, and ordered by creation time (the store's indexes append)."""
    sel = Selector.open(sqlite_url, seed=0, follow=False)
    first = [sel.choose("what is 2+2", domain="math").decision_id for _ in range(200)]
    time.sleep(0.002)
    ids: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = [sel.choose("what is 3+3", domain="math").decision_id for _ in range(300)]
        with lock:
            ids.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sel.close()
    every = first + ids
    assert len(set(every)) == len(every) == 1400
    assert all(len(k) == 32 and int(k, 16) >= 0 for k in every)
    prefixes = [int(k[:16], 16) for k in first]
    assert prefixes == sorted(prefixes)  # one thread: non-decreasing time prefix
    assert min(int(k[:16], 16) for k in ids) > prefixes[-1]  # made later, sorts later
    assert abs(prefixes[0] - time.time_ns()) < 60e9  # the prefix is the wall clock in ns


def test_reward_validation(sel):
    d = sel.choose("q", domain="math")
    with pytest.raises(InputError, match="em must be a finite number"):
        sel.reward(d.decision_id, em=math.nan, tokens=10)
    with pytest.raises(InputError, match="tokens must be >= 0"):
        sel.reward(d.decision_id, em=1.0, tokens=-1)
    with pytest.raises(UnknownDecisionError, match="unknown decision id 'nope'"):
        sel.reward("nope", em=1.0, tokens=1)
    with pytest.raises(ValueError):  # the ValueError family, as promised
        sel.reward("nope", em=1.0, tokens=1)
    sel.reward(d.decision_id, em=1.0, tokens=10)
    sel.reward(d.decision_id, em=1.0, tokens=10)  # idempotent
    with pytest.raises(ConflictError, match="conflicting outcome"):
        sel.reward(d.decision_id, em=0.0, tokens=10)
    with pytest.raises(InputError, match="already used"):
        sel.choose("q", request_id=d.decision_id)


def test_late_reward_after_restart_is_found_in_the_store(sqlite_url):
    s1 = Selector.open(sqlite_url, seed=1)
    d = s1.choose("what is 2+2", domain="math", request_id="late-1")
    s1.close()
    s2 = Selector.open(sqlite_url, seed=2)
    s2.reward("late-1", em=1.0, tokens=42)
    s2.flush()
    assert s2.store.get_outcome("late-1")["tokens"] == 42
    assert d.decision_id == "late-1"
    s2.close()


def _set_lambda_elsewhere(url: str) -> None:
    s = Selector.open(url, follow=False)
    s.set_lambda(0.77, reason="from another process", who="test")
    s.close()


def test_lambda_change_in_another_process_is_seen_within_one_second(sqlite_url):
    sel = Selector.open(sqlite_url, lam=0.2, follow=True)
    p = mp.get_context("spawn").Process(target=_set_lambda_elsewhere, args=(sqlite_url,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    t0 = time.monotonic()
    while sel.lam != 0.77 and time.monotonic() - t0 < 1.0:
        time.sleep(0.01)
    assert sel.lam == 0.77
    assert sel.choose("x", domain="math").lam == 0.77
    history = sel.store.lambda_history()
    assert history[0].reason == "from another process" and history[0].who == "test"
    sel.close()


def test_hot_swap_under_eight_threads(sqlite_url):
    serving = Selector.open(sqlite_url, seed=1)
    serving.config.__dict__  # frozen dataclass; follow interval default 0.5 s
    learner = Selector.open(sqlite_url, seed=2, follow=False, snapshot=None)
    train(learner, 500)
    errors: list[BaseException] = []
    stop = threading.Event()
    served = [0] * 8

    def worker(i: int) -> None:
        rng = np.random.default_rng(i)
        try:
            while not stop.is_set():
                cell = CELLS[int(rng.integers(4))]
                d = serving.choose(PROMPTS[cell[1]], domain=cell[0])
                em, tokens = outcome(rng, cell, d.arm.name)
                serving.reward(d.decision_id, em=em, tokens=tokens)
                served[i] += 1
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    versions = []
    for _ in range(3):
        train(learner, 200)
        versions.append(learner.snapshot())
        t0 = time.monotonic()
        while serving.policy_version != versions[-1] and time.monotonic() - t0 < 5:
            time.sleep(0.02)
        assert serving.policy_version == versions[-1]
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    assert all(n > 0 for n in served)
    # drain, not flush: under load a commit may overrun the store's deadline and go to the spill first
    assert serving.drain(60)
    assert learner.drain(60)  # the learner logs its own training traffic through its own writer
    c = serving.store.counts()
    assert c["decisions"] == c["outcomes"] == sum(served) + 1100
    learner.close()
    serving.close()


def test_store_down_still_decides_and_reports(tmp_path):
    from stopbandit.config import SelectorConfig, StoreConfig

    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    cfg = SelectorConfig(store=StoreConfig(spill_path=str(tmp_path / "spill")))
    sel = Selector.open(url, seed=0, config=cfg)
    ds = [sel.choose("what is 2+2", domain="math") for _ in range(50)]
    for d in ds:
        sel.reward(d.decision_id, em=1.0, tokens=10)
    sel.flush(10)
    h = sel.health()
    assert len(ds) == 50 and not h.store_ok and h.last_error
    assert h.spill_backlog == 100 and h.dropped == 0
    sel.close()


def test_snapshot_round_trip_and_refusals(sqlite_url):
    a = Selector.open(sqlite_url, seed=1, follow=False)
    train(a, 800)
    version = a.snapshot()
    feats = a.extractor.extract(PROMPTS["hard"], "math")
    from stopbandit.bandit.vw import shared_line

    before = a.policy.predict_heads(shared_line(feats))
    a.close()
    b = Selector.open(sqlite_url, seed=1, follow=False)
    assert b.policy_version == version
    after = b.policy.predict_heads(shared_line(feats))
    np.testing.assert_allclose(before[0], after[0], rtol=1e-6)
    np.testing.assert_allclose(before[1], after[1], rtol=1e-6)
    train(b, 300, seed=5)  # keeps learning after reload
    assert not np.allclose(b.policy.predict_heads(shared_line(feats))[1], after[1])
    b.close()
    other_arms = [Arm("full", 1.01), Arm("fast", 0.5, 256)]
    with pytest.raises(SnapshotError, match=r"does not fit this selector: arms: snapshot has"):
        Selector.open(sqlite_url, arms=other_arms, follow=False)
    store = ReplayStore(sqlite_url)
    with store.engine.begin() as conn:
        from sqlalchemy import text

        conn.execute(text("UPDATE snapshots SET meta = json_set(meta, '$.lam', 9.0)"))
    with pytest.raises(SnapshotError, match="failed its checksum"):
        Selector.open(sqlite_url, follow=False)
    fresh = Selector.open(sqlite_url, follow=False, snapshot=None)
    assert fresh.policy_version.startswith("fresh-")
    fresh.close()
    store.dispose()


def test_vw_native_policy_serves_and_learns(sqlite_url):
    sel = Selector.open(sqlite_url, policy="vw-native", seed=0, follow=False)
    train(sel, 1500)
    d = sel.choose(PROMPTS["easy"], domain="trivia")
    assert math.fsum(d.probabilities.values()) == pytest.approx(1.0)
    v = sel.snapshot()
    sel.close()
    again = Selector.open(sqlite_url, policy="vw-native", follow=False)
    assert again.policy_version == v
    again.close()


@pytest.mark.parametrize("exploration", ["epsilon", "softmax", "squarecb"])
def test_every_exploration_gives_valid_propensities(sqlite_url, exploration):
    from stopbandit.bandit.exploration import exploration_from_config

    sel = Selector.open(sqlite_url, exploration=exploration_from_config({"name": exploration}), follow=False)
    train(sel, 300)
    for _ in range(50):
        d = sel.choose(PROMPTS["hard"], domain="math")
        assert 0 < d.probability <= 1 and math.fsum(d.probabilities.values()) == pytest.approx(1.0)
    sel.close()
