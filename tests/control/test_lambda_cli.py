"""`stopbandit lambda get | set | history | target` through click, on a real SQLite store."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
from click.testing import CliRunner

from stopbandit import Selector
from stopbandit.control.cli_commands import lambda_group
from stopbandit.replay import migrate
from stopbandit.replay.store import ReplayStore
from stopbandit.replay.sweep import pick_lambda
from stopbandit.sim import Simulator
from tests.control.sim_loop import serve


def invoke(*args: str, code: int = 0):
    res = CliRunner().invoke(lambda_group, list(args))
    assert res.exit_code == code, res.output + repr(res.exception)
    return res


def one_message(res) -> str:
    """The error text with rich's soft wraps (80 columns under CliRunner) undone; there is no traceback."""
    assert "Traceback" not in res.output and res.stderr.startswith("error: ")
    assert res.stdout == ""
    return " ".join(res.stderr.split())


def as_json(*args: str):
    return json.loads(invoke(*args, "--json").stdout)


@pytest.fixture
def db(sqlite_url):
    migrate.upgrade(sqlite_url)
    return sqlite_url


def test_set_get_history_json(db):
    first = as_json("set", "0.3", "--reason", "start", "--who", "alice", "--db", db)
    assert (first["value"], first["reason"], first["who"], first["previous"]) == (0.3, "start", "alice", None)
    second = as_json("set", "0.45", "--reason", "budget cut", "--db", db)
    assert second["previous"] == 0.3 and second["who"].startswith("cli")
    got = as_json("get", "--db", db)
    assert (got["value"], got["reason"], got["id"]) == (0.45, "budget cut", second["id"])
    assert abs(got["ts"] - time.time()) < 60 and got["time"].endswith("Z")
    hist = as_json("history", "--db", db, "--limit", "10")
    assert [h["value"] for h in hist] == [0.45, 0.3]
    assert [h["reason"] for h in hist] == ["budget cut", "start"]
    assert len(as_json("history", "--db", db, "--limit", "1")) == 1
    text = invoke("history", "--db", db).stdout
    assert "budget cut" in text and "alice" in text
    assert "λ = 0.45" in invoke("get", "--db", db).stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set", "abc", "--reason", "x"], "VALUE (λ) must be a finite number >= 0, got 'abc'"),
        (["set", "nan", "--reason", "x"], "VALUE (λ) must be a finite number >= 0, got 'nan'"),
        (["set", "0.2", "--reason", "  "], "--reason must not be empty"),
        (["get"], "no λ has been set in this store yet"),
        (["target", "--token-budget", "500", "--em-floor", "0.7"], "give exactly one of --token-budget B or --em-floor F"),
        (["target"], "give exactly one of --token-budget B or --em-floor F"),
        (["target", "--em-floor", "1.5"], r"--em-floor must be in (0, 1), got 1.5"),
        (["target", "--token-budget", "500"], "no snapshot 'latest' in the store"),
    ],
)
def test_user_errors_are_one_line_exit_2(db, args, message):
    res = invoke(*args, "--db", db, code=2)
    assert message in one_message(res), res.output


def test_unmigrated_store_is_a_one_line_error(tmp_path):
    sqlite3.connect(tmp_path / "empty.db").close()  # an existing database without our schema
    res = invoke("get", "--db", f"sqlite:///{tmp_path / 'empty.db'}", code=2)
    assert "schema revision none" in one_message(res) and "stopbandit db upgrade" in one_message(res)


def test_running_selector_follows_a_cli_change_within_a_second(db):
    sel = Selector.open(db, lam=0.2, seed=1)  # follow_interval 0.5 s
    invoke("set", "0.65", "--reason", "follow test", "--db", db)
    t0 = time.monotonic()
    while sel.lam != 0.65 and time.monotonic() - t0 < 1.0:
        time.sleep(0.02)
    assert sel.lam == 0.65
    assert sel.choose("What is 3 + 4?", domain="math").lam == 0.65
    sel.close()


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A replay log with probe traces from a learning Selector, and a snapshot of its heads."""
    url = f"sqlite:///{tmp_path_factory.mktemp('target') / 'replay.db'}"
    sel = Selector.open(url, lam=0.3, seed=5)
    serve(sel, Simulator(seed=9).stream(2500))
    sel.snapshot()
    sel.close()
    return url


def test_target_token_budget_and_apply(logged):
    out = as_json("target", "--token-budget", "700", "--lambdas", "0:1:0.1", "--db", logged)
    assert out["target"] == {"kind": "token_budget", "value": 700.0, "conservative": False}
    assert out["estimator"] == "GraphDR" and out["mode"] == "explore" and out["events"] == 2500
    assert [p["lam"] for p in out["points"]] == pytest.approx([i / 10 for i in range(11)])
    p = out["picked"]
    assert p["tokens"]["value"] <= 700 and p["tokens"]["ci_low"] <= p["tokens"]["value"] <= p["tokens"]["ci_high"]
    assert p["em"]["ci_low"] <= p["em"]["value"] <= p["em"]["ci_high"]
    # the pick is pick_lambda's: the largest EM among the points within budget
    ok = [q for q in out["points"] if q["tokens"]["value"] <= 700]
    assert p["em"]["value"] == max(q["em"]["value"] for q in ok)
    assert out["applied"] is None
    applied = as_json("target", "--token-budget", "700", "--lambdas", "0:1:0.1", "--apply", "--reason", "Q3 budget",
                      "--db", logged)
    change = applied["applied"]
    assert change["value"] == p["lam"]
    assert change["reason"].startswith("lambda target token_budget=700: predicted tokens ")
    assert change["reason"].endswith("; Q3 budget") and "GraphDR" in change["reason"]
    store = ReplayStore(logged)
    assert store.current_lambda().value == p["lam"]
    store.dispose()


def test_target_em_floor_conservative_and_table(logged):
    out = as_json("target", "--em-floor", "0.6", "--lambdas", "0:1.5:0.25", "--conservative", "--db", logged)
    p = out["picked"]
    assert p["em"]["ci_low"] >= 0.6
    lower = [q for q in out["points"] if q["em"]["ci_low"] >= 0.6]
    assert p["tokens"]["value"] == min(q["tokens"]["value"] for q in lower)
    text = invoke("target", "--em-floor", "0.6", "--lambdas", "0:1.5:0.25", "--db", logged).stdout
    assert "em_floor=0.6: λ = " in text and "not applied" in text and "◀" in text


def test_target_that_no_lambda_meets(logged):
    res = invoke("target", "--token-budget", "50", "--lambdas", "0:1:0.5", "--db", logged, code=2)
    assert "no λ in 0:1:0.5 meets token_budget=50 (fewest predicted tokens" in one_message(res)


def test_pick_lambda_agrees_with_the_cli(logged):
    from stopbandit.control.cli_commands import target_lambda

    store = ReplayStore(logged)
    out = target_lambda(store, em_floor=0.65, lambdas="0:1:0.2", explore=False)
    store.dispose()
    assert out["mode"] == "greedy"

    class P:  # the JSON points back as objects pick_lambda understands
        def __init__(self, d):
            self.lam = d["lam"]
            self.em = type("E", (), {"value": d["em"]["value"], "ci_low": d["em"]["ci_low"]})
            self.tokens = type("T", (), {"value": d["tokens"]["value"], "ci_high": d["tokens"]["ci_high"]})

    want = pick_lambda([P(d) for d in out["points"]], em_floor=0.65)
    assert (out["picked"] or {}).get("lam") == want
