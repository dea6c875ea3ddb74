"""End-to-end CLI tests: `db` verbs, the demo, and migrations shipped inside a built wheel."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from stopbandit.cli import main
from stopbandit.replay.store import ReplayStore

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_db_upgrade_current_downgrade(db_url):
    r = invoke("db", "current", "--db", db_url, "--json")
    assert json.loads(r.output)["current"] is None
    assert invoke("db", "upgrade", "--db", db_url).exit_code == 0
    info = json.loads(invoke("db", "current", "--db", db_url, "--json").output)
    assert info["up_to_date"] and info["current"] == info["head"]
    assert invoke("db", "downgrade", "--db", db_url, "--revision", "base", "--yes").exit_code == 0
    assert json.loads(invoke("db", "current", "--db", db_url, "--json").output)["current"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["db", "current", "--db", "garbage"], "is not a valid SQLAlchemy URL"),
        (["db", "upgrade", "--db", "postgresql+psycopg://x@127.0.0.1:1/x"], "cannot reach database"),
        (["db", "upgrade", "--db", "nosuch://a/b"], "no database driver"),
        (["db", "current", "--db", "sqlite://serve.db"], "is not a valid SQLite URL: use 'sqlite:///relative/path.db'"),
        (["db", "current", "--db", "postgres://u:s3cret@127.0.0.1:1/db"], "use the scheme 'postgresql+psycopg://'"),
        (["db", "current", "--db", "postgresql+psycopg://u:s3cret@host:notaport/db"],
         "'postgresql+psycopg://u:***@host:notaport/db' is not a valid SQLAlchemy URL"),
        (["db", "current", "--db", "postgresql+psycopg://u:p@s3cret@host:x/db"], "'postgresql+psycopg://u:***@host:x/db'"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, message):
    proc = subprocess.run([sys.executable, "-m", "stopbandit.cli", *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr.replace("\n", " ")
    assert "Traceback" not in proc.stderr and "s3cret" not in proc.stderr


def test_demo_end_to_end_logs_every_decision_and_outcome(tmp_path):
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    png = tmp_path / "curve.png"
    r = invoke("demo", "--db", url, "--requests", "600", "--plot", str(png), "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    names = [row["name"] for row in out["rows"]]
    assert names[0].startswith("stopbandit") and "per-request oracle (ceiling)" in names
    assert any(n.startswith("best static in hindsight") for n in names)
    oracle = next(row for row in out["rows"] if row["name"].startswith("per-request oracle"))
    assert all(row["reward"] <= oracle["reward"] + 1e-12 for row in out["rows"])
    store = ReplayStore(url)
    c = store.counts()
    assert c["decisions"] == c["outcomes"] == 600
    assert c["snapshots"] == 1 and store.get_snapshot("latest").version == out["snapshot"]
    traced = sum(1 for chunk in store.iter_events() for e in chunk if e.trace is not None)
    assert traced == 600
    store.dispose()
    assert png.stat().st_size > 10_000


def test_demo_human_output_names_the_next_commands(tmp_path):
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    r = invoke("demo", "--db", url, "--requests", "300", "--plot", str(tmp_path / "c.png"))
    assert r.exit_code == 0
    assert "Verdict:" in r.output and "stopbandit replay evaluate" in r.output and "replay sweep" in r.output


@pytest.mark.slow
def test_migrations_ship_in_the_wheel_and_run_from_it(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w",
                    str(dist), "-q"], check=True, timeout=300, cwd=tmp_path)
    [wheel] = dist.glob("stopbandit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "stopbandit/migrations/env.py" in names
    assert "stopbandit/migrations/script.py.mako" in names
    assert any(n.startswith("stopbandit/migrations/versions/0001_") for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    url = f"sqlite:///{tmp_path / 'w.db'}"
    code = ("import stopbandit, sys; from stopbandit.cli import main; "
            f"assert stopbandit.__file__.startswith({str(site)!r}), stopbandit.__file__; "
            f"main(['db', 'upgrade', '--db', {url!r}])")
    proc = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "at revision" in proc.stdout


def test_demo_without_db_uses_its_own_store_and_ignores_the_environment(tmp_path, monkeypatch):
    prod = tmp_path / "prod.db"
    monkeypatch.setenv("STOPBANDIT_DB", f"sqlite:///{prod}")
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # a second run starts again from an empty demo store
        r = invoke("demo", "--requests", "200", "--plot", str(tmp_path / "c.png"), "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["url"] == "sqlite:///stopbandit-demo/stopbandit.db"
        store = ReplayStore("sqlite:///stopbandit-demo/stopbandit.db")
        assert store.counts()["decisions"] == 200
        store.dispose()
    assert not prod.exists()


def test_demo_refuses_a_store_that_holds_data(tmp_path):
    url = f"sqlite:///{tmp_path / 'used.db'}"
    assert invoke("db", "upgrade", "--db", url).exit_code == 0
    store = ReplayStore(url)
    store.add_lambda(0.35, reason="operator")
    store.dispose()
    proc = subprocess.run([sys.executable, "-m", "stopbandit.cli", "demo", "--db", url, "--requests", "200"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert "already holds 1 lambda changes" in proc.stderr.replace("\n", " ")
    assert "Traceback" not in proc.stderr
    store = ReplayStore(url)
    assert store.counts() == {"decisions": 0, "outcomes": 0, "snapshots": 0, "lambda_changes": 1}
    assert store.current_lambda().value == 0.35
    store.dispose()


@pytest.mark.parametrize(
    "args",
    [
        ["replay", "evaluate"],
        ["replay", "sweep", "--lambdas", "0:1:0.5"],
        ["lambda", "get"],
        ["lambda", "history"],
        ["ab", "report"],
    ],
)
def test_read_only_commands_never_create_a_mistyped_sqlite_file(tmp_path, args):
    typo = tmp_path / "typo.db"
    proc = subprocess.run([sys.executable, "-m", "stopbandit.cli", *args, "--db", f"sqlite:///{typo}"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"no SQLite database at {typo}" in proc.stderr.replace("\n", " ")
    assert "Traceback" not in proc.stderr and "StoreError" not in proc.stderr
    assert not typo.exists()


def test_db_current_on_a_missing_file_says_so_and_creates_nothing(tmp_path):
    typo = tmp_path / "typo.db"
    r = invoke("db", "current", "--db", f"sqlite:///{typo}")
    assert r.exit_code == 0 and f"no database file at {typo}" in r.output
    info = json.loads(invoke("db", "current", "--db", f"sqlite:///{typo}", "--json").output)
    assert info["current"] is None and info["exists"] is False
    assert not typo.exists()


def test_decode_on_a_directory_that_holds_no_model_is_one_clear_line(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is 2 + 2?\n")
    model = tmp_path / "notamodel"
    model.mkdir()
    for expected in ("is not a model directory: it has no config.json", "cannot load a model and tokenizer from"):
        proc = subprocess.run([sys.executable, "-m", "stopbandit.cli", "decode", str(prompts), "--model", str(model),
                               "--arm", "full"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode != 0 and expected in " ".join(proc.stderr.split()), proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        (model / "config.json").write_text('{"model_type": "llama"}')  # second round: a config, no weights


def test_demo_reports_baseline_budget_verdict_and_domain_choice(tmp_path):
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    png = tmp_path / "c.png"
    r = invoke("demo", "--db", url, "--requests", "400", "--plot", str(png), "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["lam"] == 0.5 and out["baseline"] == "balanced" and out["max_loss"] == 0.01
    assert out["budget"]["baseline"] == "balanced" and out["budget"]["budget"] == pytest.approx(0.01 * 400)
    assert out["budget"]["spent"] >= 0.0
    assert out["verdict"].startswith(("win:", "no win:")) and "oracle's headroom" in out["reason"]
    assert set(out["domain_choice"]) == {"code", "math", "science", "trivia"}
    for shares in out["domain_choice"].values():
        assert sum(shares.values()) == pytest.approx(1.0)
    best = next(row for row in out["rows"] if row["name"].startswith("best static in hindsight"))
    assert out["best_static_reward"] == pytest.approx(best["reward"])
    assert (out["verdict"].startswith("win:")) == (out["served_reward"] > best["reward"])
    assert out["second_half_gap"] != 0.0 and f"the policy is {out['second_half_gap']:+.4f} against it" in out["reason"]
    # the reason gives the 95 % interval of the served-minus-best difference, and calls a difference inside it a tie
    ci = float(re.search(r"95% interval of the difference ±([0-9.]+)", out["reason"]).group(1))
    assert ("within noise" in out["reason"]) == (abs(out["served_reward"] - best["reward"]) <= ci)
    assert png.stat().st_size > 10_000
    human = invoke("demo", "--db", f"sqlite:///{tmp_path / 'demo2.db'}", "--requests", "300", "--plot",
                   str(png))
    assert human.exit_code == 0
    for text in ("Baseline: balanced", "budget: give up at most 0.01", "spent:", "Verdict:", "Reason:",
                 "arm served per domain"):
        assert text in human.output.replace("\n", " "), text


@pytest.mark.slow
def test_demo_at_its_defaults_wins_against_the_best_static_arm_within_the_budget(tmp_path):
    """`stopbandit demo` with no options but the store: 20,000 requests at the demo's λ against its baseline.

    The reward served over all requests, exploration included, is ahead of the best static arm in hindsight
    by more than the 95 % interval of the paired difference, the baseline, the budget and what the lower bound
    spent of it are reported, and the served reward is within the budget of the baseline's.
    """
    from stopbandit.demo import DEMO_BASELINE, DEMO_LAM

    r = invoke("demo", "--db", f"sqlite:///{tmp_path / 'demo.db'}", "--plot", str(tmp_path / "c.png"), "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert (out["requests"], out["lam"], out["baseline"], out["max_loss"]) == (20_000, DEMO_LAM, DEMO_BASELINE, 0.01)
    best = next(row for row in out["rows"] if row["name"].startswith("best static in hindsight"))
    assert best["name"] == f"best static in hindsight ({out['best_static']})"
    gap = out["served_reward"] - best["reward"]
    ci = float(re.search(r"95% interval of the difference ±([0-9.]+)", out["reason"]).group(1))
    assert out["verdict"].startswith("win:") and gap > ci, (gap, ci, out["verdict"], out["reason"])
    budget = out["budget"]
    assert budget["baseline"] == DEMO_BASELINE and budget["budget"] == pytest.approx(0.01 * 20_000)
    assert 0.0 <= budget["spent"] <= budget["budget"]
    assert out["served_reward"] - out["baseline_reward"] >= -0.01


def test_demo_baseline_none_and_unknown(tmp_path):
    r = invoke("demo", "--db", f"sqlite:///{tmp_path / 'a.db'}", "--requests", "200", "--baseline", "none",
               "--plot", str(tmp_path / "c.png"), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["budget"] is None
    bad = invoke("demo", "--db", f"sqlite:///{tmp_path / 'b.db'}", "--requests", "200", "--baseline", "nope")
    assert bad.exit_code != 0 and "nope" in bad.output and "Traceback" not in bad.output
