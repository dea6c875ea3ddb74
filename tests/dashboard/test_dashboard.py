"""The dashboard's numbers against what the simulator sent, over HTTP on a real socket (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import functools

import httpx
import pytest

from stopbandit import Selector
from stopbandit.replay.store import ReplayStore
from stopbandit.serve import GatewayConfig, GatewayServer, create_app
from stopbandit.serve.dashboard import collect, create_dashboard_app, render
from tests.dashboard.conftest import fill

# the page renders charts server-side: on a loaded 2-core machine that takes seconds (what these tests check
# is access and content, not speed)
class HTTP:
    get = staticmethod(functools.partial(httpx.get, timeout=60))
    post = staticmethod(functools.partial(httpx.post, timeout=60))


def test_activity_sums_match_what_was_served(filled):
    store = ReplayStore(filled.url)
    try:
        t0, width, rows = store.activity(buckets=10)
        assert rows and width > 0
        assert {r[0] for r in rows} <= set(range(10))
        assert sum(r[4] for r in rows) == filled.decisions
        assert sum(r[5] for r in rows) == filled.rewarded
        assert sum(r[6] for r in rows) == pytest.approx(filled.em)
        assert sum(r[7] for r in rows) == pytest.approx(filled.tokens)
        assert sum(r[8] for r in rows) == pytest.approx(filled.reward)  # each decision's own λ
        assert {r[1] for r in rows} == filled.domains
        assert store.activity(buckets=10, since=1e12) == (pytest.approx(float("nan"), nan_ok=True),
                                                          pytest.approx(float("nan"), nan_ok=True), [])
        with pytest.raises(ValueError, match="buckets"):
            store.activity(buckets=0)
    finally:
        store.dispose()


def test_collect_reports_totals_arms_and_lambda(filled):
    store = ReplayStore(filled.url)
    try:
        data = collect(store)
    finally:
        store.dispose()
    tot = data["totals"]
    assert (tot["decisions"], tot["rewarded"]) == (filled.decisions, filled.rewarded)
    assert tot["mean_em"] == pytest.approx(filled.em / filled.rewarded)
    assert tot["mean_reward"] == pytest.approx(filled.reward / filled.rewarded)
    assert data["lambda"]["current"] == pytest.approx(filled.lam)
    assert data["lambda"]["history"][0]["reason"] == filled.reason
    means = {arm: acc[2] / acc[0] for arm, acc in filled.per_arm.items()}
    assert data["best_static_arm"] == max(means, key=means.get)
    for arm, (k, em, _) in filled.per_arm.items():
        assert data["arms"][arm]["rewarded"] == k
        assert data["arms"][arm]["mean_em"] == pytest.approx(em / k)
    assert set(data["mix"]) == filled.domains
    assert sum(sum(c) for arms in data["mix"].values() for c in arms.values()) == filled.decisions
    assert sum(data["over_time"]["decisions"]) == filled.decisions
    assert data["writer"] is None and data["sweep_plot"] is False
    page = render(data)
    assert page.count("<svg") >= 3 + len(filled.domains) and filled.reason in page


def test_dashboard_server_and_its_key(filled, tmp_path):
    plot = tmp_path / "pareto.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    store = ReplayStore(filled.url)
    try:
        with GatewayServer(create_dashboard_app(store, key="s3cret", sweep_plot=plot)) as srv:
            assert HTTP.get(srv.url + "/dashboard").status_code == 401
            assert HTTP.get(srv.url + "/dashboard").headers["www-authenticate"].startswith("Basic")
            assert HTTP.get(srv.url + "/dashboard", headers={"Authorization": "Bearer wrong"}).status_code == 401
            ok = HTTP.get(srv.url + "/dashboard/data.json", headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200 and ok.json()["totals"]["decisions"] == filled.decisions
            assert ok.json()["sweep_plot"] is True
            basic = "Basic " + base64.b64encode(b"operator:s3cret").decode()
            page = HTTP.get(srv.url + "/dashboard", headers={"Authorization": basic})
            assert page.status_code == 200 and "dashboard/sweep.png" in page.text
            png = HTTP.get(srv.url + "/dashboard/sweep.png", headers={"Authorization": basic})
            assert png.status_code == 200 and png.content == plot.read_bytes()
            assert HTTP.post(srv.url + "/dashboard", headers={"Authorization": basic}).status_code == 405
    finally:
        store.dispose()


def test_the_gateway_serves_the_dashboard_with_its_writer_health(filled):
    sel = Selector.open(filled.url, follow=False)
    try:
        app = create_app(sel, GatewayConfig(upstream="http://127.0.0.1:9", api_key="k"))
        with GatewayServer(app) as gw:
            assert HTTP.get(gw.url + "/dashboard").status_code == 401
            data = HTTP.get(gw.url + "/dashboard/data.json", headers={"Authorization": "Bearer k"}).json()
            assert data["totals"]["decisions"] == filled.decisions
            assert data["writer"]["store_ok"] is True and data["writer"]["rejected"] == 0
            page = HTTP.get(gw.url + "/dashboard", headers={"Authorization": "Bearer k"}).text
            assert 'id="writer"' in page and "spill_backlog" in page
    finally:
        sel.close()


def test_an_unreachable_store_is_a_503_page_not_a_traceback(sqlite_url, tmp_path):
    fill(sqlite_url, requests=50)
    store = ReplayStore(sqlite_url)
    (tmp_path / "replay.db").unlink()  # the store's file vanishes under the running dashboard
    store.dispose()
    try:
        with GatewayServer(create_dashboard_app(store)) as srv:
            page = httpx.get(srv.url + "/dashboard", timeout=30)
            assert page.status_code == 503 and "unreachable" in page.text
            data = httpx.get(srv.url + "/dashboard/data.json", timeout=30)
            assert data.status_code == 503 and data.json()["error"]["type"] == "store_error"
    finally:
        store.dispose()
