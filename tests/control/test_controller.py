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
    assert floor.setpoint == pytest.approx(0.7 + 3 * math.sqrt(0.7 * 0.3 / 2000))
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


# --------------------------------------------------------------------------- model-based feed-forward


def response(em, tokens, lam0: float = 0.3, scale: float = 1000.0):
    """A Response whose served probabilities are greedy at lam0 (exploration offset 0)."""
    from stopbandit.control.feedforward import Response

    em, tokens = np.asarray(em, dtype=float), np.asarray(tokens, dtype=float)
    best = np.argmax(em - lam0 * tokens / scale, axis=1)
    p0 = np.zeros_like(em)
    p0[np.arange(len(best)), best] = 1.0
    return Response(em, tokens, p0, lam0, scale)


# one context, two arms: "full" (EM 0.9, 1000 tokens) and "cheap" (EM 0.6, 200 tokens):
# full wins while 0.9 − λ > 0.6 − 0.2λ, i.e. below λ = 0.375
TWO_ARMS = ([[0.9, 0.6]], [[1000.0, 200.0]])


def test_response_is_the_greedy_choice_and_solve_finds_the_switch():
    r = response(*TWO_ARMS)
    assert r.predict(0.3) == (1000.0, 0.9) and r.predict(0.4) == (200.0, 0.6)
    lam, out = r.solve("token_budget", 600.0, 0.0, 2.0)
    assert out is None and lam == pytest.approx(0.375, abs=1e-6)
    assert r.solve("token_budget", 1500.0, 0.0, 2.0) == (0.0, "lo")  # under budget even at λ = 0
    assert r.solve("token_budget", 100.0, 0.0, 2.0) == (2.0, "hi")  # out of reach even at lam_max
    lam, out = r.solve("em_floor", 0.7, 0.0, 2.0)
    assert out is None and lam == pytest.approx(0.375, abs=1e-6)


def test_response_adds_the_exploration_offset_measured_at_lam0():
    from stopbandit.control.feedforward import Response

    em, tok = np.array(TWO_ARMS[0]), np.array(TWO_ARMS[1])
    p0 = np.array([[0.9, 0.1]])  # served at λ0 = 0.3: mostly full, 10 % explored cheap
    r = Response(em, tok, p0, 0.3, 1000.0)
    assert r.served() == pytest.approx((920.0, 0.87))
    assert r.predict(0.3) == pytest.approx((920.0, 0.87))  # exact at λ0
    assert r.predict(1.0) == pytest.approx((200.0 - 80.0, 0.6 - 0.03))  # the offset carried over


def test_feedforward_step_goes_to_the_model_lambda_with_the_bias_corrected_and_bounded():
    # many contexts whose switch points spread over λ: the predicted tokens fall smoothly with λ
    k = np.linspace(0.2, 0.8, 61)
    em = np.column_stack([np.full_like(k, 0.9), 0.9 - 0.8 * k])  # switch at λ = k (cheap arm: 200 tokens)
    tok = np.column_stack([np.full_like(k, 1000.0), np.full_like(k, 200.0)])
    cfg = ControllerConfig(interval=10, feedforward=True, max_step=1.0, min_step=0.0, bias_gain=1.0, model_warmup=0)
    c = LambdaController(Target.token_budget(600), cfg)
    r = response(em, tok, lam0=0.3)
    predicted = r.served(last=10)[0]
    feed(c, 10, 1.0, predicted)  # outcomes exactly as the model predicts: bias 0
    step = c.update(0.3, r)
    want, _ = r.solve("token_budget", 600.0, 0.0, 2.0)
    assert step.mode == "feedforward" and step.model_bias == pytest.approx(0.0)
    assert step.lam_after == pytest.approx(want) and step.lam_model == pytest.approx(want)
    assert "model (61 contexts)" in step.reason and "feedforward: model λ" in step.reason
    # outcomes 10 % above the model: with the bias learned, the model aims 10 % under the setpoint
    c2 = LambdaController(Target.token_budget(600), cfg)
    feed(c2, 10, 1.0, predicted + 60.0)
    step2 = c2.update(0.3, r)
    assert step2.model_bias == pytest.approx(0.1)
    assert step2.lam_after == pytest.approx(r.solve("token_budget", 540.0, 0.0, 2.0)[0])
    assert step2.lam_after > step.lam_after
    # the step bound and clamp still apply
    c3 = LambdaController(Target.token_budget(600), ControllerConfig(interval=10, feedforward=True, max_step=0.05,
                                                                      model_warmup=0))
    feed(c3, 10, 1.0, predicted)
    assert c3.update(0.3, r).lam_after == pytest.approx(0.35)


