"""Prometheus metrics: scraped over a real local HTTP port; one registry per wrapper."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stopbandit import Selector
from stopbandit.control import ControlledSelector, ControllerConfig, GuardrailConfig, LambdaController, Target
from stopbandit.sim import Simulator
from tests.control.sim_loop import serve


def scrape(url: str) -> dict[str, list]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode("utf-8")
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(samples: list, name: str, **labels: str) -> float:
    got = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert got, f"no sample {name} {labels}"
    return sum(got)


def test_scrape_over_http(sqlite_url):
    sel = Selector.open(sqlite_url, lam=0.2, seed=1)
    ctl = LambdaController(Target.token_budget(600), ControllerConfig(interval=50))
    cs = ControlledSelector(sel, controller=ctl, guardrail=GuardrailConfig(holdout_share=0.2, min_n=20, window=50),
                            seed=1, owns_selector=True)
    served = serve(cs, Simulator(seed=2).stream(400))
    server = cs.serve_metrics(port=0)
    assert server.port > 0 and server.url.startswith("http://127.0.0.1:")
    m = scrape(server.url)

    dec = m["stopbandit_decisions"]
    assert value(dec, "stopbandit_decisions_total") == 400
    assert value(dec, "stopbandit_decisions_total", experiment="holdout", route="holdout", arm="full") \
        == cs.health().routes["holdout"]
    by_arm = {a: sum(1 for s in served if s.arm == a) for a in sel.arms.names}
    for arm, n in by_arm.items():
        if n:
            assert value(dec, "stopbandit_decisions_total", arm=arm) == n
    math_em = [s.em for s in served if s.domain == "math"]
    assert value(m["stopbandit_outcome_em"], "stopbandit_outcome_em_count", domain="math") == len(math_em)
    assert value(m["stopbandit_outcome_em"], "stopbandit_outcome_em_sum", domain="math") == pytest.approx(sum(math_em))
    assert value(m["stopbandit_outcome_tokens"], "stopbandit_outcome_tokens_sum") == sum(s.tokens for s in served)
    assert value(m["stopbandit_lambda"], "stopbandit_lambda") == pytest.approx(cs.lam)
    st = cs.health().controller
    assert value(m["stopbandit_controller_target"], "stopbandit_controller_target", kind="token_budget") == 600
    assert value(m["stopbandit_controller_window_tokens"], "stopbandit_controller_window_tokens") == pytest.approx(
        st.window_tokens)
    assert value(m["stopbandit_controller_moves"], "stopbandit_controller_moves_total") == st.moves
    assert "stopbandit_controller_error" in m and "stopbandit_controller_saturated" in m
    assert value(m["stopbandit_controller_mix_pending"], "stopbandit_controller_mix_pending") == pytest.approx(
        st.mix_pending)
    shares = {s.labels["domain"]: s.value for s in m["stopbandit_controller_mix_share"]}
    assert shares == pytest.approx({str(d): v for d, v in (st.mix_shares or {}).items()})
    assert shares and sum(shares.values()) == pytest.approx(1.0)  # the mix feed-forward is on by default
    for name in ("stopbandit_store_ok", "stopbandit_store_write_lag_seconds", "stopbandit_store_queue_depth",
                 "stopbandit_store_spill_backlog", "stopbandit_store_unspilled"):
        assert len(m[name]) == 1
    assert value(m["stopbandit_store_ok"], "stopbandit_store_ok") == 1.0
    assert value(m["stopbandit_store_unspilled"], "stopbandit_store_unspilled") == 0.0
    for name in ("stopbandit_store_dropped", "stopbandit_store_spilled", "stopbandit_store_rejected",
                 "stopbandit_store_conflicts", "stopbandit_store_replay_errors", "stopbandit_store_overloads"):
        assert value(m[name], f"{name}_total") == 0.0
    fb = m["stopbandit_guardrail_fallback"]
    assert {s.labels["domain"] for s in fb} == {"math", "science", "code", "trivia"}
    assert all(s.value in (0.0, 1.0) for s in fb)
    assert "stopbandit_guardrail_relative_loss" in m
    assert value(m["stopbandit_route_share"], "stopbandit_route_share", route="holdout") == 0.2
    cs.close()  # stops the server too
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=2)


def test_each_wrapper_has_its_own_registry(tmp_path):
    a = ControlledSelector.open(f"sqlite:///{tmp_path / 'a.db'}", seed=1)
    b = ControlledSelector.open(f"sqlite:///{tmp_path / 'b.db'}", seed=2)
    serve(a, Simulator(seed=1).stream(30), traces=False)
    serve(b, Simulator(seed=2).stream(5), traces=False)
    ta = {f.name: f for f in text_string_to_metric_families(a.metrics.render().decode())}
    tb = {f.name: f for f in text_string_to_metric_families(b.metrics.render().decode())}
    assert value(ta["stopbandit_decisions"].samples, "stopbandit_decisions_total") == 30
    assert value(tb["stopbandit_decisions"].samples, "stopbandit_decisions_total") == 5
    assert "stopbandit_controller_target" not in ta and "stopbandit_guardrail_fallback" not in ta
    a.close()
    b.close()
