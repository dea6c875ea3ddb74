"""Conservative exploration (stopbandit.bandit.conservative): the budget holds, propensities are what is served."""

from __future__ import annotations

import math
import random

import pytest

from stopbandit.bandit.arms import ArmSet
from stopbandit.bandit.conservative import MIN_RESIDUALS, ConservativeBudget, ConservativeConfig
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
        b.settle(f"k{t}", arm, rewards[arm], 1.0, known)
    st = b.state()
    assert st.explored > 1500  # once the greedy arm has paid, the full distribution is served
    assert st.lower_bound > 0.0


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
    b = budget(0.0)
    b._exact_sum = 0.3  # noqa: SLF001 - a budget with 0.3 of earned slack
    q = b.shape("z", [0.3, 0.1, 0.3, 0.3], [0.5, 0.5, 0.5, 0.5])
    assert q[0] > 0.0  # "full" reveals all four arms
    assert q[3] == 0.0  # "aggressive" reveals only itself


def test_unrevealed_baseline_is_estimated_after_calibration_and_bounded_before():
    b = budget(0.0)
    # before any residual: a stricter arm's miss books the deterministic worst case −1, a hit books 0
    b.shape("a", [0, 0, 0, 1.0], [0.4, 0.5, 0.5, 0.6])
    b.settle("a", 3, -0.05, 0.0, {3: -0.05})
    assert b.state().lower_bound == pytest.approx(-1.0)
    b.shape("h", [0, 0, 0, 1.0], [0.4, 0.5, 0.5, 0.6])
    b.settle("h", 3, 0.95, 1.0, {3: 0.95})
    assert b.state().lower_bound == pytest.approx(-1.0)
    # calibrate: the heads' difference for aggressive is exact on revealed requests
    for i in range(MIN_RESIDUALS + 20):
        b.shape(f"r{i}", [1.0, 0, 0, 0], [0.4, 0.5, 0.5, 0.6])
        b.settle(f"r{i}", 0, 0.4, 1.0, {0: 0.4, 1: 0.5, 2: 0.5, 3: 0.6})
    before = b.state().lower_bound
    b.shape("e", [0, 0, 0, 1.0], [0.4, 0.5, 0.5, 0.6])
    b.settle("e", 3, 0.0, 0.0, {3: 0.0})
    # estimated term ŝ_a − ŝ_b = +0.1 with zero residual spread: the bound moves by +0.1
    assert b.state().lower_bound == pytest.approx(before + 0.1)


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