def test_feedforward_absorbs_a_mix_shift_in_one_step_where_pi_takes_many():
    """The contexts turn harder (the cheap arm loses 15 % more EM: +15 % tokens at the old λ, as the simulator's
    mix shift); the outcomes follow the contexts."""
    k = np.linspace(0.2, 0.8, 61)
    n = len(k)  # one batch = the whole window of contexts
    tok = np.column_stack([np.full_like(k, 1000.0), np.full_like(k, 200.0)])

    def contexts(hardness: float, lam0: float):
        return response(np.column_stack([np.full_like(k, 0.9), 0.9 - 0.8 * k * hardness]), tok, lam0)

    cfg = ControllerConfig(interval=n, feedforward=True, max_step=1.0, min_step=0.0, bias_gain=0.2, model_warmup=0)
    c = LambdaController(Target.token_budget(600), cfg)
    pi = LambdaController(Target.token_budget(600), ControllerConfig(interval=n, max_step=1.0, min_step=0.0))
    easy = contexts(1.0, 0.3)
    feed(c, n, 1.0, easy.served()[0])
    lam = c.update(0.3, easy).lam_after
    assert easy.predict(lam)[0] == pytest.approx(600.0, rel=0.02)
    hard = contexts(1.15, lam)
    feed(c, n, 1.0, hard.served()[0])
    feed(pi, n, 1.0, hard.served()[0])
    ff_step = c.update(lam, hard)
    pi_step = pi.update(lam)
    want = hard.solve("token_budget", 600.0, 0.0, 2.0)[0]
    assert ff_step.model_bias == pytest.approx(0.0, abs=1e-9)
    assert hard.predict(lam)[0] > 1.1 * 600
    assert ff_step.lam_after == pytest.approx(want) and want > lam + 0.05
    assert hard.predict(ff_step.lam_after)[0] == pytest.approx(600.0, rel=0.02)
    assert 0 < pi_step.lam_after - lam < 0.67 * (want - lam)  # PI closes a part of the gap per step


def test_calibration_is_per_domain_so_a_mix_shift_keeps_the_level():
    """Heads that under-predict math by 30 % and trivia not at all: after the mix turns to math, the calibrated
    model still predicts the observed level."""
    from stopbandit.control.feedforward import ContextWindow

    class Heads:  # the policy seam the window uses: predict_heads, exploration, t, token_scale
        token_scale = 1000.0
        t = 1
        trace_share = None

        class exploration:  # noqa: N801 - stands in for an Exploration instance
            @staticmethod
            def probabilities_batch(scores, t, traces=None):
                p = np.zeros_like(scores)
                p[np.arange(len(scores)), np.argmax(scores, axis=1)] = 1.0
                return p

        @staticmethod
        def predict_heads(line):
            return np.array([0.9, 0.6]), np.array([1000.0, 200.0]) * (0.5 if "math" in line else 1.0)

    w = ContextWindow(size=100, calibration=400, prior=10)
    rng = np.random.default_rng(0)
    for i in range(400):
        dom = "math" if i % 4 == 0 else "trivia"
        w.add(f"k{i}", {"domain": dom, "x": 1.0}, [1.0, 0.0])
        w.outcome(f"k{i}", 1.0, (500.0 / 0.7 if dom == "math" else 1000.0) * rng.uniform(0.95, 1.05))
    before = w.response(Heads, 0.0).served()[0]
    for i in range(400, 500):  # the last 100 contexts: all math
        w.add(f"k{i}", {"domain": "math", "x": 1.0}, [1.0, 0.0])
    after = w.response(Heads, 0.0).served()[0]
    math_level = 500.0 / 0.7
    assert before == pytest.approx(0.25 * math_level + 0.75 * 1000.0, rel=0.03)
    assert after == pytest.approx(math_level, rel=0.03)  # all math now: the math level, not a blended bias


def test_untrusted_or_missing_model_falls_back_to_pi():
    cfg = ControllerConfig(interval=4, ki=0.3, max_step=1.0, feedforward=True, trust=0.25, model_warmup=8)
    c = LambdaController(Target.token_budget(500), cfg)
    feed(c, 4, 1.0, 550)
    step = c.update(0.2)  # no model given
    assert step.mode == "pi" and step.lam_after == pytest.approx(0.2 + 0.3 * 0.1)
    untrained = response([[0.5, 0.5]], [[0.0, 0.0]])  # heads that predict no tokens at all
    feed(c, 4, 1.0, 550)
    step = c.update(0.23, untrained)
    assert step.mode == "pi" and "beyond trust 0.25: PI step" in step.reason
    assert c.state().mode == "pi" and c.state().model_bias == pytest.approx(1.1)
    good = response([[0.9, 0.6]] * 4, [[1000.0, 200.0]] * 4, lam0=0.3)
    w = LambdaController(Target.token_budget(500), cfg)
    feed(w, 4, 1.0, 1000.0)
    step = w.update(0.3, good)  # a fine model, but only 4 of the 8 warm-up outcomes seen
    assert step.mode == "pi" and "model warm-up (4 of 8 outcomes): PI step" in step.reason
    feed(w, 4, 1.0, 1000.0)
    assert w.update(step.lam_after, good).mode == "feedforward"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"feedforward": 1}, "controller.feedforward must be true or false, got 1"),
        ({"bias_gain": 0.0}, r"controller.bias_gain must be in \(0, 1\], got 0.0"),
        ({"trust": 1.0}, r"controller.trust must be in \(0, 1\), got 1.0"),
        ({"contexts": 0}, "controller.contexts must be a positive integer, got 0"),
        ({"model_warmup": -1}, "controller.model_warmup must be an integer >= 0, got -1"),
    ],
)
def test_invalid_feedforward_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ControllerConfig(**kwargs)
