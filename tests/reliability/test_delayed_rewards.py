"""Delayed rewards: the reward wait window, earliest/sum aggregation, defaults, late rewards, statuses.

Semantics in ``stopbandit/bandit/delayed.py``. Every test runs on SQLite and
on the real PostgreSQL (``db_url``).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest

from stopbandit import Selector
from stopbandit.config import SelectorConfig, StoreConfig, config_from_mapping
from stopbandit.errors import ConfigError, ConflictError
from stopbandit.replay.store import ReplayStore

from tests.reliability.helpers import LearnCounter, until

WINDOW = 0.3


def open_sel(url, tmp_path, **cfg) -> Selector:
    cfg.setdefault("store", StoreConfig(spill_path=str(tmp_path / "spill")))
    return Selector.open(url, config=SelectorConfig(seed=1, **cfg), follow=False)


def settled(sel: Selector, key: str, timeout: float = 10.0) -> dict:
    """The stored outcome of ``key`` once its window has closed and the row is written."""
    row = {}

    def ready() -> bool:
        sel.flush(5)
        nonlocal row
        row = sel.store.get_outcome(key) or {}
        return bool(row)

    assert until(ready, timeout), f"no outcome stored for {key!r}"
    return row


def test_earliest_settles_at_once_and_discards_later_rewards(db_url, tmp_path):
    sel = open_sel(db_url, tmp_path, reward_window_s=30, reward_aggregation="earliest")
    learned = LearnCounter(sel)
    d = sel.choose("what is 2+2", domain="math")
    sel.reward(d.decision_id, em=1.0, tokens=100)
    assert learned.n == 1  # settled now: nothing later can change the earliest reward
    sel.reward(d.decision_id, em=1.0, tokens=100)  # an identical repeat is idempotent
    sel.reward(d.decision_id, em=0.0, tokens=5)  # a different one inside the window is discarded, not a conflict
    assert learned.n == 1
    h = sel.health()
    assert (h.rewards, h.discarded, h.defaulted, h.late, h.pending_rewards) == (1, 1, 0, 0, 0)
    row = settled(sel, d.decision_id)
    assert (row["em"], row["tokens"], row["status"]) == (1.0, 100, "ok")
    sel.close()


def test_sum_aggregates_inside_the_window_and_clips_em(db_url, tmp_path):
    sel = open_sel(db_url, tmp_path, reward_window_s=WINDOW, reward_aggregation="sum")
    learned = LearnCounter(sel)
    d = sel.choose("what is 2+2", domain="math")
    sel.reward(d.decision_id, em=0.7, tokens=100, latency_ms=5.0)
    sel.reward(d.decision_id, em=0.6, tokens=50, latency_ms=9.0)
    assert learned.n == 0 and sel.health().pending_rewards == 1  # held until the window closes
    row = settled(sel, d.decision_id)
    assert row["status"] == "ok"
    assert row["em"] == 1.0  # 1.3 summed, clipped to [0, 1] when stored
    assert (row["tokens"], row["latency_ms"]) == (150, 9.0)
    assert learned.n == 1 and learned.rows[-1][:2] == (1.0, 150)
    sel.reward(d.decision_id, em=0.1, tokens=1)  # after the window, for a decision that has an outcome
    sel.flush()
    assert sel.health().discarded == 1 and learned.n == 1
    assert sel.store.get_outcome(d.decision_id)["tokens"] == 150
    sel.close()


def test_no_reward_records_the_default_and_a_late_one_replaces_it(db_url, tmp_path):
    sel = open_sel(db_url, tmp_path, reward_window_s=WINDOW, default_em=0.25, default_tokens=123)
    learned = LearnCounter(sel)
    d = sel.choose("what is 2+2", domain="math")
    row = settled(sel, d.decision_id)
    assert (row["em"], row["tokens"], row["status"]) == (0.25, 123, "defaulted")
    assert learned.n == 1 and learned.rows[-1][:2] == (0.25, 123)  # the default is learned from
    sel.reward(d.decision_id, em=1.0, tokens=77, latency_ms=3.0)
    sel.flush()
    row = sel.store.get_outcome(d.decision_id)
    assert (row["em"], row["tokens"], row["latency_ms"], row["status"]) == (1.0, 77, 3.0, "late")
    assert learned.n == 1  # a late reward is stored, never learned from
    sel.reward(d.decision_id, em=1.0, tokens=77)  # repeat of the late one: idempotent
    sel.reward(d.decision_id, em=0.0, tokens=1)  # another late one: discarded
    h = sel.health()
    assert (h.defaulted, h.late, h.discarded, h.rewards) == (1, 1, 1, 0)
    events = [e for chunk in sel.store.iter_events() for e in chunk]
    assert [(e.request_key, e.status, e.em) for e in events] == [(d.decision_id, "late", 1.0)]
    sel.close()


def test_reward_after_the_deadline_is_late_even_before_the_reaper_runs(db_url, tmp_path, monkeypatch):
    sel = open_sel(db_url, tmp_path, reward_window_s=0.1, default_em=0.0, default_tokens=0)
    monkeypatch.setattr(sel, "_reap_once", lambda force=False: None)  # the reaper falls behind
    learned = LearnCounter(sel)
    d = sel.choose("q", domain="math")
    time.sleep(0.15)
    sel.reward(d.decision_id, em=1.0, tokens=10)
    sel.flush()
    row = sel.store.get_outcome(d.decision_id)
    assert (row["em"], row["tokens"], row["status"]) == (1.0, 10, "late")
    assert learned.n == 1 and learned.rows[-1][:2] == (0.0, 0)  # the default was learned, not the late reward
    h = sel.health()
    assert (h.defaulted, h.late, h.pending_rewards) == (1, 1, 0)
    sel.close()


def test_late_reward_after_a_restart_is_found_in_the_store(db_url, tmp_path, monkeypatch):
    s1 = open_sel(db_url, tmp_path, reward_window_s=WINDOW, default_em=0.0, default_tokens=5)
    a = s1.choose("q", domain="math", request_id="defaulted-1")
    settled(s1, "defaulted-1")
    # a decision whose window closed while nobody was there to record a default (its process died)
    monkeypatch.setattr(s1, "_reap_once", lambda force=False: None)
    s1.choose("q", domain="math", request_id="orphan-1")
    s1.close()
    time.sleep(WINDOW)
    s2 = open_sel(db_url, tmp_path, reward_window_s=WINDOW)
    learned = LearnCounter(s2)
    s2.reward(a.decision_id, em=1.0, tokens=42)
    s2.reward("orphan-1", em=0.5, tokens=43)
    s2.flush()
    assert (s2.store.get_outcome("defaulted-1")["status"], s2.store.get_outcome("defaulted-1")["tokens"]) == ("late", 42)
    assert (s2.store.get_outcome("orphan-1")["status"], s2.store.get_outcome("orphan-1")["tokens"]) == ("late", 43)
    assert learned.n == 0 and s2.health().late == 2
    s2.close()


def test_a_reward_handled_elsewhere_inside_the_window_is_ok(db_url, tmp_path):
    s1 = open_sel(db_url, tmp_path, reward_window_s=30)
    d = s1.choose("q", domain="math")
    s1.flush()
    s2 = open_sel(db_url, tmp_path, reward_window_s=30)
    learned = LearnCounter(s2)
    s2.reward(d.decision_id, em=1.0, tokens=9)
    s2.flush()
    assert s2.store.get_outcome(d.decision_id)["status"] == "ok" and learned.n == 1
    s2.close()
    s1.close()


def test_arm_mean_default(db_url, tmp_path):
    sel = open_sel(db_url, tmp_path, reward_window_s=WINDOW, default_em="arm_mean", default_tokens="arm_mean")
    seen: dict[int, int] = Counter()
    for i in range(60):
        d = sel.choose("what is 2+2", domain="math", request_id=f"m{i}")
        if seen[d.arm_index] < 3:  # every arm's first decisions get the arm's fixed reward
            sel.reward(d.decision_id, em=float(d.arm_index % 2), tokens=100 * (d.arm_index + 1))
        seen[d.arm_index] += 1
    sel.close()  # closes the open windows: their defaults are the arms' means
    store = ReplayStore(db_url)
    events = [e for chunk in store.iter_events() for e in chunk]
    assert len(events) == 60
    defaulted = [e for e in events if e.status == "defaulted"]
    assert defaulted, "every decision was rewarded: the test proves nothing"
    for e in defaulted:
        assert (e.em, e.tokens) == (float(e.arm_index % 2), 100 * (e.arm_index + 1))
    store.dispose()


def test_open_windows_are_bounded_and_evicted_ones_get_their_default(db_url, tmp_path):
    sel = open_sel(db_url, tmp_path, reward_window_s=60, max_pending=20, default_em=0.0, default_tokens=1)
    ids = [sel.choose("q", domain="math").decision_id for _ in range(100)]
    assert sel.health().pending_rewards == 20
    assert until(lambda: sel.health().defaulted == 80, 10)
    h = sel.health()
    assert (h.evicted, h.defaulted) == (80, 80)
    sel.reward(ids[0], em=1.0, tokens=3)  # evicted: its window was closed early, so this is late
    sel.reward(ids[-1], em=1.0, tokens=3)  # still open: ok
    sel.flush()
    assert sel.store.get_outcome(ids[0])["status"] == "late"
    assert sel.store.get_outcome(ids[-1])["status"] == "ok"
    sel.close()
    store = ReplayStore(db_url)
    assert Counter(e.status for ch in store.iter_events() for e in ch) == {"defaulted": 98, "late": 1, "ok": 1}
    store.dispose()


def test_immediate_mode_pending_map_is_bounded(db_url, tmp_path):
    sel = open_sel(db_url, tmp_path, max_pending=10)
    ids = [sel.choose("q", domain="math").decision_id for _ in range(30)]
    h = sel.health()
    assert (h.pending_rewards, h.evicted) == (10, 20)
    sel.reward(ids[0], em=1.0, tokens=3)  # evicted from memory: found in the store
    sel.reward(ids[-1], em=1.0, tokens=3)
    with pytest.raises(ConflictError):
        sel.reward(ids[0], em=0.0, tokens=3)
    sel.flush()
    assert sel.store.counts()["outcomes"] == 2
    assert sel._reaper is None  # no reward window: no reaper thread
    sel.close()


@pytest.mark.parametrize("aggregation", ["earliest", "sum"])
def test_every_decision_is_learned_exactly_once_under_concurrent_rewards(db_url, tmp_path, aggregation):
    """Threads reward randomly around the deadline (inside, late, twice, never): invariants hold."""
    window = 0.1
    sel = open_sel(db_url, tmp_path, reward_window_s=window, reward_aggregation=aggregation, default_em=0.0,
                   default_tokens=0)
    learned = LearnCounter(sel)
    errors: list[BaseException] = []
    ids: list[str] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(15):
                d = sel.choose("what is 2+2", domain="math")
                with lock:
                    ids.append(d.decision_id)
                for _ in range(rng.choice([0, 1, 1, 2])):
                    time.sleep(rng.random() * window * 1.5)
                    sel.reward(d.decision_id, em=rng.choice([0.0, 1.0]), tokens=rng.randrange(100))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a worker is stuck"
    assert not errors, errors[:3]
    sel.close()
    assert learned.n == len(ids) == 90  # each decision learned exactly once: its reward, its sum, or its default
    store = ReplayStore(db_url)
    events = [e for ch in store.iter_events() for e in ch]
    assert sorted(e.request_key for e in events) == sorted(ids)  # exactly one outcome per decision
    status = Counter(e.status for e in events)
    h = sel.health()
    assert status["defaulted"] + status["late"] == h.defaulted
    assert status["late"] == h.late
    assert status["ok"] == h.rewards
    store.dispose()


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("reward_window_s", 0, r"reward_window_s must be a number of seconds in \(0, "),
        ("reward_window_s", -1.0, "reward_window_s must be"),
        ("reward_window_s", float("nan"), "reward_window_s must be"),
        ("reward_window_s", True, "reward_window_s must be"),
        ("reward_window_s", "30", "reward_window_s must be"),
        ("reward_aggregation", "max", r"reward_aggregation must be one of \('earliest', 'sum'\), got 'max'"),
        ("reward_aggregation", None, "reward_aggregation must be one of"),
        ("default_em", 1.5, r"default_em must be a number in \[0, 1\] or 'arm_mean', got 1.5"),
        ("default_em", "mean", "default_em must be"),
        ("default_em", float("inf"), "default_em must be"),
        ("default_tokens", -1, r"default_tokens must be an integer in \[0, 2147483647\] or 'arm_mean', got -1"),
        ("default_tokens", 1.5, "default_tokens must be"),
        ("default_tokens", 2**31, "default_tokens must be"),
        ("max_pending", 0, r"max_pending must be an integer in \[1, 10000000\], got 0"),
    ],
)
def test_reward_window_config_errors_name_the_field(key, value, match):
    with pytest.raises(ConfigError, match=match):
        config_from_mapping({key: value})
    with pytest.raises(ConfigError, match=match):
        SelectorConfig(**{key: value})


def test_reward_window_config_from_toml(tmp_path):
    path = tmp_path / "sb.toml"
    path.write_text('reward_window_s = 2.5\nreward_aggregation = "sum"\ndefault_em = "arm_mean"\n'
                    'default_tokens = 300\nmax_pending = 1000\n[store]\nretry_interval = 0.2\n'
                    'max_spill_bytes = 1048576\n')
    from stopbandit.config import load_config

    cfg = load_config(path)
    w = cfg.reward_window
    assert (w.seconds, w.aggregation, w.default_em, w.default_tokens) == (2.5, "sum", "arm_mean", 300)
    assert (cfg.max_pending, cfg.store.retry_interval, cfg.store.max_spill_bytes) == (1000, 0.2, 1 << 20)
    assert SelectorConfig().reward_window is None  # default: immediate semantics
