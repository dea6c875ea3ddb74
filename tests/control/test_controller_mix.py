"""The λ controller's domain-mix feed-forward: a mix change moves λ at once, bounded; a steady mix changes nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stopbandit.control.controller import DEFAULT_MIX_GAIN, ControllerConfig, LambdaController, Target
from stopbandit.control.mix import MixTracker
from stopbandit.errors import ConfigError

# two domains: "a" cheap and easy, "b" long and hard
TOKENS = {"a": 400.0, "b": 600.0}
EM = {"a": 0.8, "b": 0.5}


def feed(c: LambdaController, domains: list[str], tokens: dict[str, float] = TOKENS,
         em: dict[str, float] = EM) -> None:
    for d in domains:
        c.observe(em[d], tokens[d], d)


def half(n: int) -> list[str]:
    return ["a", "b"] * (n // 2)


def pair(gate: float = 0.0, **kw) -> tuple[LambdaController, LambdaController]:
    """(plain PI, PI + mix feed-forward) for a budget of 500 with the same settings (``gate`` 0: ungated)."""
    base = {"interval": 10, "ki": 0.3, "max_step": 1.0, "min_step": 0.0, **kw}
    return (LambdaController(Target.token_budget(500), ControllerConfig(mix_feedforward=False, **base)),
            LambdaController(Target.token_budget(500), ControllerConfig(mix_feedforward=True, mix_recent=10,
                                                                         mix_min_n=1, mix_gate=gate, **base)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mix_feedforward": 1}, "controller.mix_feedforward must be true or false, got 1"),
        ({"mix_recent": 0}, "controller.mix_recent must be a positive integer, got 0"),
        ({"mix_min_n": 2.5}, "controller.mix_min_n must be a positive integer, got 2.5"),
        ({"mix_gain": -1.0}, "controller.mix_gain must be >= 0, got -1.0"),
        ({"mix_gain": math.nan}, "controller.mix_gain must be a finite number, got nan"),
        ({"mix_gate": -1}, "controller.mix_gate must be >= 0, got -1"),
        ({"mix_hold": 0}, "controller.mix_hold must be a positive integer, got 0"),
    ],
)
def test_invalid_mix_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ControllerConfig(**kwargs)


def test_on_by_default_and_off_under_the_model_feedforward():
    assert ControllerConfig().mix_feedforward is True
    c = LambdaController(Target.token_budget(500), ControllerConfig(feedforward=True, interval=10))
    feed(c, half(10))
    assert c.update(0.3).mix_term == 0.0 and c.state().mix_shares is None


def test_a_mix_change_moves_lambda_in_the_same_step():
    plain, mixed = pair()
    for c in (plain, mixed):
        for _ in range(2):  # 50/50 mix: batch mean 500 = budget, no move
            feed(c, half(10))
            assert c.update(0.3).lam_after == pytest.approx(0.3)
        feed(c, ["b"] * 10)  # the mix turns to all "b": +20 % tokens
    p, m = plain.update(0.3), mixed.update(0.3)
    assert p.error == m.error == pytest.approx(0.2)
    assert p.lam_after == pytest.approx(0.3 + 0.3 * 0.2)  # the PI step closes a third of it
    # the mix moved the recent mean by 0.5·(600 − 400) = +100 tokens = +20 % of the budget
    assert m.mix_term == pytest.approx(DEFAULT_MIX_GAIN["token_budget"] * 0.2)
    assert m.lam_after == pytest.approx(p.lam_after + m.mix_term)
    assert "mix change +0.2000" in m.reason


def test_a_harder_mix_lowers_lambda_at_once_for_an_em_floor():
    cfg = {"interval": 10, "ki": 0.5, "max_step": 1.0, "min_step": 0.0}
    c = LambdaController(Target.em_floor(0.65, margin=0.0),
                         ControllerConfig(mix_feedforward=True, mix_recent=10, mix_min_n=1, mix_gate=0, **cfg))
    feed(c, half(10))  # EM 0.65: on the floor
    assert c.update(1.0).lam_after == pytest.approx(1.0)
    feed(c, ["b"] * 10)  # EM 0.5
    step = c.update(1.0)
    e_mix = -0.5 * (EM["b"] - EM["a"]) / 0.65  # the mix alone loses 0.15 of EM: +23 % error
    assert step.mix_term == pytest.approx(-DEFAULT_MIX_GAIN["em_floor"] * e_mix)
    assert step.mix_term < 0 and step.i_term < 0
    assert step.lam_after == pytest.approx(1.0 + step.i_term + step.mix_term)
    assert 0 < step.lam_after < 1.0 + step.i_term


def test_the_step_stays_bounded_and_the_cut_off_part_is_carried_in_full():
    _, c = pair(max_step=0.05, ki=0.0)  # feed-forward only, to follow it exactly
    feed(c, half(10))
    c.update(0.3)
    feed(c, ["b"] * 10)
    step = c.update(0.3)
    want = DEFAULT_MIX_GAIN["token_budget"] * 0.2  # 0.18
    assert step.mix_term == pytest.approx(want)
    assert step.lam_after == pytest.approx(0.35) and "bounded" in step.reason
    assert step.mix_pending == pytest.approx(want - 0.05)
    lam, moves = step.lam_after, [step.lam_after - 0.3]
    for _ in range(6):  # the same mix from now on: no new mix change, the carried part is paid out
        feed(c, ["b"] * 10)
        s = c.update(lam)
        assert s.mix_term == 0.0 and abs(s.lam_after - lam) <= 0.05 + 1e-12
        moves.append(s.lam_after - lam)
        lam = s.lam_after
    assert sum(moves) == pytest.approx(want)  # in full, never more
    assert moves[-1] == 0.0 and c.state().mix_pending == pytest.approx(0.0)


def test_the_carried_part_is_dropped_at_a_clamp():
    _, c = pair(max_step=0.05, ki=0.0, lam_max=0.32)
    feed(c, half(10))
    c.update(0.3)
    feed(c, ["b"] * 10)
    step = c.update(0.3)
    assert step.lam_after == pytest.approx(0.32) and step.clamped == "lam_max"
    assert step.mix_pending == 0.0  # no wind-up against the clamp
    feed(c, ["b"] * 10)
    assert c.update(0.32).lam_after == pytest.approx(0.32)


def test_a_steady_mix_gives_exactly_the_plain_controller():
    """Round-robin domains keep the recent mix constant: the feed-forward adds nothing, step for step."""
    rng = np.random.default_rng(1)
    plain, mixed = pair(max_step=0.05)
    lam_p = lam_m = 0.3
    for _ in range(40):
        tokens = rng.gamma(1.3, 500 / 1.3, size=10)
        ems = (rng.random(10) < 0.6).astype(float)
        for k, (e, t) in enumerate(zip(ems, tokens)):
            plain.observe(e, t)
            mixed.observe(e, t, "ab"[k % 2])
        p, m = plain.update(lam_p), mixed.update(lam_m)
        assert m.mix_term == 0.0
        assert m.lam_after == p.lam_after
        lam_p, lam_m = p.lam_after, m.lam_after


def closed_loop(kind: str, mix_on: bool, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """A plant with the simulator's sensitivities; the mix turns harder at request 15,000 of 30,000.

    Per request of domain d: tokens ~ Gamma(1.3, base_d·exp(−1.1λ)), EM ~
    Bernoulli(em_d − 0.25λ) (tokens −1.1 %, EM about −0.4 % per 0.01 of λ, as
    :data:`DEFAULT_KI` quotes). Returns per-request outcomes (tokens or EM),
    λ after each step, and the setpoint.
    """
    base, em0 = {"a": 700.0, "b": 1300.0}, {"a": 0.85, "b": 0.70}
    target = Target.token_budget(600) if kind == "token_budget" else Target.em_floor(0.66, margin=0.0)
    rng = np.random.default_rng(seed)
    c = LambdaController(target, ControllerConfig(mix_feedforward=mix_on))
    lam, x, lams = 0.3, [], []
    for t in range(300):  # 100 outcomes per step
        doms = np.where(rng.random(100) < (0.3 if t < 150 else 0.55), "b", "a")
        for d in doms:
            tok = rng.gamma(1.3, base[d] * math.exp(-1.1 * lam) / 1.3)
            e = float(rng.random() < em0[d] - 0.25 * lam)
            c.observe(e, tok, str(d))
            x.append(tok if kind == "token_budget" else e)
        lam = c.update(lam).lam_after
        lams.append(lam)
    return np.array(x), np.array(lams), target.setpoint


def window_bias(x: np.ndarray, sp: float, end_from: int, end_to: int) -> float:
    """Mean of (mean/sp − 1) over the 2,000-windows ending at requests [end_from, end_to): the transient's bias."""
    win = np.convolve(x, np.ones(2000) / 2000, mode="valid")  # win[j] ends at request j + 1999
    return float((win[end_from - 1999:end_to - 1999] / sp - 1.0).mean())


