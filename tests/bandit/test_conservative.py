"""Conservative exploration (stopbandit.bandit.conservative): the budget holds, propensities are what is served."""

from __future__ import annotations

import math
import random

import pytest

from stopbandit.bandit.arms import ArmSet
from stopbandit.bandit.conservative import MIN_SAMPLES, ConservativeBudget, ConservativeConfig
from stopbandit.config import config_from_mapping
from stopbandit.errors import ConfigError

ARMS = ArmSet.of()  # full, careful, balanced, aggressive (most lenient first)
NAMES = ARMS.names
REVEALS = ARMS.reveals()
B = NAMES.index("careful")


def budget(max_loss: float = 0.01, fraction: float = 0.0) -> ConservativeBudget:
    return ConservativeBudget(ConservativeConfig("careful", max_loss=max_loss, max_loss_fraction=fraction),
                              NAMES, REVEALS)


def draw(rng: random.Random, q: list[float]) -> int:
    u, acc = rng.random(), 0.0
    for i, p in enumerate(q):
        acc += p
        if u < acc:
            return i
    return len(q) - 1


def adversarial_stream(seed: int, n: int, max_loss: float):
    """The policy always wants the worst arm and claims it is the best; every arm but the baseline loses 1."""
    rng = random.Random(seed)
    b = budget(max_loss)
    served_minus_base = 0.0
    for t in range(n):
        key = f"d{t}"
        worst = 3 if t % 2 else 0
        scores = [0.0, 0.1, 0.0, 0.0]
        scores[worst] = 0.9  # lies: the heads rank the losing arm first
        probs = [0.05, 0.05, 0.05, 0.05]
        probs[worst] = 0.85
        q = b.shape(key, probs, scores)
        assert math.isclose(math.fsum(q), 1.0) and min(q) >= 0.0
        arm = draw(rng, q)
        base_r = 0.6
        served = base_r if arm == B else base_r - 1.0  # every non-baseline arm costs a full reward unit
        em = 1.0 if arm == B else 0.0
        known = {arm: served}
        if arm in (0, B):  # full or careful: the trace reveals careful
            known[B] = base_r
        b.settle(key, arm, served, em, known)
        served_minus_base += served - base_r
        yield t + 1, served_minus_base, b


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("max_loss", [0.0, 0.01, 0.05])
def test_budget_holds_on_an_adversarial_stream(seed, max_loss):
    worst_gap = 0.0
    for t, diff, b in adversarial_stream(seed, 3000, max_loss):
        # the realized loss against the baseline never exceeds the budget by more than one request's loss
        worst_gap = min(worst_gap, diff + max_loss * t)
        assert diff >= -max_loss * t - 1.0 - 1e-9, (t, diff)
    state = b.state()
    assert state.left >= -1.0 - 1e-9
    assert state.restricted > 0
    if max_loss == 0.0:
        assert diff == 0.0  # zero budget: the baseline is served every time (shadow mode's end of the dial)


def test_budget_allows_exploration_that_pays():
    b = budget(0.01)
    rng = random.Random(5)
    for t in range(2000):
        scores = [0.5, 0.6, 0.7, 0.4]
        probs = [0.1, 0.1, 0.7, 0.1]
        q = b.shape(f"k{t}", probs, scores)
        arm = draw(rng, q)
        rewards = [0.5, 0.6, 0.7, 0.4]  # the scores are right
        known = {a: rewards[a] for a in REVEALS[arm]}
        b.settle(f"k{t}", arm, rewards[arm], 1.0, known, {a: 1.0 for a in known})
    st = b.state()
    assert st.explored > 1500  # once the greedy arm has paid, the full distribution is served
    assert st.lower_bound > 0.0


def test_audit_keeps_baseline_revealing_mass_while_an_estimated_arm_is_served():
    b = ConservativeBudget(ConservativeConfig("careful", max_loss=1.0, audit=0.2), NAMES, REVEALS)
    q = b.shape("a", [0.0, 0.02, 0.0, 0.98], [0.4, 0.5, 0.5, 0.9])
    assert q[0] + q[B] == pytest.approx(0.2) and q[3] == pytest.approx(0.8)
    # nothing to audit when only baseline-revealing arms are offered
    assert b.shape("b", [0.3, 0.7, 0.0, 0.0], [0.4, 0.5, 0.5, 0.1]) == [0.3, 0.7, 0.0, 0.0]


