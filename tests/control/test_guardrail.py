"""Guardrail: the stated test, the ok ⇄ fallback state machine with hysteresis, and sim.degrade end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sqlalchemy import select

from stopbandit import Selector
from stopbandit.control import ControlledSelector, Guardrail, GuardrailConfig, ratio_test
from stopbandit.errors import ConfigError
from stopbandit.replay.store import DECISIONS, ReplayStore
from stopbandit.sim import Simulator
from tests.control.sim_loop import serve


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"holdout_share": 1.0}, r"guardrail.holdout_share must be in \[0, 1\), got 1.0"),
        ({"holdout_share": -0.1}, r"holdout_share must be in \[0, 1\), got -0.1"),
        ({"margin": 0.0}, r"guardrail.margin must be in \(0, 1\), got 0.0"),
        ({"margin": 0.1, "release_margin": 0.1}, "release_margin must be below margin=0.1 \\(hysteresis\\), got 0.1"),
        ({"alpha": 0.0}, r"guardrail.alpha must be in \(0, 1\)"),
        ({"window": 0}, "guardrail.window must be a positive integer, got 0"),
        ({"min_n": 500, "window": 100}, r"guardrail.min_n must be in \[2, window=100\], got 500"),
        ({"probe_share": 2}, r"guardrail.probe_share must be in \[0, 1\], got 2"),
        ({"paired": "yes"}, "guardrail.paired must be true or false"),
        ({"enforce": 1}, "guardrail.enforce must be true or false, got 1"),
    ],
)
def test_invalid_config_names_field_and_value(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GuardrailConfig(**kwargs)


def test_ratio_test_paired_unpaired_insufficient():
    rng = np.random.default_rng(0)
    c = (rng.random(400) < 0.8).astype(float)
    worse = c * (rng.random(400) < 0.7)  # the policy keeps ~70% of the control's hits on the same requests
    pairs = list(zip(c, worse))
    chk = ratio_test([], [], pairs, margin=0.1, min_n=100)
    assert chk.method == "paired" and chk.n_pairs == 400
    assert chk.relative_loss == pytest.approx(1 - worse.mean() / c.mean())
    assert chk.z > 3  # 30% loss vs a 10% margin: clearly worse
    good = ratio_test([], [], list(zip(c, c)), margin=0.1, min_n=100)
    assert good.z < -3 and good.relative_loss == 0.0
    unpaired = ratio_test(list(c), list(worse), [], margin=0.1, min_n=100)
    assert unpaired.method == "unpaired" and unpaired.z > 2
    assert unpaired.z < chk.z  # pairing removes the between-request variance
    few = ratio_test(list(c[:10]), list(worse[:10]), pairs[:10], margin=0.1, min_n=100)
    assert few.method == "insufficient" and few.z is None


def test_ratio_test_statistic_by_hand():
    control, policy = [1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]
    chk = ratio_test(control, policy, [], margin=0.2, min_n=4)
    k = 0.8
    cm, pm = 0.75, 0.25
    se = math.sqrt(k * k * np.var(control, ddof=1) / 4 + np.var(policy, ddof=1) / 4)
    assert chk.z == pytest.approx((k * cm - pm) / se)


def _stream(g: Guardrail, domain: str, n: int, control_em: float, policy_em: float, rng) -> list:
    """Holdout-style evidence: every request a pair (control EM, policy EM on the same request)."""
    out = []
    for _ in range(n):
        c = float(rng.random() < control_em)
        p = c * float(rng.random() < policy_em / control_em)
        t = g.observe_control(domain, c, p)
        if t is not None:
            out.append(t)
    return out


def test_engages_per_domain_and_releases_with_hysteresis():
    g = Guardrail(GuardrailConfig(margin=0.10, window=1000, min_n=300, check_every=50))
    rng = np.random.default_rng(1)
    assert _stream(g, "trivia", 2000, 0.9, 0.89, rng) == []  # 1% loss: fine
    t = _stream(g, "math", 2000, 0.7, 0.5, rng)  # 29% loss: engage
    assert [x.to for x in t] == ["fallback"] and t[0].domain == "math"
    assert g.in_fallback("math") and not g.in_fallback("trivia") and g.fallback_domains == {"math"}
    assert t[0].check.method == "paired" and t[0].check.z > g.config.z_engage
    # inside the hysteresis band (7.5% loss: better than the 10% margin, worse than the 5% release margin): stays
    assert _stream(g, "math", 3000, 0.7, 0.7 * 0.925, rng) == []
    assert g.in_fallback("math")
    t = _stream(g, "math", 2000, 0.7, 0.7, rng)  # recovered
    assert [x.to for x in t] == ["ok"] and not g.any_fallback
    st = g.status()
    assert (st["math"].engagements, st["math"].releases, st["trivia"].engagements) == (1, 1, 0)
    assert "released for domain 'math'" in t[0].describe()


def test_a_domain_without_volume_is_not_tested():
    g = Guardrail(GuardrailConfig(window=300, min_n=200, check_every=10))
    rng = np.random.default_rng(2)
    assert _stream(g, "rare", 150, 0.8, 0.1, rng) == []
    assert g.status()["rare"].last_check.method == "insufficient"
    assert g.in_fallback(None) is False  # a missing domain is the "unknown" domain


def test_degraded_domain_engages_alone_and_releases_after_recovery(tmp_path):
    """sim.degrade on math mid-stream: only math falls back to the full arm, and it is released afterwards.

    Two simulators with one seed produce the same requests; the degraded one
    is used for requests [2500, 6500). At λ = 0.1 the policy loses a few % of
    EM against full reasoning; on the degraded domain the arms' EM gaps shrink,
    the policy moves to cheaper arms and its relative loss grows to ~20 %. A
    large holdout (30 %) keeps the test short; the benchmark uses 2 %.
    """
    url = f"sqlite:///{tmp_path / 'replay.db'}"
    sel = Selector.open(url, lam=0.1, seed=1)
    cfg = GuardrailConfig(holdout_share=0.3, margin=0.10, alpha=0.05, window=300, min_n=150, check_every=25)
    cs = ControlledSelector(sel, guardrail=cfg, seed=2, owns_selector=True)
    start, end, n = 2500, 6500, 9500
    clean, bad = Simulator(seed=3), Simulator(seed=3)
    bad.degrade("math", from_request=start, em_factor=0.15)
    reqs = [b if start <= c.index < end else c for c, b in zip(clean.stream(n), bad.stream(n))]
    events: list[tuple[int, str, str]] = []
    seen = [0]
    routes = []

    def after(s):
        routes.append((s.index, s.domain, cs.route_of(s.decision_id), s.arm, s.probability))
        tr = cs.guardrail.transitions()
        for t in tr[seen[0]:]:
            events.append((s.index, t.domain, t.to))
        seen[0] = len(tr)

    serve(cs, reqs, after=after)
    assert {d for _, d, _ in events} == {"math"}, events
    (t_on, _, to_on), (t_off, _, to_off) = events
    assert (to_on, to_off) == ("fallback", "ok")
    assert start < t_on < end <= t_off < n
    # while engaged, math is served the full arm (propensity 1) but for the probe share; other domains are not
    engaged = [r for r in routes if t_on < r[0] < t_off]
    math_fb = [r for r in engaged if r[1] == "math" and r[2] == "fallback"]
    math_pol = [r for r in engaged if r[1] == "math" and r[2] == "policy"]
    assert math_fb and all(r[3] == "full" and r[4] == 1.0 for r in math_fb)
    assert len(math_pol) <= 0.15 * (len(math_pol) + len(math_fb))
    assert not [r for r in engaged if r[1] != "math" and r[2] == "fallback"]
    h = cs.health()
    assert h.fallback == () and h.guardrail["math"].engagements == 1 and h.routes["fallback"] == len(
        [r for r in routes if r[2] == "fallback"])
    cs.flush()
    store = ReplayStore(url)
    with store.engine.connect() as conn:
        got = conn.execute(select(DECISIONS.c.experiment, DECISIONS.c.arm, DECISIONS.c.propensity,
                                  DECISIONS.c.policy_version, DECISIONS.c.probabilities)).all()
    holdout = [r for r in got if r.experiment == "holdout"]
    forced = [r for r in got if r.policy_version.startswith("guardrail/")]
    assert len(holdout) == h.routes["holdout"] and len(forced) == h.routes["fallback"]
    for r in holdout + forced:
        assert r.arm == "full" and r.propensity == 1.0 and r.probabilities["full"] == 1.0
        assert sum(r.probabilities.values()) == 1.0
    assert all(r.experiment == "champion" for r in forced)
    store.dispose()
    cs.close()
