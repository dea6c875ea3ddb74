"""`stopbandit ab report | promote` end to end: real Selector, SQLite store, CliRunner on the click group."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from click.testing import CliRunner

from stopbandit import Selector
from stopbandit.control import ControlledSelector, GuardrailConfig
from stopbandit.control.cli_commands import ab, lambda_group
from stopbandit.replay.store import ReplayStore
from stopbandit.sim import Simulator
from tests.control.sim_loop import serve


def invoke(group, *args: str, code: int = 0):
    res = CliRunner().invoke(group, list(args))
    assert res.exit_code == code, res.output + repr(res.exception)
    return res


def test_report_and_promote(sqlite_url):
    sel = Selector.open(sqlite_url, lam=0.25, seed=21)  # follows the store: λ and snapshots
    serve(sel, Simulator(seed=21).stream(800))
    candidate = sel.snapshot()
    serve(sel, Simulator(seed=20).stream(200))
    champion = sel.snapshot()  # the champion's own, newer snapshot: the newest one in the store
    cs = ControlledSelector(sel, challenger=candidate, challenger_share=0.4,
                            guardrail=GuardrailConfig(holdout_share=0.1), seed=22)
    served = serve(cs, Simulator(seed=22).stream(1500))
    cs.flush()

    res = invoke(ab, "report", "--db", sqlite_url, "--json")
    rep = json.loads(res.stdout)
    assert rep["challenger"] == candidate and rep["lam"] == 0.25 and rep["lam_source"] == "store"
    # the report covers the challenger's live period: decisions from its first to its last decision
    store = ReplayStore(sqlite_url)
    ts = {s.decision_id: store.get_decision(s.decision_id)["ts"] for s in served}
    store.dispose()
    live = [s for s in served if rep["start"] <= ts[s.decision_id] <= rep["end"]]
    assert len(served) - len(live) < 10
    groups = {g: [s for s in live if cs.experiment_of(s.decision_id) == g] for g in ("champion", "challenger",
                                                                                       "holdout")}
    z = 1.959963984540054
    for g, ss in groups.items():
        got = rep["groups"][g]
        em = np.array([s.em for s in ss])
        tok = np.array([s.tokens for s in ss], dtype=float)
        assert got["em"]["n"] == len(ss) > 100
        assert got["em"]["value"] == pytest.approx(em.mean())
        assert got["tokens"]["value"] == pytest.approx(tok.mean())
        half = z * tok.std(ddof=1) / math.sqrt(len(ss))
        assert (got["tokens"]["low"], got["tokens"]["high"]) == pytest.approx((tok.mean() - half, tok.mean() + half))
        assert got["reward"]["value"] == pytest.approx((em - 0.25 * tok / 1000).mean())
    ch, cp = rep["groups"]["challenger"], rep["groups"]["champion"]
    d = rep["differences"]["em"]
    assert d["value"] == pytest.approx(ch["em"]["value"] - cp["em"]["value"])
    assert d["low"] < d["value"] < d["high"] and 0 <= d["p_value"] <= 1
    assert rep["groups"]["holdout"]["tokens"]["value"] > cp["tokens"]["value"]  # full reasoning costs more

    text = invoke(ab, "report", "--db", sqlite_url, "--by-domain", "--lam", "0.1").stdout
    for needle in ("champion", "challenger", "holdout", "challenger−champion", "reward at λ=0.1", "by domain",
                   "math", "95% CI"):
        assert needle in text, needle

    assert cs.challenger is not None and cs.health().challenger_active
    res = invoke(ab, "promote", "--db", sqlite_url, "--reason", "challenger wins on reward", "--who", "bob",
                 "--yes", "--json")
    promo = json.loads(res.stdout)
    assert promo["challenger"] == candidate and promo["new_version"].startswith("p") and promo["lam"] == 0.25
    assert promo["previous"] == champion
    store = ReplayStore(sqlite_url)
    newest = store.get_snapshot("latest")
    assert newest.version == promo["new_version"]
    assert newest.meta["extra"]["promoted_from"] == candidate and newest.meta["extra"]["promoted_by"] == "bob"
    assert newest.model == store.get_snapshot(candidate).model
    audit = store.current_lambda()
    assert (audit.id, audit.value, audit.who) == (promo["audit_id"], 0.25, "bob")
    assert audit.reason.startswith(f"ab promote: challenger snapshot {candidate} now serves as {newest.version}")
    store.dispose()
    hist = json.loads(invoke(lambda_group, "history", "--db", sqlite_url, "--json").stdout)
    assert "ab promote" in hist[0]["reason"]

    # the serving Selector hot-swaps; the wrapper notices and stops routing to the challenger
    deadline = time.monotonic() + 5
    while sel.policy_version != promo["new_version"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sel.policy_version == promo["new_version"]
    after = serve(cs, Simulator(seed=23).stream(100))
    assert not cs.health().challenger_active
    assert all(cs.experiment_of(s.decision_id) != "challenger" for s in after)

    res = invoke(ab, "promote", "--db", sqlite_url, "--reason", "again", "--yes", code=2)
    assert "is already the serving snapshot" in " ".join(res.stderr.split())
    cs.close()
    sel.close()


def test_report_without_a_challenger_is_a_user_error(sqlite_url):
    sel = Selector.open(sqlite_url, seed=1)
    serve(sel, Simulator(seed=1).stream(20), traces=False)
    sel.close()
    res = invoke(ab, "report", "--db", sqlite_url, code=2)
    assert "no challenger decisions in the store" in " ".join(res.stderr.split())
    res = invoke(ab, "promote", "--db", sqlite_url, "--reason", "x", "--yes", code=2)
    assert "no challenger to promote" in " ".join(res.stderr.split())
    res = invoke(ab, "promote", "--db", sqlite_url, "--reason", "x", "--yes", "--version", "v-nope", code=2)
    assert "snapshot 'v-nope' is not in the store" in " ".join(res.stderr.split())


def test_candidate_snapshot_is_served_only_as_challenger_until_promoted(sqlite_url):
    """A candidate saved with role="candidate": no follower swaps to it, the A/B serves it, promote ships it."""
    from stopbandit.config import SelectorConfig

    fast = SelectorConfig(follow_interval=0.1)
    trainer = Selector.open(sqlite_url, lam=0.25, seed=31, follow=False, snapshot=None)
    serve(trainer, Simulator(seed=31).stream(600))
    serving_version = trainer.snapshot()
    serve(trainer, Simulator(seed=32).stream(300))
    candidate = trainer.snapshot(role="candidate")
    trainer.close()
    champion = Selector.open(sqlite_url, seed=33, config=fast)
    other = Selector.open(sqlite_url, seed=34, config=fast)  # another serving process, following the store
    assert champion.policy_version == other.policy_version == serving_version
    cs = ControlledSelector(champion, challenger=candidate, challenger_share=0.4, seed=35)
    served = serve(cs, Simulator(seed=36).stream(600))
    cs.flush()
    time.sleep(0.5)
    assert champion.policy_version == other.policy_version == serving_version  # nobody swapped to the candidate
    assert cs.challenger.policy_version == candidate
    assert {cs.experiment_of(s.decision_id) for s in served} == {"champion", "challenger"}

    rep = json.loads(invoke(ab, "report", "--db", sqlite_url, "--json").stdout)
    assert rep["challenger"] == candidate and rep["groups"]["challenger"]["em"]["n"] > 150
    promo = json.loads(invoke(ab, "promote", "--db", sqlite_url, "--reason", "candidate wins", "--yes",
                              "--json").stdout)
    assert promo["challenger"] == candidate and promo["previous"] == serving_version
    deadline = time.monotonic() + 5
    while {champion.policy_version, other.policy_version} != {promo["new_version"]} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert champion.policy_version == other.policy_version == promo["new_version"]
    after = serve(cs, Simulator(seed=37).stream(50))
    assert not cs.health().challenger_active
    assert all(cs.experiment_of(s.decision_id) == "champion" for s in after)
    cs.close()
    other.close()
    champion.close()