@pytest.mark.parametrize("kind", ["token_budget", "em_floor"])
def test_closed_loop_through_a_mix_shift(kind):
    """Through the shift the feed-forward takes most of the transient out of the 2,000-windows (budget: their
    bias shrinks; floor: less EM lost), with the step bounded; on the steady mix before it, it is the same."""
    for seed in (0, 1, 2):
        x_p, _, sp = closed_loop(kind, False, seed)
        x_m, lams, _ = closed_loop(kind, True, seed)
        shift_p, shift_m = window_bias(x_p, sp, 15_000, 18_000), window_bias(x_m, sp, 15_000, 18_000)
        if kind == "token_budget":
            assert shift_p > 0.015 and abs(shift_m) < 0.5 * shift_p, (seed, shift_m, shift_p)
        else:
            assert shift_p < -0.004 and shift_m > shift_p + 0.004, (seed, shift_m, shift_p)
        steady_p, steady_m = window_bias(x_p, sp, 7_000, 15_000), window_bias(x_m, sp, 7_000, 15_000)
        assert abs(steady_m - steady_p) < 0.002, (seed, steady_m, steady_p)
        assert np.all(np.abs(np.diff(lams)) <= 0.05 + 1e-12)


def test_tracker_ignores_a_domain_with_too_few_outcomes():
    t = MixTracker(window=100, recent=10, min_n=5)
    for d in "ab" * 5:
        t.add(d, 1.0, 100.0 if d == "a" else 300.0)
    assert t.step() == (0.0, 0.0)
    for _ in range(3):  # a new domain with 3 outcomes (< min_n): its mean is the overall one
        t.add("c", 0.0, 5000.0)
    em, tok = t.means()
    assert tok["c"] == pytest.approx((5 * 100 + 5 * 300 + 3 * 5000) / 13)
    d_em, d_tok = t.step()
    shares = t.shares()
    assert shares == pytest.approx({"a": 0.3, "b": 0.4, "c": 0.3})
    # Δw: a −0.2, b −0.1 at their own means, c +0.3 at the overall mean
    assert d_tok == pytest.approx(-0.2 * 100 - 0.1 * 300 + 0.3 * tok["c"])


