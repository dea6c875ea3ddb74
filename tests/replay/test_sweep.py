"""λ sweep: λ lists, greedy policy, hand-computed sweep points, picking λ, the Pareto plot."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from stopbandit.bandit.arms import DEFAULT_ARMS, ArmSet
from stopbandit.errors import ConfigError, InputError
from stopbandit.replay import sweep as sweep_mod
from stopbandit.replay.ope import IPS, DirectMethod, DoublyRobust, Estimate, LoggedData
from stopbandit.replay.sweep import (
    SweepPoint,
    greedy_probs,
    lenience_rank,
    parse_lambdas,
    pick_lambda,
    plot_pareto,
)
from tests.replay.reference_sweep import fixed_arm_estimates, sweep

# ---------------------------------------------------------------------------------------------
# Two arms: 0 = full reasoning (lenient), 1 = aggressive (strict). Uniform logging, token_scale 1000.
#
#   event  logged  em  tokens   em_hat      tokens_hat
#   0      0       1   900      [.9, .8]    [1000, 400]
#   1      1       0   450      [.6, .3]    [1200, 500]
#   2      1       1   700      [.7, .7]    [ 800, 800]   identical arms: always a tie
#   3      0       1   650      [.5, .2]    [ 600, 300]
#
# scores em_hat − λ·tokens_hat/1000
#   λ = 0  : arm 0 everywhere (event 2 tied → first arm)
#   λ = .5 : e0 .4 vs .6 → 1; e1 0 vs .05 → 1; e2 tie → 0; e3 .2 vs .05 → 0
#   λ = 1  : e0 → 1; e1 → 1; e2 tie → 0; e3 −.1 vs −.1 tie → 0
# ---------------------------------------------------------------------------------------------


def tiny() -> LoggedData:
    return LoggedData(
        actions=np.array([0, 1, 1, 0]),
        logging_probs=np.full((4, 2), 0.5),
        candidate_probs=np.full((4, 2), 0.5),
        em=np.array([1.0, 0.0, 1.0, 1.0]),
        tokens=np.array([900.0, 450.0, 700.0, 650.0]),
        em_hat=np.array([[0.9, 0.8], [0.6, 0.3], [0.7, 0.7], [0.5, 0.2]]),
        tokens_hat=np.array([[1000, 400], [1200, 500], [800, 800], [600, 300]], dtype=float),
    )


def test_sweep_by_hand():
    points = sweep(tiny(), [0.0, 0.5, 1.0], token_scale=1000.0)
    assert [p.lam for p in points] == [0.0, 0.5, 1.0]
    assert all(isinstance(p, SweepPoint) and p.em.estimator == "DR" for p in points)
    # λ = 0: π = arm 0 everywhere, w = [2, 0, 0, 2]
    #   em DR: .9 + 2(1 − .9) = 1.1; .6; .7; .5 + 2(1 − .5) = 1.5 → 3.9/4
    assert points[0].em.value == pytest.approx(0.975)
    # λ = .5: π = [1, 1, 0, 0] (arm index per event), w = [0, 2, 0, 2]
    #   em DR:     .8; .3 + 2(0 − .3) = −.3; .7; .5 + 2(1 − .5) = 1.5        → 2.7/4 = .675
    #   tokens DR: 400; 500 + 2(450 − 500) = 400; 800; 600 + 2(650 − 600) = 700 → 2300/4 = 575
    #   reward:    .675 − .5 · 575/1000 = .3875
    mid = points[1]
    assert mid.em.value == pytest.approx(0.675)
    assert mid.tokens.value == pytest.approx(575.0)
    assert mid.reward.value == pytest.approx(0.3875)
    assert (mid.reward.lam, mid.reward.token_scale) == (0.5, 1000.0)
    # λ = 1 gives the same policy as λ = .5 (event 3 is a tie that goes to arm 0)
    assert points[2].em.value == pytest.approx(0.675)
    for p in points:
        assert p.reward.value == pytest.approx(p.em.value - p.lam * p.tokens.value / 1000)


def test_sweep_tie_rank_and_probs_fn():
    # preferring arm 1 on ties flips event 2 (and event 3 at λ = 1) to arm 1
    pts = sweep(tiny(), [1.0], tie_rank=[1, 0])
    # π = arm 1 everywhere: w = [0, 2, 2, 0]; em DR: .8; .3 + 2(0 − .3) = −.3; .7 + 2(1 − .7) = 1.3; .2
    assert pts[0].em.value == pytest.approx((0.8 - 0.3 + 1.3 + 0.2) / 4)

    def eps_greedy(scores):
        return 0.8 * greedy_probs(scores) + 0.1

    pts = sweep(tiny(), [0.5], probs_fn=eps_greedy, estimator=IPS())
    # π(logged arm) = [.1, .9, .1, .9] → w = [.2, 1.8, .2, 1.8]; em IPS (.2 + 0 + .2 + 1.8)/4
    assert pts[0].em.value == pytest.approx(2.2 / 4)
    assert pts[0].em.estimator == "IPS"


def test_sweep_with_separate_heads_and_without_model_in_log():
    data = tiny()
    bare = LoggedData(actions=data.actions, logging_probs=data.logging_probs,
                      candidate_probs=data.candidate_probs, em=data.em, tokens=data.tokens)
    pts = sweep(bare, [0.5], estimator=IPS(), em_hat=data.em_hat, tokens_hat=data.tokens_hat)
    # π = [1, 1, 0, 0]: w = [0, 2, 0, 2]; em IPS (0 + 0 + 0 + 2)/4, tokens (900·0 + 900 + 0 + 1300)/4
    assert pts[0].em.value == pytest.approx(0.5)
    assert pts[0].tokens.value == pytest.approx(550.0)


def test_dm_sweep_is_monotone_in_lambda():
    """For argmax of a − λ·b, the chosen arm's a and b never grow with λ: DM estimates follow."""
    rng = np.random.default_rng(5)
    n, k = 500, 4
    mu = np.full((n, k), 1 / k)
    data = LoggedData(
        actions=rng.integers(0, k, n), logging_probs=mu, candidate_probs=mu,
        em=rng.integers(0, 2, n).astype(float), tokens=rng.integers(100, 2000, n).astype(float),
        em_hat=rng.random((n, k)), tokens_hat=rng.random((n, k)) * 2000,
    )
    pts = sweep(data, parse_lambdas("0:2:0.1"), estimator=DirectMethod())
    em = np.array([p.em.value for p in pts])
    tok = np.array([p.tokens.value for p in pts])
    assert (np.diff(em) <= 1e-12).all() and (np.diff(tok) <= 1e-9).all()
    assert tok[-1] < tok[0]


