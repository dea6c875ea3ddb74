"""A Selector with ``[exploration] baseline``: shaped probabilities are logged as served; the budget is in health."""

from __future__ import annotations

import math
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from stopbandit import Selector
from stopbandit.bandit.conservative import ConservativeConfig
from stopbandit.control import ControlledSelector
from stopbandit.bandit.vw import shared_line
from stopbandit.errors import ConfigError, InputError
from stopbandit.replay.store import DECISIONS, ReplayStore
from stopbandit.serving.baseline import SnapshotBaseline
from stopbandit.sim import Simulator, outcome_table, run


def serve(sel: Selector, n: int, seed: int = 4):
    reqs = Simulator(seed=seed).take(n)
    decisions = []
    for r in reqs:
        d = sel.choose(r.prompt, domain=r.domain)
        out = run(r, d.arm)
        sel.reward(d.decision_id, em=out.em, tokens=out.tokens, trace=out.trace, reference=r.reference)
        decisions.append((d, out))
    return reqs, decisions


def test_zero_budget_serves_the_baseline_and_logs_it_as_served(db_url):
    cons = ConservativeConfig("careful", max_loss=0.0)
    with Selector.open(db_url, lam=0.2, seed=2, snapshot=None, conservative=cons) as sel:
        reqs, decisions = serve(sel, 150)
        sel.flush(30)
        h = sel.health()
    assert h.budget_baseline == "careful"
    # zero budget: nothing has been earned against the baseline at the start, so the first decision is it
    first = decisions[0][0]
    assert first.arm.name == "careful" and first.probability == 1.0
    assert first.probabilities == {"full": 0.0, "careful": 1.0, "balanced": 0.0, "aggressive": 0.0}
    store = ReplayStore(db_url)
    with store.engine.connect() as conn:
        rows = {r["request_key"]: dict(r) for r in conn.execute(select(DECISIONS)).mappings()}
    store.dispose()
    for d, _ in decisions:
        row = rows[d.decision_id]
        assert row["propensity"] == pytest.approx(d.probability)
        assert row["probabilities"] == pytest.approx(d.probabilities)
        assert math.isclose(math.fsum(row["probabilities"].values()), 1.0)
    # the realized loss against the baseline stays within one request's loss of the (zero) budget
    table = outcome_table(reqs, sel.arms.arms)
    b = sel.arms.index("careful")
    served = sum(o.em - 0.2 * o.tokens / 1000 for _, o in decisions)
    base = float((table.em[:, b] - 0.2 * table.tokens[:, b] / 1000).sum())
    assert served - base >= -1.0
    assert h.budget_total == 0.0 and h.budget_restricted > 0


def test_budget_in_health_and_metrics(sqlite_url):
    sel = Selector.open(sqlite_url, lam=0.2, seed=1, snapshot=None, follow=False,
                        conservative=ConservativeConfig("careful", max_loss=0.02))
    cs = ControlledSelector(sel, seed=1, owns_selector=True)
    try:
        for r in Simulator(seed=3).take(300):
            d = cs.choose(r.prompt, domain=r.domain)
            out = run(r, d.arm)
            cs.reward(d.decision_id, em=out.em, tokens=out.tokens, trace=out.trace, reference=r.reference)
        h = sel.health()
        assert h.budget_baseline == "careful"
        assert h.budget_total == pytest.approx(0.02 * 300)
        assert h.budget_left == pytest.approx(h.budget_total - h.budget_spent) or h.budget_spent == 0.0
        server = cs.serve_metrics(port=0)
        with urllib.request.urlopen(server.url, timeout=10) as resp:
            text = resp.read().decode()
        fams = {f.name: f.samples for f in text_string_to_metric_families(text)}
        for name, want in (("stopbandit_budget_total", h.budget_total), ("stopbandit_budget_spent", h.budget_spent)):
            (sample,) = fams[name]
            assert sample.labels == {"baseline": "careful"} and sample.value == pytest.approx(want, abs=1e-6)
        assert "stopbandit_budget_left" in fams
        assert fams["stopbandit_budget_restricted"][0].value == h.budget_restricted
    finally:
        cs.close()


