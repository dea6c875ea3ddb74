"""``Selector.choose_forced(arm=…, experiment=…, tag=…)``: the hook the control layer routes through.

``Selector.choose(force_arm=…, experiment=…, tag=…)`` is its deprecated alias
for one round; the tests below that use it check that the alias still works.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from stopbandit import Selector
from stopbandit.control import ControlledSelector, GuardrailConfig
from stopbandit.errors import ConflictError, InputError
from stopbandit.replay.store import DECISIONS, OUTCOMES, ReplayStore
from stopbandit.sim import Simulator, run


def logged(url: str, table=DECISIONS) -> dict[str, dict]:
    store = ReplayStore(url)
    key = table.c.request_key if table is DECISIONS else table.c.decision_key
    with store.engine.connect() as conn:
        got = {r[key.name]: dict(r) for r in conn.execute(select(table)).mappings()}
    store.dispose()
    return got


@pytest.fixture
def sel(sqlite_url):
    s = Selector.open(sqlite_url, lam=0.2, seed=3)
    yield s
    s.close()


def test_forced_decision_is_logged_one_hot_and_rewarded_like_any_other(sel, sqlite_url):
    r = next(iter(Simulator(seed=1).stream(1)))
    t0 = sel.policy.t
    d = sel.choose_forced(r.prompt, domain=r.domain, request_id="f-1", arm="balanced", experiment="holdout",
                          tag="holdout")
    assert (d.arm.name, d.probability) == ("balanced", 1.0)
    assert d.probabilities == {n: (1.0 if n == "balanced" else 0.0) for n in sel.arms.names}
    assert d.policy_version == f"holdout/{sel.policy_version}"
    o = run(r, d.arm)
    sel.reward("f-1", em=o.em, tokens=o.tokens, trace=o.trace, reference=r.reference)
    sel.reward("f-1", em=o.em, tokens=o.tokens)  # idempotent
    with pytest.raises(ConflictError, match="conflicting outcome for decision 'f-1'"):
        sel.reward("f-1", em=1.0 - o.em, tokens=o.tokens)
    assert sel.policy.t == t0 + 1  # the policy learned from it
    h = sel.health()
    assert (h.decisions, h.rewards) == (1, 1)
    default = sel.choose_forced("What is 2 + 2?", domain="math", request_id="f-2", arm="full")
    assert default.policy_version == f"forced/{sel.policy_version}"  # tagged even without a tag
    plain = sel.choose("What is 3 + 3?", domain="math", request_id="p-1")
    assert plain.policy_version == sel.policy_version
    sel.flush()
    rows = logged(sqlite_url)
    assert (rows["f-1"]["arm"], rows["f-1"]["propensity"], rows["f-1"]["experiment"]) == ("balanced", 1.0, "holdout")
    assert rows["f-1"]["probabilities"] == d.probabilities
    assert (rows["f-2"]["experiment"], rows["f-2"]["policy_version"]) == ("champion", default.policy_version)
    assert rows["p-1"]["experiment"] == "champion"
    assert logged(sqlite_url, OUTCOMES)["f-1"]["em"] == o.em


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"arm": "fastest"}, r"arm must be one of the arms \['full', 'careful', 'balanced', "
                             r"'aggressive'\], got 'fastest'"),
        ({"arm": 2}, "arm must be one of the arms .*, got 2"),
        ({"experiment": "canary"}, r"experiment must be one of \['champion', 'challenger', 'holdout'\], got 'canary'"),
        ({"arm": "full", "tag": "a/b"}, r"tag must be 1 to 32 letters, digits, '_' or '-', got 'a/b'"),
        ({"tag": ""}, "tag must be 1 to 32 letters"),
    ],
)
def test_invalid_routing_arguments_name_field_and_value(sel, kwargs, match):
    with pytest.raises(InputError, match=match) as err:
        sel.choose_forced("q", domain="math", **kwargs)
    assert not str(err.value).startswith("force_arm")  # the name the caller wrote
    # the deprecated alias names its own argument
    alias = {("force_arm" if k == "arm" else k): v for k, v in kwargs.items()}
    with pytest.warns(DeprecationWarning, match="use Selector.choose_forced"), \
            pytest.raises(InputError, match=match.replace("arm must", "force_arm must")):
        sel.choose("q", domain="math", **alias)
    assert sel.health().decisions == 0


def test_forced_decisions_do_not_consume_the_policys_randomness(tmp_path):
    """Interleaving overrides leaves the policy's own samples unchanged (same seed, no learning between)."""
    reqs = list(Simulator(seed=5).stream(120))
    a = Selector.open(f"sqlite:///{tmp_path / 'a.db'}", lam=0.3, seed=9, follow=False)
    b = Selector.open(f"sqlite:///{tmp_path / 'b.db'}", lam=0.3, seed=9, follow=False)
    plain = [a.choose(r.prompt, domain=r.domain).arm.name for r in reqs]
    mixed = []
    for i, r in enumerate(reqs):
        if i % 3 == 0:
            assert b.choose_forced(r.prompt, domain=r.domain, arm="full").arm.name == "full"
        mixed.append(b.choose(r.prompt, domain=r.domain).arm.name)
    assert mixed == plain and len(set(plain)) > 1
    a.close()
    b.close()


