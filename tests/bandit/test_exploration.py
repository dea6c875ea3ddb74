"""Exploration rules, graph-aware SquareCB above all: distribution, revealed arms, fallback, logging."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from stopbandit import Selector
from stopbandit.bandit.arms import DEFAULT_ARMS, ArmSet
from stopbandit.bandit.exploration import (
    MIN_TRACE_SHARE,
    TRACE_WINDOW,
    EpsilonGreedy,
    Softmax,
    SquareCB,
    TraceShare,
    exploration_from_config,
)
from stopbandit.bandit.vw import shared_line
from stopbandit.config import SelectorConfig, config_from_mapping
from stopbandit.errors import ConfigError, StopbanditError
from stopbandit.replay.store import ReplayStore
from stopbandit.sim import Simulator
from stopbandit.sim import run as sim_run

ARMS = ArmSet(DEFAULT_ARMS)  # full, careful, balanced, aggressive: most lenient first
K = len(ARMS)


def graph() -> SquareCB:
    return SquareCB(nested=True).for_arms(ARMS)


def random_scores(rng: np.random.Generator, n: int = 200):
    for _ in range(n):
        yield rng.normal(0.5, 0.2, K).tolist()


@pytest.mark.parametrize("t", [1, 10, 1000, 10**6])
def test_graph_squarecb_is_a_distribution_and_never_explores_revealed_arms(t):
    ex, plain = graph(), SquareCB()
    assert ex.graph_active(TraceShare())
    rng = np.random.default_rng(t)
    for scores in random_scores(rng):
        p, q = ex.probabilities(scores, t), plain.probabilities(scores, t)
        assert math.fsum(p) == pytest.approx(1.0, abs=1e-12) and min(p) >= 0.0
        best = int(np.argmax(scores))
        revealed = set(ARMS.revealed_by(best)) - {best}
        for a in range(K):
            if a in revealed:
                assert p[a] == 0.0  # observed through the greedy arm's trace anyway
            elif a != best:
                assert p[a] == pytest.approx(q[a], rel=1e-12)  # inverse-gap weight kept for lenient arms
        assert p[best] >= q[best]  # the mass not spent on revealed arms stays on the greedy arm


def test_graph_squarecb_explores_nothing_when_the_greedy_arm_is_the_most_lenient():
    p = graph().probabilities([0.9, 0.5, 0.4, 0.1], 5)  # "full" is greedy: its trace reveals every arm
    assert p == [1.0, 0.0, 0.0, 0.0]


def test_graph_squarecb_by_hand():
    # greedy = careful (index 1): balanced and aggressive revealed → 0; full by inverse gap
    gamma = 5.0 * 100**0.5  # γ₀ · t^ρ
    p = graph().probabilities([0.5, 0.6, 0.55, 0.3], 100)
    full = 1.0 / (K + gamma * 0.1)
    assert p == pytest.approx([full, 1.0 - full, 0.0, 0.0])


def test_without_the_arms_bound_it_is_plain_squarecb():
    unbound, plain = SquareCB(nested=True), SquareCB()
    assert not unbound.graph_active(TraceShare()) and not unbound.graph_bound
    for scores in random_scores(np.random.default_rng(1), 50):
        assert unbound.probabilities(scores, 30) == plain.probabilities(scores, 30)


def test_falls_back_to_plain_squarecb_when_rewards_carry_no_traces():
    ex, plain = graph(), SquareCB()
    traces = TraceShare()
    scores = [0.5, 0.6, 0.55, 0.3]
    assert ex.probabilities(scores, 50, traces)[2:] == [0.0, 0.0]
    traces.observe(False)  # the first untraced reward already drops the share below 95%
    assert not ex.graph_active(traces)
    assert ex.probabilities(scores, 50, traces) == plain.probabilities(scores, 50)
    for _ in range(TRACE_WINDOW):  # traces flow again: the untraced reward leaves the window
        traces.observe(True)
    assert ex.graph_active(traces) and ex.probabilities(scores, 50, traces)[2:] == [0.0, 0.0]
    # a share of untraced rewards just above 1 − MIN_TRACE_SHARE switches it off again
    for _ in range(int(TRACE_WINDOW * (1 - MIN_TRACE_SHARE)) + 1):
        traces.observe(False)
    assert not ex.graph_active(traces)


def test_trace_share_pickles_with_its_window_and_rules_hold_no_state():
    import copy
    import pickle

    traces = TraceShare()
    traces.observe(False)
    for other in (pickle.loads(pickle.dumps(traces)), copy.deepcopy(traces)):
        assert other.share == 0.0 and not other.ok
        other.observe(True)  # its own lock and window
        assert other.share == 0.5 and traces.share == 0.0
    ex = graph()
    assert pickle.loads(pickle.dumps(ex)) == ex and copy.deepcopy(ex) == ex
    assert not any(isinstance(getattr(ex, f.name), TraceShare) for f in dataclasses.fields(ex))


def test_plain_squarecb_does_not_watch_traces():
    ex = SquareCB()
    assert not ex.watches_traces and SquareCB(nested=True).watches_traces
    traces = TraceShare()
    traces.observe(False)
    assert ex.for_arms(ARMS) is ex and not ex.graph_active(traces)


def test_other_rules_are_unchanged_by_binding_and_reports():
    for ex in (EpsilonGreedy(0.1), Softmax(0.05)):
        assert ex.for_arms(ARMS) is ex and not ex.watches_traces
        traces = TraceShare()
        traces.observe(False)
        assert ex.probabilities([0.1, 0.2, 0.3, 0.4], 3, traces) == pytest.approx(ex.probabilities([0.1, 0.2, 0.3, 0.4], 9))


def test_config_binds_the_arms_and_round_trips():
    cfg = config_from_mapping({"exploration": {"name": "squarecb", "nested": True, "gamma_scale": 4}})
    ex = cfg.exploration
    assert isinstance(ex, SquareCB) and ex.nested and ex.gamma_scale == 4.0
    assert ex.reveals == tuple(tuple(ARMS.revealed_by(i)) for i in range(K))
    assert exploration_from_config(ex.to_dict()) == ex  # snapshots and worker processes rebuild it from to_dict
    assert config_from_mapping({}).exploration.to_dict() == SquareCB().to_dict()  # off by default
    # keyword override through Selector.open's path (dataclasses.replace → __post_init__)
    assert SelectorConfig().with_(exploration=SquareCB(nested=True)).exploration.reveals == ex.reveals
    three = ArmSet.of([{"name": "a", "threshold": 1.01}, {"name": "b", "threshold": 0.9},
                       {"name": "c", "threshold": 0.8}])
    assert SelectorConfig(arms=three, exploration=SquareCB(nested=True)).exploration.reveals == ((0, 1, 2), (1, 2),
                                                                                              (2,))


BAD = [
    ("exploration.nested must be true or false", {"nested": 1}),
    ("exploration.nested must be true or false", {"nested": "yes"}),
    ("exploration.reveals must be a list of lists", {"nested": True, "reveals": 3}),
    ("exploration.reveals must be a list of K >= 2 lists", {"nested": True, "reveals": [[0], [1, 5]]}),
    ("exploration.reveals\\[i\\] must contain i", {"nested": True, "reveals": [[1], [0]]}),
    ("unknown parameter\\(s\\) \\['traces'\\]", {"traces": 1}),
    ("exploration 'epsilon': unknown parameter\\(s\\) \\['nested'\\]", {"name": "epsilon", "nested": True}),
]


@pytest.mark.parametrize("match, cfg", BAD, ids=[m[:40] for m, _ in BAD])
def test_invalid_exploration_config(match, cfg):
    with pytest.raises(ConfigError, match=match):
        exploration_from_config(cfg)


def test_reveals_of_other_arms_are_refused_at_scoring_time():
    ex = SquareCB(nested=True, reveals=((0, 1, 2), (1, 2), (2,)))
    with pytest.raises(StopbanditError, match="reveals covers 3 arms but 4 were scored"):
        ex.probabilities([0.1, 0.2, 0.3, 0.4], 1)


def test_selector_logs_the_graph_probabilities_it_used(sqlite_url):
    """Real Selector, real SQLite, simulator rewards with traces: logged propensities = probabilities used."""
    sel = Selector.open(sqlite_url, lam=0.2, token_scale=1000, seed=5, exploration=SquareCB(nested=True),
                        snapshot=None, follow=False)
    decisions, expected = [], []
    zeros = 0
    try:
        assert sel.policy.exploration.graph_active(sel.policy.trace_share)
        for req in Simulator(seed=3).take(400):
            feats = sel.extractor.extract(req.prompt, req.domain)
            want, _ = sel.policy.decide(shared_line(feats), sel.lam)  # what the policy serves right now
            d = sel.choose(req.prompt, domain=req.domain, request_id=req.request_id)
            out = sim_run(req, d.arm)
            sel.reward(d.decision_id, em=out.em, tokens=out.tokens, trace=out.trace, reference=req.reference)
            decisions.append(d)
            expected.append(want)
            zeros += sum(p == 0.0 for p in want)
            assert [d.probabilities[n] for n in ARMS.names] == want
            assert d.probability == want[d.arm_index] > 0.0  # an arm with probability 0 is never chosen
        sel.flush()
    finally:
        sel.close()
    assert zeros > 0  # the graph rule was in force: revealed arms were logged with probability 0
    store = ReplayStore(sqlite_url)
    try:
        for d, want in zip(decisions, expected):
            row = store.get_decision(d.decision_id)
            assert row["propensity"] == pytest.approx(want[d.arm_index], abs=1e-12)
            assert [row["probabilities"][n] for n in ARMS.names] == pytest.approx(want, abs=1e-12)
    finally:
        store.dispose()


def test_selector_reports_untraced_rewards_to_nested_exploration(tmp_path):
    """A Selector declared nested but fed rewards without traces falls back to plain SquareCB."""
    from stopbandit.serving.selector import Selector
    from stopbandit.config import config_from_mapping

    config = config_from_mapping({"exploration": {"name": "squarecb", "nested": True}})
    with Selector.open(f"sqlite:///{tmp_path / 'n.db'}", config=config) as sel:
        exploration = sel.policy.exploration
        assert exploration.graph_active(sel.policy.trace_share)
        for i in range(60):
            d = sel.choose(f"what is {i} + {i}?", domain="math")
            sel.reward(d.decision_id, em=1.0, tokens=100)
        assert not exploration.graph_active(sel.policy.trace_share)


def _mutable_parts(value, path="config", seen=None):
    """Paths of everything reachable from ``value`` that can change in place (anything not a frozen value)."""
    seen = set() if seen is None else seen
    if id(value) in seen or value is None or isinstance(value, (bool, int, float, str, bytes)):
        return []
    seen.add(id(value))
    if isinstance(value, (tuple, frozenset)):
        return [p for i, v in enumerate(value) for p in _mutable_parts(v, f"{path}[{i}]", seen)]
    if dataclasses.is_dataclass(value) and value.__dataclass_params__.frozen:
        return [p for f in dataclasses.fields(value) for p in _mutable_parts(getattr(value, f.name), f"{path}.{f.name}", seen)]
    from types import MappingProxyType

    if isinstance(value, MappingProxyType):
        return [p for k, v in value.items() for p in _mutable_parts(v, f"{path}[{k!r}]", seen)]
    return [f"{path}: {type(value).__name__}"]


def test_two_selectors_opened_from_one_config_share_no_mutable_state(tmp_path):
    """Settings are values: untraced rewards on one Selector leave the other's graph-aware exploration on."""
    from stopbandit.serving.selector import Selector
    from stopbandit.config import config_from_mapping

    config = config_from_mapping({"exploration": {"name": "squarecb", "nested": True}})
    assert _mutable_parts(config) == []  # nothing in a config can carry state from one Selector to another
    with Selector.open(f"sqlite:///{tmp_path / 'a.db'}", config=config) as a, \
            Selector.open(f"sqlite:///{tmp_path / 'b.db'}", config=config) as b:
        assert a.policy.trace_share is not b.policy.trace_share
        for i in range(60):
            d = a.choose(f"what is {i} + {i}?", domain="math")
            a.reward(d.decision_id, em=1.0, tokens=100)
        assert not a.policy.exploration.graph_active(a.policy.trace_share)
        assert b.policy.exploration.graph_active(b.policy.trace_share)
    assert _mutable_parts(config) == []
