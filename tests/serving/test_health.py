"""Selector.health(): a store part (the writer and the store) and a selector part, read flat as before."""

from __future__ import annotations

import dataclasses

from stopbandit import Health, Selector
from stopbandit.serving import SelectorHealth, StoreHealth

# every field health() reports, in the order of its flat form (/healthz)
FLAT_FIELDS = [
    "store_ok", "last_error", "lam", "policy", "policy_version", "decisions", "rewards", "pending_rewards",
    "queue_depth", "spill_backlog", "spilled", "dropped", "rejected", "write_lag_s", "outages", "down_since",
    "replayed", "max_spill_backlog", "defaulted", "late", "discarded", "evicted", "snapshot_error", "conflicts",
    "unspilled", "replay_errors", "overloads", "budget_baseline", "budget_total", "budget_spent", "budget_left",
    "budget_restricted", "domains_tracked", "domains_folded", "max_domains", "last_checkpoint", "lambda_pending",
    "lambda_unwritten",
]


def test_health_has_a_store_part_and_a_selector_part_read_flat_too(sqlite_url):
    sel = Selector.open(sqlite_url, lam=0.3, seed=0)
    try:
        for i in range(5):
            d = sel.choose(f"what is {i} + {i}?", domain="math")
            if i < 3:
                sel.reward(d.decision_id, em=1.0, tokens=100 + i)
        assert sel.flush(30)
        h = sel.health()
    finally:
        sel.close()
    assert isinstance(h, Health) and isinstance(h.store, StoreHealth) and isinstance(h.selector, SelectorHealth)
    assert (h.selector.decisions, h.selector.rewards, h.selector.lam) == (5, 3, 0.3)
    assert h.store.store_ok and h.store.queue_depth == 0 and h.store.last_error is None
    # the writer's counters are in the store part only, the Selector's in the selector part only
    store_fields = {f.name for f in dataclasses.fields(StoreHealth)}
    selector_fields = {f.name for f in dataclasses.fields(SelectorHealth)}
    assert not store_fields & selector_fields
    assert {"queue_depth", "spill_backlog", "rejected", "write_lag_s", "lambda_pending"} <= store_fields
    assert {"decisions", "rewards", "pending_rewards", "policy_version", "budget_left"} <= selector_fields
    # every field read before still reads on the snapshot itself, with the part's value
    assert sorted(store_fields | selector_fields) == sorted(FLAT_FIELDS)
    for name in FLAT_FIELDS:
        part = h.store if name in store_fields else h.selector
        assert getattr(h, name) == getattr(part, name), name
    assert list(h.to_dict()) == FLAT_FIELDS and h.to_dict()["decisions"] == 5
    assert dataclasses.asdict(h)["selector"]["rewards"] == 3