def test_reset_and_retarget_forget_the_mix_step():
    _, c = pair(max_step=0.05)
    feed(c, half(10))
    c.update(0.3)
    feed(c, ["b"] * 10)
    assert c.update(0.3).mix_pending > 0
    c.retarget(Target.token_budget(550))
    assert c.state().mix_pending == 0.0
    feed(c, ["a"] * 10)  # first step after retarget records the mix only
    assert c.update(0.35).mix_term == 0.0
    c.reset()
    assert c.state().mix_shares == {}


def test_the_serving_wrapper_passes_each_requests_domain(sqlite_url):
    """Real Selector + simulator: the controller sees the requests' domains and logs the mix term with each move."""
    from stopbandit import Selector
    from stopbandit.control import ControlledSelector
    from stopbandit.sim import Simulator
    from tests.control.sim_loop import serve

    sel = Selector.open(sqlite_url, lam=0.2, seed=5)
    ctl = LambdaController(Target.token_budget(650), ControllerConfig(interval=50, mix_feedforward=True))
    cs = ControlledSelector(sel, controller=ctl, seed=5)
    served = serve(cs, Simulator(seed=6).stream(400))
    shares = cs.health().controller.mix_shares
    want = {d: sum(s.domain == d for s in served) / len(served) for d in {s.domain for s in served}}
    assert shares == pytest.approx(want)  # the last 500 (here: all 400) outcomes, by their requests' domains
    assert sel.flush()  # λ changes are stored off the request path: wait until they are
    moves = [c for c in sel.store.lambda_history(1000) if c.who == "controller"]
    assert moves and all("mix " in c.reason for c in moves)
    cs.close()