def test_returned_vector_is_what_was_charged_and_never_invents_arms():
    b = budget(0.0)
    probs = [0.1, 0.2, 0.6, 0.1]
    q = b.shape("x", probs, [0.2, 0.5, 0.6, 0.1])
    assert q == [0.0, 1.0, 0.0, 0.0]  # nothing earned yet, zero budget: the baseline, one-hot
    assert b.state().held == 0.0
    b2 = budget(0.5)
    q2 = b2.shape("y", probs, [0.2, 0.5, 0.6, 0.1])
    assert math.isclose(math.fsum(q2), 1.0)
    # every arm served with positive probability was one the policy offered, or the baseline
    assert all(p == 0.0 or probs[a] > 0.0 or a == B for a, p in enumerate(q2))


def test_cheap_exploration_prefers_arms_that_reveal_more():
    # only a little room: the exploration mass that survives goes to the arm revealing most per unit charge
    # earned slack counts over the whole run only (window 0): a window's budget is never paid from gains
    b = ConservativeBudget(ConservativeConfig("careful", max_loss=0.0, window=0), NAMES, REVEALS)
    b._exact_sum = 0.3  # noqa: SLF001 - a budget with 0.3 of earned slack
    q = b.shape("z", [0.3, 0.1, 0.3, 0.3], [0.5, 0.5, 0.5, 0.5])
    assert q[0] > 0.0  # "full" reveals all four arms
    assert q[3] == 0.0  # "aggressive" reveals only itself


def test_unrevealed_baseline_is_estimated_from_comparable_requests_and_bounded_before():
    b = budget(1.0)
    greedy_aggressive = [0.0, 0.1, 0.0, 0.9]  # the policy's choice: aggressive, careful explored
    scores = [0.4, 0.5, 0.5, 0.6]
    # before any comparable request: a stricter arm's miss books the deterministic worst case −1, a hit 0
    b.shape("a", greedy_aggressive, scores)
    b.settle("a", 3, -0.05, 0.0, {3: -0.05}, {3: 0.0})
    assert b.state().lower_bound == pytest.approx(-1.0)
    b.shape("h", greedy_aggressive, scores)
    b.settle("h", 3, 0.95, 1.0, {3: 0.95}, {3: 1.0})
    assert b.state().lower_bound == pytest.approx(-1.0)
    # comparable requests: the policy wanted aggressive, careful was served and its trace revealed
    # aggressive's miss; there r_aggressive − r_careful = 0.3 − 0.5
    for i in range(int(MIN_SAMPLES) + 10):
        b.shape(f"r{i}", greedy_aggressive, scores)
        b.settle(f"r{i}", B, 0.5, 1.0, {B: 0.5, 2: 0.5, 3: 0.3}, {B: 1.0, 2: 1.0, 3: 0.0})
    # the stratum (aggressive, greedy, miss) is calibrated: its earlier miss is now booked at −0.2
    assert b.state().lower_bound == pytest.approx(-0.2)
    b.shape("e", greedy_aggressive, scores)
    b.settle("e", 3, 0.0, 0.0, {3: 0.0}, {3: 0.0})
    assert b.state().lower_bound == pytest.approx(-0.4)
    # the hit stratum has no comparable request yet: still its worst case, 0
    assert b.state().comparable == int(MIN_SAMPLES) + 10


def lying_heads_stream(seed: int, n: int, max_loss: float):
    """The heads always rank aggressive first; it misses on half the requests, where careful hits.

    The greedy choice is exactly where the heads are wrong (the optimizer's curse): a bound calibrated on
    requests the greedy arm did not pick would be optimistic here.
    """
    rng = random.Random(seed)
    b = budget(max_loss)
    return greedy_aggressive_stream(b, rng, n, "d", lambda t: rng.random() < 0.5), b


def greedy_aggressive_stream(b, rng, n: int, prefix: str, misses) -> list[float]:
    """``n`` requests on which the heads rank aggressive first; aggressive misses (EM 0, reward 0) where
    ``misses(t)``, else earns 0.9. Each request is shaped by ``b``, drawn with ``rng`` and settled with what its
    arm's trace reveals; returns the served reward minus the baseline's, per request."""
    diffs = []
    for t in range(n):
        key = f"{prefix}{t}"
        miss = misses(t)
        rewards = [0.7, 0.8, 0.8, 0.0 if miss else 0.9]  # full, careful, balanced, aggressive
        ems = [1.0, 1.0, 1.0, 0.0 if miss else 1.0]
        q = b.shape(key, [0.05, 0.05, 0.05, 0.85], [0.5, 0.6, 0.6, 0.95])
        arm = draw(rng, q)
        known = {a: rewards[a] for a in REVEALS[arm]}
        b.settle(key, arm, rewards[arm], ems[arm], known, {a: ems[a] for a in known})
        diffs.append(rewards[arm] - rewards[B])
    return diffs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_window_budget_holds_when_the_greedy_arm_is_chosen_where_the_heads_are_wrong(seed):
    diffs, b = lying_heads_stream(seed, 6000, 0.01)
    for w in range(1000, 6000, 1000):  # every 1,000-request window after the first, within one request's loss
        assert sum(diffs[w:w + 1000]) >= -0.01 * 1000 - 1.0, (w, sum(diffs[w:w + 1000]))
    st = b.state()
    assert st.lower_bound <= sum(diffs) + 1e-9  # the bound is a lower bound of the realized difference
    assert st.window_lower_bound <= sum(diffs[-1000:]) + 1e-9
    assert st.comparable > 0 and st.restricted > 0