SWEEP_ERRORS = [
    (ConfigError, "lambdas is empty", lambda: sweep(tiny(), [])),
    (ConfigError, r"each λ must be a finite number >= 0, got -0.5", lambda: sweep(tiny(), [-0.5])),
    (ConfigError, "each λ must be a number >= 0, got 'x'", lambda: sweep(tiny(), ["x"])),
    (ConfigError, "estimator must be an Estimator instance", lambda: sweep(tiny(), [0.1], estimator=IPS)),
    (ConfigError, "probs_fn must be callable", lambda: sweep(tiny(), [0.1], probs_fn=3)),
    (InputError, r"candidate probabilities at λ=0.1 are invalid: candidate_probs\[0\] must sum to 1",
     lambda: sweep(tiny(), [0.1], probs_fn=lambda s: np.ones_like(s))),
    (InputError, r"em_hat must be a finite array of shape \(4, 2\)",
     lambda: sweep(tiny(), [0.1], em_hat=np.ones((4, 3)))),
    (ConfigError, r"tie_rank must be a permutation of 0..1, got \[0, 0\]",
     lambda: sweep(tiny(), [0.1], tie_rank=[0, 0])),
    (InputError, "sweep needs a LoggedData", lambda: sweep("log", [0.1])),
]


@pytest.mark.parametrize("exc, match, call", SWEEP_ERRORS, ids=[m[:40] for _, m, _ in SWEEP_ERRORS])
def test_sweep_errors(exc, match, call):
    with pytest.raises(exc, match=match):
        call()


def test_sweep_needs_heads():
    data = tiny()
    bare = LoggedData(actions=data.actions, logging_probs=data.logging_probs,
                      candidate_probs=data.candidate_probs, em=data.em, tokens=data.tokens)
    with pytest.raises(InputError, match=r"sweep needs em_hat \(n, K\) head predictions"):
        sweep(bare, [0.1], estimator=IPS())


# --------------------------------------------------------------------------------- λ lists


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("0:0.2:0.05", [0.0, 0.05, 0.1, 0.15, 0.2]),
        ("0:1:0.3", [0.0, 0.3, 0.6, 0.9]),
        (" 0.1 : 0.3 : 0.1 ", [0.1, 0.2, 0.3]),
        ("0.5:0.5:0.1", [0.5]),
        ("0.1,0.5, 2", [0.1, 0.5, 2.0]),
        ("0.3", [0.3]),
    ],
)
def test_parse_lambdas(spec, expected):
    assert parse_lambdas(spec) == expected


def test_parse_lambdas_default_range():
    lams = parse_lambdas("0:1:0.05")
    assert len(lams) == 21 and lams[0] == 0.0 and lams[-1] == 1.0 and lams[3] == 0.15