def test_holdout_decisions_get_the_selectors_reward_window(tmp_path):
    """Before the hook the wrapper settled its own decisions outside the window; now a Selector settles all."""
    url = f"sqlite:///{tmp_path / 'w.db'}"
    sel = Selector.open(url, lam=0.2, seed=1, reward_window_s=0.3, follow=False)
    cs = ControlledSelector(sel, guardrail=GuardrailConfig(holdout_share=0.5), seed=4)
    reqs = list(Simulator(seed=2).stream(40))
    ds = [cs.choose(r.prompt, domain=r.domain, request_id=r.request_id) for r in reqs]
    routes = [cs.route_of(d.decision_id) for d in ds]
    assert {"holdout", "policy"} <= set(routes)
    for r, d in list(zip(reqs, ds))[:20]:  # the first half rewarded in time, the rest never
        o = run(r, d.arm)
        cs.reward(d.decision_id, em=o.em, tokens=o.tokens, trace=o.trace, reference=r.reference)
    deadline = time.monotonic() + 10
    while sel.health().defaulted < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sel.health().defaulted == 20
    cs.flush()
    status = {k: v["status"] for k, v in logged(url, OUTCOMES).items()}
    for d, route in list(zip(ds, routes))[20:]:
        assert status[d.decision_id] == "defaulted", route
    assert any(route == "holdout" for route in routes[20:])
    late = ds[-1]
    cs.reward(late.decision_id, em=1.0, tokens=100)  # after its window: stored as late, not learned
    assert sel.health().late == 1
    cs.close()
    sel.close()


def test_choose_forced_equals_the_deprecated_alias(tmp_path):
    """The same routing through choose_forced and through choose(force_arm=...): the same decisions and rows."""
    reqs = list(Simulator(seed=6).stream(30))
    a = Selector.open(f"sqlite:///{tmp_path / 'a.db'}", lam=0.3, seed=2, follow=False)
    b = Selector.open(f"sqlite:///{tmp_path / 'b.db'}", lam=0.3, seed=2, follow=False)
    try:
        for i, r in enumerate(reqs):
            route = [dict(), dict(arm="full", experiment="holdout", tag="holdout"),
                     dict(experiment="challenger")][i % 3]
            got = a.choose_forced(r.prompt, domain=r.domain, request_id=f"r{i}", **route)
            alias = {("force_arm" if k == "arm" else k): v for k, v in route.items()}
            if alias:
                with pytest.warns(DeprecationWarning, match="use Selector.choose_forced"):
                    want = b.choose(r.prompt, domain=r.domain, request_id=f"r{i}", **alias)
            else:
                want = b.choose(r.prompt, domain=r.domain, request_id=f"r{i}")
            assert (got.arm, got.probabilities, got.policy_version.split("/")[0] if "/" in got.policy_version
                    else "", got.lam) == (want.arm, want.probabilities, want.policy_version.split("/")[0]
                                          if "/" in want.policy_version else "", want.lam)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"arm": "fastest"}, r"must be one of the arms \['full', 'careful', 'balanced', 'aggressive'\], got 'fastest'"),
        ({"experiment": "canary"}, r"experiment must be one of \['champion', 'challenger', 'holdout'\], got 'canary'"),
        ({"arm": "full", "tag": "a/b"}, r"tag must be 1 to 32 letters, digits, '_' or '-', got 'a/b'"),
    ],
)
def test_choose_forced_refuses_invalid_routing(sel, kwargs, match):
    with pytest.raises(InputError, match=match):
        sel.choose_forced("q", domain="math", **kwargs)
    assert sel.health().decisions == 0


def test_open_refuses_an_unknown_setting_by_name(sqlite_url):
    from stopbandit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"Selector.open: unknown setting\(s\) \['lamda'\]"):
        Selector.open(sqlite_url, lamda=0.3)