def test_window_budget_binds_after_gains_were_banked():
    # the greedy arm pays for 3,000 requests, then turns bad: the gains banked over the run do not let one
    # window lose more than the window's budget
    b = budget(0.01)
    rng = random.Random(3)
    diffs = greedy_aggressive_stream(b, rng, 6000, "g", lambda t: t >= 3000 and rng.random() < 0.6)
    assert sum(diffs[:3000]) > 50.0  # gains were banked
    for w in range(1000, 6000, 1000):
        assert sum(diffs[w:w + 1000]) >= -0.01 * 1000 - 1.0, (w, sum(diffs[w:w + 1000]))


def test_fraction_budget_follows_the_baseline_reward():
    b = budget(0.0, fraction=0.1)
    for i in range(100):
        b.shape(f"f{i}", [0, 1.0, 0, 0], [0.4, 0.5, 0.5, 0.6])
        b.settle(f"f{i}", B, 0.5, 1.0, {B: 0.5})
    assert b.state().budget == pytest.approx(0.1 * 50)
    assert b.state().baseline_served == 0  # note_served is the Selector's call


def test_release_drops_the_charge():
    b = budget(1.0)
    b.shape("p", [0.5, 0.0, 0.5, 0.0], [0.1, 0.5, 0.2, 0.0])
    assert b.state().held > 0.0
    b.release("p")
    assert b.state().held == pytest.approx(0.0)


@pytest.mark.parametrize("cfg, field", [
    ({"baseline": "nope", "max_loss": 0.01}, "exploration.baseline"),
    ({"baseline": "careful", "max_loss": -1}, "exploration.max_loss"),
    ({"baseline": "careful", "max_loss": "x"}, "exploration.max_loss"),
    ({"baseline": "careful", "max_loss_fraction": 2}, "exploration.max_loss_fraction"),
    ({"baseline": "careful", "confidence": 1.5}, "exploration.confidence"),
    ({"max_loss": 0.01}, "exploration.baseline"),
    ({"baseline": 3}, "exploration.baseline"),
    ({"baseline": "careful", "window": -1}, "exploration.window"),
    ({"baseline": "careful", "window": 2.5}, "exploration.window"),
    ({"baseline": "careful", "audit": 0.0}, "exploration.audit"),
])
def test_config_errors_name_the_field(cfg, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        config_from_mapping({"exploration": cfg})


def test_config_from_toml_mapping_keeps_the_exploration_rule():
    cfg = config_from_mapping({"exploration": {"name": "squarecb", "gamma_scale": 7.0, "baseline": "careful",
                                               "max_loss": 0.02}})
    assert cfg.exploration.gamma_scale == 7.0
    assert cfg.conservative == ConservativeConfig("careful", max_loss=0.02)
    assert config_from_mapping({}).conservative.enabled is False
    cfg = config_from_mapping({"exploration": {"baseline": "careful", "max_loss": 0.02, "window": 500, "audit": 0.2}})
    assert (cfg.conservative.window, cfg.conservative.audit) == (500, 0.2)
    assert cfg.conservative.to_dict()["audit"] == 0.2
    # the window, looked at on every decision, is bounded at a ten times smaller miss probability
    assert cfg.conservative.window_z == pytest.approx(2.5758, abs=1e-3) and cfg.conservative.z < 1.65


def test_window_reserve_grows_to_the_largest_single_loss():
    # at a large λ one lenient run can cost several reward units: the window keeps that much back
    b = budget(0.01)
    assert b.state().window_budget == pytest.approx(0.01 * 1000 - 1.0)
    b.shape("big", [1.0, 0.0, 0.0, 0.0], [0.5, 0.6, 0.6, 0.6])
    b.settle("big", 0, -4.5, 1.0, {0: -4.5, B: 0.5}, {0: 1.0, B: 1.0})  # full, 5 reward units below careful
    assert b.state().window_budget == pytest.approx(0.01 * 1000 - 5.0)
