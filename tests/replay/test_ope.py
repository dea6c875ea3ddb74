"""Off-policy estimators: hand-computed values, contract, invalid inputs, streaming, coverage."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from benchmarks.ope_coverage import world
from stopbandit.bandit.arms import DEFAULT_ARMS, ArmSet
from stopbandit.errors import ConfigError, InputError
from stopbandit.replay import ope
from stopbandit.replay.ope import (
    ESTIMATORS,
    IPS,
    SNIPS,
    Accumulator,
    DirectMethod,
    DoublyRobust,
    Estimate,
    GraphChainDR,
    GraphDR,
    GraphIPS,
    LoggedData,
    Metric,
    SwitchDR,
    make_estimator,
    reveal_chains,
    reveal_matrix,
)

NAN = math.nan

# ---------------------------------------------------------------------------------------------
# The tiny log. Three arms, 0 = most lenient ("full") ... 2 = strictest ("aggressive"); a trace
# of arm j reveals every arm k >= j, so REVEALS[j, k] = (k >= j).
#
#   event  logged  logging μ            candidate π      em  tokens   em_hat            tokens_hat
#   0      0       [.5 , .25, .25]      [0, 0, 1]        1   1000     [.8, .6, .4]      [1000, 600, 300]
#   1      1       [.5 , .25, .25]      [0, 1, 0]        0    400     [.7, .5, .3]      [ 900, 500, 250]
#   2      2       [.25, .25, .5 ]      [0, .5, .5]      1    200     [.9, .8, .6]      [ 500, 300, 200]
#   3      0       [.5 , .5 , 0  ]      [1, 0, 0]        1    800     [.6, .5, .2]      [ 800, 500, 200]
#
# importance weights w = π(a)/μ(a) = [0/.5, 1/.25, .5/.5, 1/.5] = [0, 4, 1, 2]
# ---------------------------------------------------------------------------------------------

REVEALS = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1]], dtype=bool)


def tiny(**overrides) -> LoggedData:
    kw = dict(
        actions=np.array([0, 1, 2, 0]),
        logging_probs=np.array([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.25, 0.25, 0.5], [0.5, 0.5, 0.0]]),
        candidate_probs=np.array([[0, 0, 1.0], [0, 1.0, 0], [0, 0.5, 0.5], [1.0, 0, 0]]),
        em=np.array([1.0, 0.0, 1.0, 1.0]),
        tokens=np.array([1000.0, 400.0, 200.0, 800.0]),
        em_hat=np.array([[0.8, 0.6, 0.4], [0.7, 0.5, 0.3], [0.9, 0.8, 0.6], [0.6, 0.5, 0.2]]),
        tokens_hat=np.array([[1000, 600, 300], [900, 500, 250], [500, 300, 200], [800, 500, 200]], dtype=float),
        # revealed by the traces: event 0 (arm 0) reveals all, 1 (arm 1) reveals 1 and 2, ...
        revealed_em=np.array([[1, 1, 0], [NAN, 0, 0], [NAN, NAN, 1], [1, 1, 1]], dtype=float),
        revealed_tokens=np.array(
            [[1000, 700, 300], [NAN, 400, 250], [NAN, NAN, 200], [800, 500, 300]], dtype=float
        ),
    )
    kw.update(overrides)
    return LoggedData(**kw)


# --------------------------------------------------------------------------------- hand values


def test_ips_by_hand():
    data = tiny()
    # em:     (0·1 + 4·0 + 1·1 + 2·1) / 4 = 3/4
    # tokens: (0·1000 + 4·400 + 1·200 + 2·800) / 4 = 3400/4 = 850
    assert IPS().estimate(data, "em").value == pytest.approx(0.75)
    assert IPS().estimate(data, "tokens").value == pytest.approx(850.0)
    # reward at λ = 0.5, scale 1000: 0.75 − 0.5 · 850 / 1000 = 0.325
    assert IPS().estimate(data, "reward", lam=0.5, token_scale=1000).value == pytest.approx(0.325)
    est = IPS().estimate(data, "em")
    # ESS = (Σw)²/Σw² = 7² / (0 + 16 + 1 + 4) = 49/21; max weight 4
    assert est.ess == pytest.approx(49 / 21)
    assert est.max_weight == 4.0
    assert est.unsupported_share == 0.0
    # CLT interval on contributions ψ = w·r = [0, 0, 1, 2]: mean .75, sd (ddof 1)
    psi = np.array([0.0, 0.0, 1.0, 2.0])
    se = psi.std(ddof=1) / 2
    assert est.std_err == pytest.approx(se)
    assert est.ci_low == pytest.approx(0.75 - 1.959963984540054 * se)
    assert est.ci_high == pytest.approx(0.75 + 1.959963984540054 * se)


def test_snips_by_hand():
    data = tiny()
    # em: Σ w r / Σ w = (0 + 0 + 1 + 2) / (0 + 4 + 1 + 2) = 3/7; tokens: 3400/7
    assert SNIPS().estimate(data, "em").value == pytest.approx(3 / 7)
    assert SNIPS().estimate(data, "tokens").value == pytest.approx(3400 / 7)
    # delta-method contributions ψ_i = V + w_i (r_i − V) / mean(w), mean(w) = 7/4
    v = 3 / 7
    psi = v + np.array([0, 4, 1, 2]) * (np.array([1, 0, 1, 1]) - v) / (7 / 4)
    np.testing.assert_allclose(SNIPS().contributions(data, "em"), psi)
    assert psi.mean() == pytest.approx(v)
    assert SNIPS().estimate(data, "em").std_err == pytest.approx(psi.std(ddof=1) / 2)
    # reward is linear in the metric for SNIPS too: 3/7 − 0.5 · (3400/7) / 1000
    assert SNIPS().estimate(data, "reward", lam=0.5, token_scale=1000).value == pytest.approx(3 / 7 - 1.7 / 7)


def test_dm_by_hand():
    # Σ_k π r̂: e0 .4, e1 .5, e2 .5·.8 + .5·.6 = .7, e3 .6 → 2.2/4 = .55
    assert DirectMethod().estimate(tiny(), "em").value == pytest.approx(0.55)
    # tokens: 300, 500, .5·300 + .5·200 = 250, 800 → 1850/4
    assert DirectMethod().estimate(tiny(), "tokens").value == pytest.approx(462.5)
    # its interval knows nothing of the model's bias, and says so
    assert any(w.startswith("MODEL ONLY") for w in DirectMethod().estimate(tiny(), "em").warnings)


def test_dr_by_hand():
    data = tiny()
    # DM + w (r − r̂(a)):
    #   e0: .4 + 0·(1 − .8) = .4;  e1: .5 + 4·(0 − .5) = −1.5
    #   e2: .7 + 1·(1 − .6) = 1.1; e3: .6 + 2·(1 − .6) = 1.4     → 1.4 / 4 = .35
    np.testing.assert_allclose(DoublyRobust().contributions(data, "em"), [0.4, -1.5, 1.1, 1.4])
    assert DoublyRobust().estimate(data, "em").value == pytest.approx(0.35)
    # tokens: 300 + 0; 500 + 4·(400 − 500) = 100; 250 + 1·(200 − 200) = 250; 800 + 2·(800 − 800) = 800
    assert DoublyRobust().estimate(data, "tokens").value == pytest.approx(1450 / 4)
    # reward λ = .5, scale 1000: .35 − .0005 · 362.5 = .16875
    assert DoublyRobust().estimate(data, "reward", lam=0.5, token_scale=1000).value == pytest.approx(0.16875)


def test_switch_dr_by_hand():
    # τ = 3 drops the correction of event 1 (w = 4 > 3): e1 → .5; (.4 + .5 + 1.1 + 1.4)/4 = .85
    assert SwitchDR(tau=3).estimate(tiny(), "em").value == pytest.approx(0.85)
    # τ = inf is DR
    assert SwitchDR(tau=math.inf).estimate(tiny(), "em").value == pytest.approx(0.35)


def test_graph_ips_by_hand():
    data = tiny()
    # q = μ @ REVEALS (q_k = Σ_{j <= k} μ_j): e0,e1 [.5,.75,1], e2 [.25,.5,1], e3 [.5,1,1]
    #   e0: π on arm 2, revealed (0):  1·0/1       = 0
    #   e1: π on arm 1, revealed (0):  1·0/.75     = 0
    #   e2: π .5/.5 on arms 1, 2; only 2 revealed (1): .5·1/1 = .5
    #   e3: π on arm 0, revealed (1):  1·1/.5      = 2        → 2.5/4 = .625
    est = GraphIPS(REVEALS).estimate(data, "em")
    assert est.value == pytest.approx(0.625)
    # graph weights Σ_k π·1[revealed]/q: [1, 4/3, .5, 2]
    w = np.array([1, 4 / 3, 0.5, 2])
    assert est.ess == pytest.approx(w.sum() ** 2 / (w @ w))
    assert est.max_weight == pytest.approx(2.0)
    assert est.fallback_share == 0.0
    # tokens: 300/1 + 400/.75 + .5·200/1 + 800/.5 = 300 + 533.33 + 100 + 1600 = 2533.33
    assert GraphIPS(REVEALS).estimate(data, "tokens").value == pytest.approx((2000 + 400 / 0.75) / 4)


def test_graph_dr_by_hand():
    # Σπ r̂ + Σ π·1[rev]·(r − r̂)/q:
    #   e0: .4 + (0 − .4)/1 = 0;  e1: .5 + (0 − .5)/.75 = −1/6
    #   e2: .7 + .5·(1 − .6)/1 = .9;  e3: .6 + (1 − .6)/.5 = 1.4   → (2.3 − 1/6)/4 = 8/15
    est = GraphDR(REVEALS).estimate(tiny(), "em")
    assert est.value == pytest.approx(8 / 15)
    np.testing.assert_allclose(GraphDR(REVEALS).contributions(tiny(), "em"), [0, -1 / 6, 0.9, 1.4], atol=1e-12)


def test_graph_chain_dr_by_hand():
    # chains (0, 1, 2), (1, 2), (2,); residuals e = r − r̂ where observed; each step (e_c − e_next)/q_c:
    #   e0: arm 2, e = −.4:                 .4 + (−.4)/1                            = 0
    #   e1: arm 1, e1 = −.5, e2 = −.3:      .5 + (−.5 + .3)/.75 + (−.3)/1           = −1/15
    #   e2: arms 1, 2 (.5 each); only 2 observed, e2 = .4:  .5·(.8 + .4) + .5·(.6 + .4) = 1.1
    #   e3: arm 0, e = [.4, .5, .8]:        .6 + (.4 − .5)/.5 + (.5 − .8)/1 + .8/1  = .9
    est = GraphChainDR(REVEALS).estimate(tiny(), "em")
    np.testing.assert_allclose(GraphChainDR(REVEALS).contributions(tiny(), "em"), [0, -1 / 15, 1.1, 0.9], atol=1e-12)
    assert est.value == pytest.approx((2 - 1 / 15) / 4)
    # tokens: e1: 500 + (−100 − 0)/.75 = 366.67; e3: 800 + 2·(0 − 0) + (0 − 100) + 100 = 800
    np.testing.assert_allclose(GraphChainDR(REVEALS).contributions(tiny(), "tokens"), [300, 1100 / 3, 250, 800])
    # the strictest arm's chain is itself: the same as GraphDR there
    strict = tiny().with_candidate(np.tile([0.0, 0.0, 1.0], (4, 1)))
    np.testing.assert_allclose(GraphChainDR(REVEALS).contributions(strict, "em"),
                               GraphDR(REVEALS).contributions(strict, "em"), atol=1e-12)
    # no traces at all: plain DR
    bare = tiny(revealed_em=None, revealed_tokens=None)
    assert GraphChainDR(REVEALS).estimate(bare, "em").value == pytest.approx(DoublyRobust().estimate(bare, "em").value)


def test_reveal_chains():
    assert reveal_chains(REVEALS) == ((0, 1, 2), (1, 2), (2,))
    assert reveal_chains(np.eye(3, dtype=bool)) == ((0,), (1,), (2,))
    # a partial order: arms 1 and 2 are not comparable; both reveal 3, and 0 reveals everything
    partial = np.array([[1, 1, 1, 1], [0, 1, 0, 1], [0, 0, 1, 1], [0, 0, 0, 1]], dtype=bool)
    assert reveal_chains(partial) == ((0, 1, 3), (1, 3), (2, 3), (3,))


def test_graph_falls_back_on_events_without_trace():
    rem, rtok = tiny().revealed_em.copy(), tiny().revealed_tokens.copy()
    rem[2], rtok[2] = NAN, NAN  # event 2 has no trace → plain IPS w·r = 1·1 instead of .5
    data = tiny(revealed_em=rem, revealed_tokens=rtok)
    est = GraphIPS(REVEALS).estimate(data, "em")
    assert est.value == pytest.approx((0 + 0 + 1 + 2) / 4)
    assert est.fallback_share == 0.25
    assert not any("PARTIAL" in w for w in est.warnings)  # no trace is fine, not a warning
    # a log with no traces at all is evaluated exactly like the plain estimators
    bare = tiny(revealed_em=None, revealed_tokens=None)
    assert GraphIPS(REVEALS).estimate(bare, "em").value == pytest.approx(IPS().estimate(bare, "em").value)
    assert GraphDR(REVEALS).estimate(bare, "em").value == pytest.approx(DoublyRobust().estimate(bare, "em").value)
    assert GraphDR(REVEALS).estimate(bare, "em").fallback_share == 1.0


def test_graph_partial_trace_falls_back_and_warns():
    rem, rtok = tiny().revealed_em.copy(), tiny().revealed_tokens.copy()
    rem[0, 1], rtok[0, 1] = NAN, NAN  # event 0's trace should reveal arm 1 but does not
    data = tiny(revealed_em=rem, revealed_tokens=rtok)
    est = GraphDR(REVEALS).estimate(data, "em")
    # event 0 falls back to plain DR (.4 instead of 0): (.4 − 1/6 + .9 + 1.4)/4 = 19/30
    assert est.value == pytest.approx(19 / 30)
    assert est.fallback_share == 0.25
    assert any(w.startswith("PARTIAL TRACES") for w in est.warnings)


def test_revealed_values_outside_the_structure_are_ignored():
    rem, rtok = tiny().revealed_em.copy(), tiny().revealed_tokens.copy()
    rem[2, :2], rtok[2, :2] = [0.0, 0.0], [900.0, 500.0]  # a strict trace "revealing" lenient arms
    assert GraphIPS(REVEALS).estimate(tiny(revealed_em=rem, revealed_tokens=rtok), "em").value == pytest.approx(0.625)


# --------------------------------------------------------------------------------- support


def test_unsupported_share_warns():
    pi = tiny().candidate_probs.copy()
    pi[3] = [0.5, 0.0, 0.5]  # event 3 never logs arm 2 (μ = 0)
    data = tiny(candidate_probs=pi)
    for est in (IPS(), SNIPS(), DoublyRobust(), DirectMethod(), SwitchDR()):
        e = est.estimate(data, "em")
        assert e.unsupported_share == 0.25
        assert any(w.startswith("UNSUPPORTED") and "25.0%" in w for w in e.warnings), e.warnings
    # a trace of arm 0 reveals arm 2, so under graph feedback arm 2 is observable (q = 1)
    g = GraphIPS(REVEALS).estimate(data, "em")
    assert g.unsupported_share == 0.0
    assert not any(w.startswith("UNSUPPORTED") for w in g.warnings)
    assert IPS().estimate(tiny(), "em").warnings == ()


def test_snips_with_no_overlap_is_nan_with_warning():
    pi = np.tile([0.0, 0.0, 1.0], (4, 1))
    pi[2] = [1.0, 0, 0]  # every logged arm gets candidate probability 0
    e = SNIPS().estimate(tiny(candidate_probs=pi), "em")
    assert math.isnan(e.value) and math.isnan(e.ci_low)
    assert any("undefined" in w for w in e.warnings)


def test_low_ess_warns():
    rng = np.random.default_rng(0)
    n = 400
    mu = np.tile([0.98, 0.02], (n, 1))
    actions = (rng.random(n) < 0.02).astype(int)
    data = LoggedData(actions=actions, logging_probs=mu, candidate_probs=np.tile([0.0, 1.0], (n, 1)),
                      em=np.ones(n), tokens=np.ones(n))
    assert any(w.startswith("LOW ESS") for w in IPS().estimate(data, "em").warnings)


# --------------------------------------------------------------------------------- logging policy


def _random_log(seed: int, n: int = 3000, k: int = 4, *, candidate=None, arm_free_model=False) -> LoggedData:
    rng = np.random.default_rng(seed)
    mu = rng.dirichlet(np.ones(k), size=n) * 0.8 + 0.2 / k
    actions = np.array([rng.choice(k, p=row) for row in mu])
    em = (rng.random(n) < 0.3 + 0.1 * actions).astype(float)
    tokens = rng.integers(100, 2000, size=n).astype(float)
    em_hat = rng.random((n, k))
    tokens_hat = rng.random((n, k)) * 2000
    if arm_free_model:
        em_hat = np.repeat(em_hat[:, :1], k, axis=1)
        tokens_hat = np.repeat(tokens_hat[:, :1], k, axis=1)
    return LoggedData(actions=actions, logging_probs=mu, candidate_probs=mu if candidate is None else candidate,
                      em=em, tokens=tokens, em_hat=em_hat, tokens_hat=tokens_hat)


@pytest.mark.parametrize("metric", ["em", "tokens"])
def test_logging_policy_estimates_its_own_mean(metric):
    data = _random_log(1)
    on_policy = (data.em if metric == "em" else data.tokens).mean()
    assert IPS().estimate(data, metric).value == pytest.approx(on_policy, rel=1e-12)
    assert SNIPS().estimate(data, metric).value == pytest.approx(on_policy, rel=1e-12)
    # DR is exact for any model that does not depend on the arm: Σ_k μ_k r̂ = r̂ = r̂(a)
    flat = _random_log(1, arm_free_model=True)
    assert DoublyRobust().estimate(flat, metric).value == pytest.approx(on_policy, rel=1e-12)
    # with an arm-dependent model DR differs from the sample mean by mean(Σ_k μ_k r̂_k − r̂_a),
    # a mean-zero term: within 4 of its standard errors
    dr = DoublyRobust().estimate(data, metric).value
    rhat = data.em_hat if metric == "em" else data.tokens_hat
    gap = (data.logging_probs * rhat).sum(axis=1) - rhat[np.arange(data.n), data.actions]
    assert dr - on_policy == pytest.approx(gap.mean(), rel=1e-9, abs=1e-9)
    assert abs(gap.mean()) < 4 * gap.std(ddof=1) / math.sqrt(data.n)


# --------------------------------------------------------------------------------- contract


def all_estimators():
    return [make_estimator(name, reveals=REVEALS) for name in ESTIMATORS]


@pytest.mark.parametrize("est", all_estimators(), ids=lambda e: e.name)
def test_contract_every_estimator(est):
    data = tiny()
    for metric, lam in (("em", None), ("tokens", None), ("reward", 0.3)):
        e = est.estimate(data, metric, lam=lam, token_scale=1000.0, alpha=0.1)
        assert isinstance(e, Estimate)
        assert e.estimator == est.name and e.metric == metric and e.n == 4 and e.alpha == 0.1
        assert e.ci_method == "normal"
        assert e.ci_low <= e.value <= e.ci_high and math.isfinite(e.value)
        assert e.ess > 0 and e.max_weight >= 0 and 0 <= e.unsupported_share <= 1
        assert (e.lam, e.token_scale) == ((0.3, 1000.0) if metric == "reward" else (None, None))
        psi = est.contributions(data, metric, lam=lam)
        assert psi.shape == (4,) and psi.mean() == pytest.approx(e.value)
        assert e.to_dict()["value"] == e.value and est.name in e.summary()
    # reward from one EM pass and one token pass equals the direct reward estimate
    both = est.estimate_metrics(data, lam=0.3, token_scale=1000.0)
    direct = est.estimate(data, "reward", lam=0.3, token_scale=1000.0)
    assert both["reward"].value == pytest.approx(direct.value)
    assert both["reward"].ci == pytest.approx(direct.ci)
    assert both["reward"].value == pytest.approx(both["em"].value - 0.3 * both["tokens"].value / 1000)
    curve = est.reward_curve(data, [0.0, 0.3], token_scale=1000.0)
    assert curve[0].value == pytest.approx(both["em"].value) and curve[1].ci == pytest.approx(direct.ci)
    boot = est.estimate(data, "em", ci_method="bootstrap", n_boot=200, seed=3)
    assert boot.ci_method == "bootstrap" and boot.ci_low <= boot.ci_high
    assert boot.value == est.estimate(data, "em").value


def test_make_estimator_and_reveal_matrix():
    arms = ArmSet(DEFAULT_ARMS)  # full, careful, balanced, aggressive: lenient → strict
    r = reveal_matrix(arms)
    np.testing.assert_array_equal(r, np.triu(np.ones((4, 4), dtype=bool)))
    assert isinstance(make_estimator(" DR "), DoublyRobust)
    assert make_estimator("graph-dr", reveals=r).reveals == tuple(tuple(row) for row in r.tolist())
    assert hash(GraphIPS(r)) == hash(GraphIPS(r.astype(int)))


def test_module_doctests():
    assert doctest.testmod(ope).failed == 0


# --------------------------------------------------------------------------------- invalid inputs


def _bad(**kw):
    return lambda: tiny(**kw)


BAD_DATA = [
    ("actions must be a 1-D", _bad(actions=np.zeros((4, 1), dtype=int))),
    ("actions is empty", lambda: LoggedData(np.array([], dtype=int), np.zeros((0, 2)), np.zeros((0, 2)),
                                            np.zeros(0), np.zeros(0))),
    (r"actions\[1\] = 3 is out of range for K=3", _bad(actions=np.array([0, 3, 2, 0]))),
    (r"actions\[0\] = -1 is negative", _bad(actions=np.array([-1, 1, 2, 0]))),
    (r"actions must be integers; actions\[1\] = 1.5", _bad(actions=np.array([0, 1.5, 2, 0]))),
    ("actions must be integers, got dtype bool", _bad(actions=np.array([True, False, True, False]))),
    (r"logging_probs must be a 2-D array", _bad(logging_probs=np.ones(4))),
    (r"logging_probs must have shape \(4, 3\)", _bad(logging_probs=np.full((5, 3), 1 / 3))),
    (r"logging_probs\[1\] must sum to 1", _bad(logging_probs=np.array([[.5, .25, .25], [.5, .5, .5],
                                                                          [.25, .25, .5], [.5, .5, 0]]))),
    (r"logging_probs must lie in \[0, 1\]; logging_probs\[0, 0\] = -0.5",
     _bad(logging_probs=np.array([[-.5, 1, .5], [.5, .25, .25], [.25, .25, .5], [.5, .5, 0]]))),
    (r"logging_probs must be finite; logging_probs\[0, 0\] = nan",
     _bad(logging_probs=np.array([[NAN, .5, .5], [.5, .25, .25], [.25, .25, .5], [.5, .5, 0]]))),
    (r"logging_probs\[3, actions\[3\]=2\] = 0", _bad(actions=np.array([0, 1, 2, 2]))),
    (r"candidate_probs\[0\] must sum to 1", _bad(candidate_probs=np.full((4, 3), 0.5))),
    (r"candidate_probs must have shape \(4, 3\)", _bad(candidate_probs=np.full((4, 2), 0.5))),
    (r"em must lie in \[0, 1\]; em\[2\] = 2.0", _bad(em=np.array([1.0, 0.0, 2.0, 1.0]))),
    (r"em must be finite; em\[0\] = inf", _bad(em=np.array([math.inf, 0, 1, 1]))),
    (r"em must have shape \(4,\)", _bad(em=np.ones(3))),
    (r"tokens must lie in \[0, inf\]; tokens\[1\] = -1.0", _bad(tokens=np.array([10.0, -1.0, 3.0, 4.0]))),
    ("tokens must be an array of numbers", _bad(tokens=["a", "b", "c", "d"])),
    (r"em_hat must have shape \(4, 3\)", _bad(em_hat=np.ones((4, 2)))),
    (r"tokens_hat must be finite", _bad(tokens_hat=np.full((4, 3), NAN))),
    ("revealed_tokens is missing", _bad(revealed_tokens=None)),
    (r"revealed_em must be finite or NaN; revealed_em\[0, 0\] = inf",
     _bad(revealed_em=np.where(np.eye(4, 3) > 0, math.inf, tiny().revealed_em))),
    (r"unknown \(NaN\) at the same places; at \[0, 1\]",
     _bad(revealed_tokens=np.array([[1000, NAN, 300], [NAN, 400, 250], [NAN, NAN, 200], [800, 500, 300]]))),
    (r"revealed_em\[1\] has values but its logged arm 1 is NaN",
     _bad(revealed_em=np.array([[1, 1, 0], [NAN, NAN, 0], [NAN, NAN, 1], [1, 1, 1]]),
          revealed_tokens=np.array([[1000, 700, 300], [NAN, NAN, 250], [NAN, NAN, 200], [800, 500, 300]]))),
    ("disagrees with the log at event 3",
     _bad(revealed_em=np.array([[1, 1, 0], [NAN, 0, 0], [NAN, NAN, 1], [0, 1, 1]]))),
    (r"learnable must be a bool array of shape \(4,\)", _bad(learnable=np.array([1, 0, 1, 1]))),
]


@pytest.mark.parametrize("match, build", BAD_DATA, ids=[m[:40] for m, _ in BAD_DATA])
def test_invalid_logged_data(match, build):
    with pytest.raises(InputError, match=match):
        build()


BAD_CALLS = [
    (ConfigError, r"metric must be one of \['em', 'tokens', 'reward'\], got 'ctr'",
     lambda: IPS().estimate(tiny(), "ctr")),
    (ConfigError, "metric='reward' needs lam", lambda: IPS().estimate(tiny())),
    (ConfigError, r"lam must be a finite number >= 0, got -0.1", lambda: IPS().estimate(tiny(), lam=-0.1)),
    (ConfigError, r"token_scale must be a finite number > 0, got 0",
     lambda: IPS().estimate(tiny(), lam=1, token_scale=0)),
    (ConfigError, r"alpha must be a finite number in \(0, 1\), got 1.0",
     lambda: IPS().estimate(tiny(), "em", alpha=1.0)),
    (ConfigError, r"alpha must be a finite number in \(0, 1\), got 'x'",
     lambda: IPS().estimate(tiny(), "em", alpha="x")),
    (ConfigError, r"ci_method must be one of \['normal', 'bootstrap'\], got 'wald'",
     lambda: IPS().estimate(tiny(), "em", ci_method="wald")),
    (ConfigError, "n_boot must be an integer >= 10, got 5",
     lambda: IPS().estimate(tiny(), "em", ci_method="bootstrap", n_boot=5)),
    (ConfigError, r"SwitchDR tau must be a number > 0 \(inf = plain DR\), got 0", lambda: SwitchDR(tau=0)),
    (ConfigError, r"reveals must be a square \(K, K\) boolean matrix, got shape \(2, 3\)",
     lambda: GraphIPS(np.ones((2, 3), dtype=bool))),
    (ConfigError, r"reveals\[1, 1\] must be True", lambda: GraphDR(np.array([[1, 1], [0, 0]], dtype=bool))),
    (ConfigError, "reveals must hold booleans", lambda: GraphIPS(np.full((2, 2), 0.5))),
    (InputError, "GraphIPS: reveals is 2x2 but the log has K=3 arms",
     lambda: GraphIPS(np.eye(2, dtype=bool)).estimate(tiny(), "em")),
    (InputError, r"DR needs model predictions em_hat \(n, K\) for metric 'em'",
     lambda: DoublyRobust().estimate(tiny(em_hat=None), "em")),
    (InputError, r"DM needs model predictions tokens_hat \(n, K\) for metric 'reward'",
     lambda: DirectMethod().estimate(tiny(tokens_hat=None), lam=0.1)),
    (InputError, "IPS needs a LoggedData, got dict", lambda: IPS().estimate({}, "em")),
    (ConfigError, r"unknown estimator 'magic'; known estimators: \[", lambda: make_estimator("magic")),
    (ConfigError, "estimator 'graph-ips' needs reveals", lambda: make_estimator("graph-ips")),
    (ConfigError, "cannot merge accumulators of different estimates",
     lambda: IPS().accumulate(tiny(), "em").merge(SNIPS().accumulate(tiny(), "em"))),
    (ConfigError, r"cannot merge accumulators of different estimates: SwitchDR\(tau=3\)",
     lambda: SwitchDR(tau=3).accumulate(tiny(), "em").merge(SwitchDR(tau=4).accumulate(tiny(), "em"))),
    (ConfigError, "chunk size must be a positive integer, got 0", lambda: list(tiny().chunks(0))),
]


@pytest.mark.parametrize("exc, match, call", BAD_CALLS, ids=[m[:40] for _, m, _ in BAD_CALLS])
def test_invalid_calls(exc, match, call):
    with pytest.raises(exc, match=match):
        call()


def test_errors_are_value_errors():
    with pytest.raises(ValueError):
        IPS().estimate(tiny(), "nope")


def test_logged_data_is_copied_and_read_only():
    em = np.array([1.0, 0.0, 1.0, 1.0])
    data = tiny(em=em)
    em[0] = 0.0
    assert data.em[0] == 1.0
    with pytest.raises(ValueError):
        data.em[0] = 0.5
    assert data.take(np.array([True, False, True, False])).n == 2
    other = data.with_candidate(data.logging_probs)
    np.testing.assert_array_equal(other.candidate_probs, data.logging_probs)
    assert other.em is data.em and other.revealed_em is data.revealed_em  # nothing else is copied


# --------------------------------------------------------------------------------- synthetic world


def synth(seed: int, n: int = 2000, m_types: int = 30):
    """A log whose truth is exact, as (data, truth_em, truth_tokens): the coverage benchmark's world.

    Logging mixes a random softmax with 30 % uniform; context types are
    uniform and outcomes per arm known in expectation; all arms of one request
    are coupled the way nested stopping couples them.
    """
    data, truth, _, _ = world(seed, n, m_types)
    return data, truth["em"], truth["tokens"]


NESTED = np.triu(np.ones((4, 4), dtype=bool))


def test_graph_estimators_equal_plain_ones_with_identity_reveals():
    data, _, _ = synth(7, n=500)
    eye = np.eye(4, dtype=bool)
    for graph, plain in ((GraphIPS(eye), IPS()), (GraphDR(eye), DoublyRobust())):
        for metric in ("em", "tokens"):
            g, p = graph.estimate(data, metric), plain.estimate(data, metric)
            assert g.value == pytest.approx(p.value, rel=1e-12)
            assert g.ci == pytest.approx(p.ci, rel=1e-12)
            assert g.ess == pytest.approx(p.ess, rel=1e-12)
            assert g.fallback_share == 0.0


def test_streaming_accumulator_equals_one_shot():
    data, _, _ = synth(3, n=1000)
    for est in [make_estimator(name, reveals=NESTED) for name in ESTIMATORS]:
        for metric, lam in (("em", None), ("tokens", None), ("reward", 0.2)):
            accs = [est.accumulate(chunk, metric, lam=lam) for chunk in data.chunks(137)]
            merged = Accumulator.merge_all(accs[::-1])  # order does not matter
            streamed, one_shot = merged.finalize(0.05), est.estimate(data, metric, lam=lam)
            assert merged.n == data.n
            for field in ("value", "ci_low", "ci_high", "std_err", "ess", "max_weight", "unsupported_share"):
                assert getattr(streamed, field) == pytest.approx(getattr(one_shot, field), rel=1e-9, abs=1e-12), (
                    est.name, metric, field)
            assert streamed.warnings == one_shot.warnings


def test_accumulator_merge_with_empty():
    acc = IPS().accumulate(tiny(), "em")
    empty = Accumulator("IPS", Metric("em"))
    assert acc.merge(empty) is acc and empty.merge(acc) is acc
    with pytest.raises(InputError, match="empty accumulator"):
        empty.finalize()


def test_coverage_of_dr_and_snips_intervals():
    """40 seeded worlds with exact truth: 95% intervals of DR and SNIPS cover it in >= 85% of them."""
    hits = {("DR", "em"): 0, ("DR", "tokens"): 0, ("SNIPS", "em"): 0, ("SNIPS", "tokens"): 0}
    seeds = range(40)
    for seed in seeds:
        data, truth_em, truth_tok = synth(seed)
        for est in (DoublyRobust(), SNIPS()):
            hits[(est.name, "em")] += est.estimate(data, "em").covers(truth_em)
            hits[(est.name, "tokens")] += est.estimate(data, "tokens").covers(truth_tok)
    coverage = {key: h / len(seeds) for key, h in hits.items()}
    assert all(c >= 0.85 for c in coverage.values()), coverage


def test_graph_dr_is_unbiased_and_narrower_on_the_synthetic_world():
    values, widths_g, widths_dr, truths = [], [], [], []
    for seed in range(20):
        data, _, _ = synth(100 + seed)
        strict = data.with_candidate(np.tile([0.0, 0.0, 0.0, 1.0], (data.n, 1)))
        g, d = GraphDR(NESTED).estimate(strict, "em"), DoublyRobust().estimate(strict, "em")
        values.append(g.value - d.value)
        widths_g.append(g.width)
        widths_dr.append(d.width)
    assert np.median(np.array(widths_dr) / np.array(widths_g)) > 1.5
    # both estimate the same quantity: their gap averages out
    assert abs(np.mean(values)) < 3 * np.std(values, ddof=1) / math.sqrt(len(values)) + 1e-9


def test_graph_chain_dr_is_unbiased_and_narrower_than_graph_dr_on_nested_arms():
    gaps, w_chain, w_graph = [], [], []
    for seed in range(20):
        data, _, _ = synth(200 + seed)
        bal = data.with_candidate(np.tile([0.0, 0.0, 1.0, 0.0], (data.n, 1)))  # "balanced": chain 2 → 3
        c, g = GraphChainDR(NESTED).estimate(bal, "em"), GraphDR(NESTED).estimate(bal, "em")
        gaps.append(c.value - g.value)
        w_chain.append(c.width)
        w_graph.append(g.width)
    # nested outcomes err together, so the stepwise correction is tighter
    assert np.median(np.array(w_graph) / np.array(w_chain)) > 1.03
    assert abs(np.mean(gaps)) < 3 * np.std(gaps, ddof=1) / math.sqrt(len(gaps)) + 1e-9
