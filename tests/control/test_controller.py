"""The λ controller as a pure object: direction, step bounds, clamping, deadband, batches, a closed loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stopbandit.control.controller import ControllerConfig, LambdaController, Target
from stopbandit.errors import ConfigError


def feed(c: LambdaController, n: int, em: float, tokens: float) -> None:
    for _ in range(n):
        c.observe(em, tokens)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Target("tokens", 500), "target kind must be one of"),
        (lambda: Target.token_budget(0), "token_budget must be > 0 tokens, got 0"),
        (lambda: Target.token_budget(math.inf), "token_budget must be a finite number"),
        (lambda: Target.em_floor(1.0), r"em_floor must be in \(0, 1\), got 1.0"),
        (lambda: Target.em_floor(0.9, margin=0.2), "em_floor 0.9 \\+ margin 0.2 must be below 1"),
        (lambda: Target.token_budget(500, margin=-1), "target margin must be >= 0, got -1"),
        (lambda: Target.token_budget(500, margin=500), "margin 500 must be below the token budget 500"),
        (lambda: ControllerConfig(interval=0), "controller.interval must be a positive integer, got 0"),
        (lambda: ControllerConfig(max_step=0), "controller.max_step must be > 0, got 0"),
        (lambda: ControllerConfig(min_step=0.1, max_step=0.05), r"controller.min_step must be in \[0, max_step=0.05\]"),
        (lambda: ControllerConfig(lam_min=1.0, lam_max=0.5), "0 <= lam_min < lam_max, got \\[1, 0.5\\]"),
        (lambda: ControllerConfig(ki=-0.1), "controller.ki must be >= 0, got -0.1"),
        (lambda: ControllerConfig(kp=True), "controller.kp must be a finite number, got True"),
    ],
)
def test_invalid_settings_name_field_and_value(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_setpoints_sit_on_the_safe_side():
    assert Target.token_budget(800).setpoint == 800
    assert Target.token_budget(800, margin=40).setpoint == 760
    floor = Target.em_floor(0.7)
    assert floor.setpoint == pytest.approx(0.7 + 2 * math.sqrt(0.7 * 0.3 / 2000))
    assert Target.em_floor(0.7, margin=0.0).setpoint == 0.7


@pytest.mark.parametrize(
    ("target", "em", "tokens", "direction"),
    [
        (Target.token_budget(500), 0.7, 600, +1),  # over budget: a token must cost more
        (Target.token_budget(500), 0.7, 400, -1),  # under budget: spend more for EM
        (Target.em_floor(0.7, margin=0), 0.6, 500, -1),  # EM too low: cheaper tokens
        (Target.em_floor(0.7, margin=0), 0.8, 500, +1),  # EM to spare: save tokens
    ],
)
def test_direction(target, em, tokens, direction):
    c = LambdaController(target, ControllerConfig(interval=10, max_step=1.0, min_step=0.0))
    feed(c, 10, em, tokens)
    step = c.update(0.5)
    assert step is not None and step.moved
    assert np.sign(step.lam_after - 0.5) == direction
    assert np.sign(step.error) == (1 if (tokens > 500 if target.kind == "token_budget" else em < 0.7) else -1)


def test_dual_ascent_step_size_is_gain_times_relative_error():
    c = LambdaController(Target.token_budget(500), ControllerConfig(interval=4, ki=0.3, max_step=1.0))
    feed(c, 4, 1.0, 550)  # +10% over budget
    step = c.update(0.2)
    assert step.error == pytest.approx(0.1)
    assert step.lam_after == pytest.approx(0.2 + 0.3 * 0.1)


def test_step_is_bounded():
    c = LambdaController(Target.token_budget(100), ControllerConfig(interval=5, ki=5.0, max_step=0.05))
    feed(c, 5, 1.0, 5000)  # 49x over budget
    step = c.update(0.3)
    assert step.lam_after == pytest.approx(0.35)
    assert "bounded" in step.reason


def test_clamped_at_both_ends_and_reports_saturation():
    cfg = ControllerConfig(interval=5, ki=1.0, max_step=0.5, lam_min=0.1, lam_max=1.0)
    c = LambdaController(Target.token_budget(100), cfg)
    feed(c, 5, 1.0, 1000)
    step = c.update(0.9)
    assert step.lam_after == 1.0 and step.clamped == "lam_max"
    assert c.state().saturated == "high"
    feed(c, 5, 1.0, 1000)
    step = c.update(1.0)  # already at the bound: stays, still saturated, no move
    assert step.lam_after == 1.0 and not step.moved and c.state().saturated == "high"
    feed(c, 5, 1.0, 10)
    step = c.update(0.15)
    assert step.lam_after == pytest.approx(0.1) and step.clamped == "lam_min"
    assert c.state().saturated == "low"
    feed(c, 5, 1.0, 100)
    c.update(0.5)
    assert c.state().saturated is None


def test_moves_below_min_step_are_not_made():
    c = LambdaController(Target.token_budget(500), ControllerConfig(interval=5, ki=0.1, min_step=0.01))
    feed(c, 5, 1.0, 510)  # error 0.02 -> step 0.002 < 0.01
    step = c.update(0.4)
    assert not step.moved and step.lam_after == 0.4
    assert c.state().moves == 0 and c.state().steps == 1


def test_a_step_needs_a_fresh_batch():
    c = LambdaController(Target.token_budget(500), ControllerConfig(interval=10))
    feed(c, 9, 1.0, 900)
    assert c.update(0.2) is None
    assert c.observe(1.0, 900) is True
    assert c.update(0.2) is not None
    assert c.update(0.25) is None  # the batch was consumed
    feed(c, 3, 1.0, 900)
    assert c.update(0.25) is None


def test_proportional_term_acts_on_the_change_of_error():
    c = LambdaController(Target.token_budget(500), ControllerConfig(interval=2, ki=0.0, kp=1.0, max_step=1.0,
                                                                     min_step=0.0))
    feed(c, 2, 1.0, 600)
    first = c.update(0.5)
    assert first.p_term == 0.0  # no previous error yet
    feed(c, 2, 1.0, 700)  # error 0.2 -> 0.4
    second = c.update(0.5)
    assert second.p_term == pytest.approx(0.2)


def test_reason_and_state_carry_the_controller_state():
    c = LambdaController(Target.em_floor(0.7, margin=0.01), ControllerConfig(interval=4, window=8))
    feed(c, 4, 0.5, 300)
    step = c.update(0.6)
    for part in ("controller em_floor>=0.7", "setpoint 0.71", "last 4 outcomes", "EM 0.5000", "error +",
                 "λ 0.6000 -> "):
        assert part in step.reason
    st = c.state()
    assert (st.target, st.target_value, st.observed, st.steps, st.window_n) == ("em_floor", 0.7, 4, 1, 4)
    assert st.window_em == 0.5 and st.lam == step.lam_after and st.last_error == step.error
    feed(c, 10, 1.0, 100)
    assert c.state().window_n == 8 and c.state().window_em == 1.0


def test_disabled_controller_does_not_step():
    c = LambdaController(Target.token_budget(500), ControllerConfig(interval=2))
    c.enabled = False
    assert c.observe(1.0, 900) is False
    assert c.observe(1.0, 900) is False
    assert c.update(0.2) is None


@pytest.mark.parametrize("kind", ["token_budget", "em_floor"])
def test_closed_loop_on_a_noisy_monotone_plant_settles_at_the_setpoint(kind):
    """Tokens ~ 1000·exp(−2λ), EM ~ 0.75 − 0.2λ, per-request noise as on the simulator."""
    rng = np.random.default_rng(0)
    target = Target.token_budget(600) if kind == "token_budget" else Target.em_floor(0.62, margin=0.0)
    c = LambdaController(target)
    lam, trace = 0.05, []
    for _ in range(150):  # 30,000 requests
        mean_tok, p_em = 1000 * math.exp(-2 * lam), 0.75 - 0.2 * lam
        tokens = rng.gamma(1.3, mean_tok / 1.3, size=200)
        ems = (rng.random(200) < p_em).astype(float)
        for e, t in zip(ems, tokens):
            c.observe(e, t)
        step = c.update(lam)
        lam = step.lam_after
        trace.append(lam)
    want = 0.5 * math.log(1000 / 600) if kind == "token_budget" else (0.75 - 0.62) / 0.2
    tail = np.array(trace[50:])
    assert abs(tail.mean() - want) < 0.03
    assert tail.std() < 0.05
    assert 0.0 <= tail.min() and tail.max() <= 2.0