@pytest.mark.parametrize(
    "spec, match",
    [
        ("", "must be 'start:stop:step' or a comma-separated list"),
        (None, "must be 'start:stop:step' or a comma-separated list, got None"),
        ("0:1", r"range must be 'start:stop:step' \(three numbers\), got '0:1'"),
        ("0:x:0.1", "stop must be a number, got 'x'"),
        ("0:1:0", "step must be > 0, got 0"),
        ("0:1:-0.1", "step must be > 0, got -0.1"),
        ("1:0:0.1", "stop 0 is below start 1"),
        ("0:inf:1", "stop must be finite"),
        ("0:1000:0.0001", "gives 10000001 values, more than 10000"),
        ("-1", "λ must be >= 0, got -1"),
        ("0,nan", "value must be finite"),
        ("0,,1", "value must be a number, got ''"),
    ],
)
def test_parse_lambdas_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_lambdas(spec)


# --------------------------------------------------------------------------------- greedy policy


def test_greedy_ties_and_lenience_rank():
    scores = np.array([[0.1, 0.3, 0.3], [0.5, 0.2, 0.1], [0.2, 0.2, 0.2 + 1e-15]])
    np.testing.assert_array_equal(greedy_probs(scores), [[0, 1, 0], [1, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(greedy_probs(scores, tie_rank=[2, 1, 0]), [[0, 0, 1], [1, 0, 0], [0, 0, 1]])
    assert lenience_rank(ArmSet(DEFAULT_ARMS)).tolist() == [0, 1, 2, 3]
    assert lenience_rank(ArmSet(tuple(reversed(DEFAULT_ARMS)))).tolist() == [3, 2, 1, 0]
    with pytest.raises(InputError, match="scores must be finite"):
        greedy_probs(np.array([[np.nan, 1.0]]))
    with pytest.raises(InputError, match=r"scores must be a 2-D array \(n, K\)"):
        greedy_probs(np.array([1.0, 2.0]))


# --------------------------------------------------------------------------------- picking λ


def est(value: float, half: float, metric: str) -> Estimate:
    return Estimate(value=value, ci_low=value - half, ci_high=value + half, ci_method="normal", alpha=0.05,
                    std_err=half / 1.96, n=100, ess=50.0, max_weight=2.0, unsupported_share=0.0,
                    estimator="DR", metric=metric)


def point(lam: float, em: float, tok: float) -> SweepPoint:
    return SweepPoint(lam, est(em, 0.02, "em"), est(tok, 50.0, "tokens"), est(em - lam * tok / 1000, 0.03, "reward"))


POINTS = [point(0.0, 0.80, 1000), point(0.2, 0.78, 800), point(0.4, 0.74, 600), point(0.6, 0.70, 600),
          point(0.8, 0.60, 400)]


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(token_budget=700), 0.4),  # tokens <= 700: λ .4 (.74), .6 (.70), .8 (.60) → best EM
        (dict(token_budget=1000), 0.0),
        (dict(token_budget=300), None),
        (dict(em_floor=0.75), 0.2),  # EM >= .75: λ 0 (1000 tokens), .2 (800) → fewest tokens
        (dict(em_floor=0.70), 0.4),  # λ .4 and .6 tie at 600 tokens → higher EM
        (dict(em_floor=0.9), None),
        (dict(token_budget=620, conservative=True), 0.8),  # upper bounds: 650 for λ .4/.6, 450 for .8
        (dict(em_floor=0.77, conservative=True), 0.0),  # lower bounds: .78 (λ 0), .76 (λ .2)
    ],
)
def test_pick_lambda(kwargs, expected):
    assert pick_lambda(POINTS, **kwargs) == expected


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(), "give exactly one of token_budget or em_floor"),
        (dict(token_budget=500, em_floor=0.5), "give exactly one of token_budget or em_floor"),
        (dict(token_budget=-1), r"token_budget must be a finite number >= 0, got -1"),
        (dict(em_floor=1.5), r"em_floor must be a finite number in \[0, 1\], got 1.5"),
        (dict(em_floor="high"), "em_floor must be a number, got 'high'"),
    ],
)
def test_pick_lambda_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        pick_lambda(POINTS, **kwargs)


def test_pick_lambda_on_empty_sweep():
    assert pick_lambda([], token_budget=100) is None


# --------------------------------------------------------------------------------- plot


def test_plot_pareto_writes_png(tmp_path):
    data = tiny()
    points = sweep(data, parse_lambdas("0:1:0.25"))
    fixed = fixed_arm_estimates(data, ["full", "aggressive"], estimator=DoublyRobust())
    assert set(fixed) == {"full", "aggressive"}
    em, tok = fixed["full"]
    assert em.metric == "em" and tok.metric == "tokens"
    out = plot_pareto(points, fixed, tmp_path / "pareto.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError, match="needs sweep points or fixed arms"):
        plot_pareto([], {}, tmp_path / "empty.png")
    with pytest.raises(ConfigError, match="names must name all 2 arms"):
        fixed_arm_estimates(data, ["full"])


def test_module_doctests():
    assert doctest.testmod(sweep_mod).failed == 0