def test_without_baseline_health_reports_no_budget(sqlite_url):
    with Selector.open(sqlite_url, seed=1, snapshot=None) as sel:
        h = sel.health()
        assert sel.budget() is None
    assert h.budget_baseline is None and h.budget_spent == 0.0


def test_baseline_must_be_an_arm(sqlite_url):
    with pytest.raises(ConfigError, match=r"exploration\.baseline"):
        Selector.open(sqlite_url, conservative=ConservativeConfig("nope", max_loss=0.01))


def baseline_arms(sel, decisions, lam: float) -> list[int]:
    """The arm the Selector's snapshot baseline picks for each decision's request, at ``lam``."""
    base = SnapshotBaseline.load(sel.store, sel.config, None)
    try:
        return [base.arm(shared_line(d.features), lam) for d, _ in decisions]
    finally:
        base.close()


def test_snapshot_baseline_is_the_stored_policy_per_request(db_url):
    # a policy served today (a stored snapshot) is the baseline: with a zero budget its arm is served on every
    # request, request by request, and logged with propensity 1
    with Selector.open(db_url, lam=0.2, seed=3, snapshot=None, follow=False) as trained:
        serve(trained, 400, seed=6)
        version = trained.snapshot()
    cons = ConservativeConfig(f"snapshot:{version}", max_loss=0.0)
    assert cons.snapshot == version
    with Selector.open(db_url, lam=0.2, seed=4, snapshot=None, follow=False, conservative=cons) as sel:
        _, decisions = serve(sel, 200, seed=7)
        h = sel.health()
        budget = sel.budget()
        expected = baseline_arms(sel, decisions, 0.2)
    assert [d.arm_index for d, _ in decisions] == expected
    assert all(d.probability == 1.0 for d, _ in decisions)
    assert len(set(expected)) > 1  # a policy, not one arm: the baseline's arm changes with the request
    assert h.budget_baseline == f"snapshot:{version}"
    assert budget.baseline_served == 200 and budget.lower_bound == pytest.approx(0.0)


def test_snapshot_baseline_budget_explores_and_is_booked_against_the_snapshots_arm(sqlite_url):
    with Selector.open(sqlite_url, lam=0.3, seed=3, snapshot=None, follow=False) as trained:
        serve(trained, 300, seed=6)
        version = trained.snapshot()
    cons = ConservativeConfig(f"snapshot:{version}", max_loss=0.05)
    with Selector.open(sqlite_url, lam=0.3, seed=5, snapshot=None, follow=False, conservative=cons) as sel:
        reqs, decisions = serve(sel, 600, seed=8)
        budget = sel.budget()
        base_arms = baseline_arms(sel, decisions, 0.3)
    table = outcome_table(reqs, sel.arms.arms)
    rewards = table.em - 0.3 * table.tokens / 1000
    served = sum(o.em - 0.3 * o.tokens / 1000 for _, o in decisions)
    baseline = float(sum(rewards[i, b] for i, b in enumerate(base_arms)))
    assert any(d.arm_index != b for (d, _), b in zip(decisions, base_arms))  # it explores
    assert budget.lower_bound <= served - baseline + 1e-6  # the bound is against the snapshot's own arms
    assert served - baseline >= -0.05 * 600 - 1.0


def test_snapshot_baseline_must_exist(sqlite_url):
    with pytest.raises(InputError, match="nope"):
        Selector.open(sqlite_url, snapshot=None, conservative=ConservativeConfig("snapshot:nope", max_loss=0.01))
    with pytest.raises(ConfigError, match=r"exploration\.baseline"):
        ConservativeConfig("snapshot:", max_loss=0.01)