def test_the_gate_stays_shut_on_a_small_mix_change_and_applies_a_shift_whole():
    _, c = pair(gate=3.0)
    feed(c, half(10))
    assert "mix reference set" in c.update(0.3).reason  # the first step sets the reference
    feed(c, ["a", "b", "b", "a", "b", "a", "b", "a", "a", "b"])  # the same 50/50 mix
    s = c.update(0.3)
    assert s.mix_term == 0.0 and "within 3 sd" in s.reason
    feed(c, ["b"] * 10)  # all "b": +100 tokens; sd of the difference sqrt(2·100²/10) = 44.7 → 2.24 sd: shut
    s = c.update(0.3)
    assert s.mix_term == 0.0 and s.lam_after == pytest.approx(0.3 + 0.3 * 0.2)
    _, c = pair(gate=2.0)
    feed(c, half(10))
    c.update(0.3)
    feed(c, ["b"] * 10)  # 2.24 sd > 2: open, the whole shift at once
    s = c.update(0.3)
    assert "mix shift detected" in s.reason
    assert s.mix_term == pytest.approx(DEFAULT_MIX_GAIN["token_budget"] * 0.2)


def test_the_gate_closes_after_the_hold_and_keeps_the_lambda_it_moved():
    _, c = pair(gate=2.0, mix_hold=30, max_step=1.0)
    feed(c, half(10))
    c.update(0.3)
    feed(c, ["b"] * 10)
    lam = c.update(0.3).lam_after
    reasons = []
    for _ in range(4):
        feed(c, ["b"] * 10, tokens={"a": 400.0, "b": 500.0})  # back on budget: no PI move either
        s = c.update(lam)
        reasons.append(s.reason)
        assert s.lam_after == pytest.approx(lam)  # the feed-forward's λ stays
    assert sum("mix reference re-set" in r for r in reasons) == 1


def test_with_the_gate_a_steady_random_mix_gives_exactly_the_plain_controller():
    """i.i.d. domains (a 30/70 mix), 30,000 requests: the gate never opens, so λ follows PI to the last digit."""
    rng = np.random.default_rng(7)
    target = Target.token_budget(600)
    plain = LambdaController(target, ControllerConfig(mix_feedforward=False))
    gated = LambdaController(target, ControllerConfig())  # the default: gated mix feed-forward
    lam_p = lam_g = 0.3
    for _ in range(300):
        doms = np.where(rng.random(100) < 0.3, "b", "a")
        for d in doms:
            t = rng.gamma(1.3, (1300.0 if d == "b" else 700.0) * math.exp(-1.1 * lam_p) / 1.3)
            e = float(rng.random() < 0.7)
            plain.observe(e, t)
            gated.observe(e, t, str(d))
        p, g = plain.update(lam_p), gated.update(lam_g)
        assert g.mix_term == 0.0 and "shift detected" not in g.reason
        assert g.lam_after == p.lam_after
        lam_p, lam_g = p.lam_after, g.lam_after
