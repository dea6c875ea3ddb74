"""`stopbandit replay …` end to end through click (CliRunner), SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from stopbandit.replay.cli_commands import replay
from stopbandit.replay.csvlog import TEXT_COLUMNS
from stopbandit.replay.store import ReplayStore, outcome_row
from tests.replay.test_logged import add_status_events, make_log


def invoke(*args: str, ok: bool = True):
    result = CliRunner().invoke(replay, list(args))
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def as_json(*args: str) -> dict:
    return json.loads(invoke(*args, "--json").stdout)


@pytest.fixture
def db(sqlite_url):
    make_log(sqlite_url, 250, snapshot=True)
    store = ReplayStore(sqlite_url)
    add_status_events(store, ["defaulted", "late"])
    store.dispose()
    return sqlite_url


def test_evaluate_json(db):
    out = as_json("evaluate", "--db", db, "--policy", "latest", "--estimators", "ips,snips,dr,dm,switch-dr,graph-ips,"
                  "graph-dr", "--lam", "0.3")
    assert out["lam"] == 0.3 and out["policy"]["policy"] == "latest" and out["policy"]["mode"] == "greedy"
    assert set(out["estimates"]) == {"ips", "snips", "dr", "dm", "switch-dr", "graph-ips", "graph-dr"}
    for est in out["estimates"].values():
        assert set(est) == {"em", "tokens", "reward"}
        assert est["reward"]["lam"] == 0.3 and est["em"]["n"] == 250
        assert est["em"]["ci_low"] <= est["em"]["value"] <= est["em"]["ci_high"]
    assert out["estimates"]["graph-ips"]["em"]["fallback_share"] == pytest.approx(0.2)  # every 5th untraced
    assert out["counts"] == {"events": 252, "used": 250, "ok": 250, "defaulted": 1, "late": 1, "traced": 200,
                             "trace_disagreements": 0, "malformed_traces": 0, "excluded": 2}
    assert out["logging"]["em"]["max_weight"] == 1.0
    assert out["notes"] == {"arms_from": "snapshot " + out["model"], "lam_from": "--lam"}


def test_evaluate_auto_estimators_and_table(db):
    res = invoke("evaluate", "--db", db, "--policy", "arm:careful", "--include-defaulted")
    text = res.stdout
    for needle in ("EM", "tokens", "reward at λ=0.2", "logging policy", "IPS", "SNIPS", "DR", "DM", "GraphIPS",
                   "GraphDR", "ESS", "max weight", "defaulted"):
        assert needle in text, needle
    out = as_json("evaluate", "--db", db, "--policy", "arm:careful", "--include-defaulted")
    assert list(out["estimates"]) == ["ips", "snips", "dr", "dm", "graph-ips", "graph-dr", "graph-chain-dr"]
    assert out["counts"]["used"] == 251 and out["lam"] == 0.2


def test_evaluate_warns_loudly(db):
    res = invoke("evaluate", "--db", db, "--policy", "arm:full", "--estimators", "ips,dm")
    assert "WARNING [DM] MODEL ONLY" in res.stdout
    res = invoke("evaluate", "--db", db, "--policy", "uniform", "--estimators", "dr", "--model", "nope", ok=False)
    assert res.exit_code == 2 and "no snapshot 'nope' in the store" in res.stderr


@pytest.mark.parametrize(("args", "message"), [
    (("evaluate", "--policy", "nope"), "error: unknown policy 'nope'"),
    (("evaluate", "--estimators", "ips,magic"), "error: unknown estimator 'magic'"),
    (("evaluate", "--since", "yesterday"), "--since must be an ISO 8601 time"),
    (("evaluate", "--policy", "arm:turbo"), "unknown arm 'turbo'"),
    (("sweep", "--lambdas", "1:0:0.1"), "stop 0 is below start 1"),
    (("train", "--test-frac", "2"), r"test_frac must be a number in (0, 1), got 2.0"),
])
def test_user_errors_exit_2_with_one_line(db, args, message):
    res = invoke(*args[:1], "--db", db, *args[1:], ok=False)
    assert res.exit_code == 2, res.output
    # one message (rich may soft-wrap it at 80 columns when stderr is not a terminal), no traceback
    text = " ".join(res.stderr.split())
    assert message in text.replace("( ", "(") and "Traceback" not in res.output
    assert text.startswith("error: ") and text.count("error:") == 1


def test_train_json(db):
    out = as_json("train", "--db", db, "--test-frac", "0.3", "--lam", "0.25")
    assert out["saved"] and out["snapshot"].startswith("r")
    assert out["split"]["n_train"] + out["split"]["n_test"] == 252
    assert set(out["candidate"]) == {"dr", "snips"} and set(out["logging"]) == {"em", "tokens", "reward"}
    assert out["candidate"]["dr"]["reward"]["lam"] == 0.25
    # the new snapshot is now `latest`
    ev = as_json("evaluate", "--db", db, "--estimators", "dr")
    assert ev["policy"]["snapshot"] == out["snapshot"]
    dry = as_json("train", "--db", db, "--dry-run", "--importance-weighting")
    assert not dry["saved"] and dry["train"]["importance_weighting"]


def test_train_candidate_is_not_latest(db):
    serving = as_json("train", "--db", db, "--test-frac", "0.3")
    cand = as_json("train", "--db", db, "--test-frac", "0.3", "--candidate")
    assert cand["saved"] and cand["role"] == "candidate" and serving["role"] == "serving"
    store = ReplayStore(db)
    try:
        assert store.latest_snapshot_version() == serving["snapshot"]
        assert store.latest_snapshot_version("candidate") == cand["snapshot"]
    finally:
        store.dispose()
    # `latest` still evaluates the serving heads; the candidate is evaluated by its version
    assert as_json("evaluate", "--db", db, "--estimators", "dr")["policy"]["snapshot"] == serving["snapshot"]
    by_version = as_json("evaluate", "--db", db, "--estimators", "dr", "--policy", cand["snapshot"])
    assert by_version["policy"]["snapshot"] == cand["snapshot"]


def test_sweep_plot_and_json(db, tmp_path):
    png = tmp_path / "pareto.png"
    out = as_json("sweep", "--db", db, "--lambdas", "0:1:0.25", "--plot", str(png))
    assert png.exists() and png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p["lam"] for p in out["points"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert set(out["fixed_arms"]) == {"full (full reasoning)", "careful", "balanced", "aggressive"}
    assert out["trained"]["split"]["n_test"] == out["counts"]["events"] and out["plot"] == str(png)
    for p in out["points"]:
        assert p["em"]["ci_low"] <= p["em"]["value"] <= p["em"]["ci_high"]
    snap = as_json("sweep", "--db", db, "--lambdas", "0.1,0.2", "--policy", "latest", "--estimator", "snips")
    assert snap["estimator"] == "SNIPS" and snap["counts"]["used"] == 250 and snap["trained"] is None
    table = invoke("sweep", "--db", db, "--lambdas", "0,0.5", "--policy", "latest").stdout
    assert "full reasoning" in table and "logging policy" in table


def test_sweep_plot_without_matplotlib_is_refused_before_the_sweep(db, tmp_path):
    # a process where matplotlib cannot be imported, as after a plain `pip install stopbandit`
    code = ("import sys; sys.modules['matplotlib'] = None; from stopbandit.cli import main; "
            "sys.argv = ['stopbandit'] + sys.argv[1:]; main()")
    png = tmp_path / "pareto.png"
    proc = subprocess.run([sys.executable, "-c", code, "replay", "sweep", "--db", db, "--lambdas", "0:1:0.5",
                           "--plot", str(png)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "--plot needs matplotlib: pip install 'stopbandit[plots]'" in proc.stderr.replace("\n", " ")
    assert "Traceback" not in proc.stderr and not png.exists() and proc.stdout == ""


def test_export_import_round_trip(db, tmp_path):
    for fmt in ("dsjson", "csv"):
        path = tmp_path / f"log.{fmt}"
        summary = as_json("export", "--db", db, "--format", fmt, "--out", str(path))
        assert summary["events"] == 252
        target = f"sqlite:///{tmp_path / f'copy_{fmt}.db'}"
        rep = as_json("import", str(path), "--db", target, "--format", fmt)
        assert (rep["inserted"], rep["errors"], rep["written"]) == (252, 0, True)
        again = as_json("import", str(path), "--db", target, "--format", fmt)
        assert (again["inserted"], again["duplicates"]) == (0, 252)
    dsjson_lines = (tmp_path / "log.dsjson").read_text().splitlines()
    assert len(dsjson_lines) == 252 and json.loads(dsjson_lines[0])["EventId"]
    stdout = invoke("export", "--db", db, "--out", "-").stdout
    assert stdout.splitlines() == dsjson_lines


def test_import_skip_and_fail(db, tmp_path):
    path = tmp_path / "bad.dsjson"
    good = (tmp_path / "good.dsjson")
    invoke("export", "--db", db, "--out", str(good))
    lines = good.read_text().splitlines()[:3]
    path.write_text("\n".join([lines[0], "{oops", lines[1], '{"EventId": "z"}', lines[2]]) + "\n")
    target = f"sqlite:///{tmp_path / 'imp.db'}"
    fail = invoke("import", str(path), "--db", target, "--on-error", "fail", "--json", ok=False)
    assert fail.exit_code == 2
    report = json.loads(fail.stdout)
    assert not report["written"] and [e["line"] for e in report["error_lines"]] == [2, 4]
    assert "nothing was written" in fail.stderr
    assert ReplayStore(target).counts()["decisions"] == 0
    skip = invoke("import", str(path), "--db", target, ok=False)
    assert skip.exit_code == 3, "a partial import must not exit 0"
    assert "malformed lines (skipped)" in skip.stdout and "missing field" in skip.stdout
    assert "partial import: 3 of 5 line(s) imported" in " ".join(skip.stderr.split())
    assert ReplayStore(target).counts()["outcomes"] == 3
    report = json.loads(invoke("import", str(path), "--db", target, "--json", ok=False).stdout)
    assert report["status"] == "partial" and report["duplicates"] == 3


def test_import_where_every_line_is_rejected_exits_non_zero(db, tmp_path):
    path = tmp_path / "all_bad.dsjson"
    path.write_text('{oops\n{"EventId": "z"}\n')
    target = f"sqlite:///{tmp_path / 'none.db'}"
    res = invoke("import", str(path), "--db", target, "--json", ok=False)
    assert res.exit_code == 2
    assert json.loads(res.stdout)["status"] == "nothing"
    assert "every line was rejected" in " ".join(res.stderr.split())
    assert ReplayStore(target).counts()["decisions"] == 0


def test_csv_row_before_an_unterminated_quote_is_imported(db, tmp_path):
    good = tmp_path / "good.csv"
    invoke("export", "--db", db, "--format", "csv", "--out", str(good))
    header, first = good.read_text().splitlines()[:2]
    path = tmp_path / "torn.csv"
    path.write_text(f'{header}\n{first}\nx-1,1700000000,code,"{{oops,full,0.5\n')
    target = f"sqlite:///{tmp_path / 'torn.db'}"
    res = invoke("import", str(path), "--db", target, "--json", ok=False)
    report = json.loads(res.stdout)
    assert res.exit_code == 3 and report["inserted"] == 1
    assert [e["line"] for e in report["error_lines"]] == [3]
    assert ReplayStore(target).counts()["decisions"] == 1


def test_csv_export_escapes_formulas_and_round_trips(sqlite_url, tmp_path):
    make_log(sqlite_url, 5, snapshot=False)
    store = ReplayStore(sqlite_url)
    hostile = dict(request_key="-2+3", ts=1.7e9, domain='=HYPERLINK("http://x")', features={"len": 2.0},
                   arm="balanced", arm_index=2,
                   probabilities={"full": 0.1, "careful": 0.2, "balanced": 0.6, "aggressive": 0.1},
                   propensity=0.6, lam=0.2, token_scale=1000.0, policy_version="@SUM(A1)", experiment="champion")
    store.write_batch([hostile], [outcome_row("-2+3", 1.0, 10)])
    store.dispose()
    out = tmp_path / "log.csv"
    invoke("export", "--db", sqlite_url, "--format", "csv", "--out", str(out))
    rows = list(csv.DictReader(out.open(newline="")))
    [row] = [r for r in rows if r["request_id"] == "'-2+3"]
    assert row["domain"] == "'=HYPERLINK(\"http://x\")"
    assert row["policy_version"] == "'@SUM(A1)"
    text_cells = [r[c] for r in rows for c in TEXT_COLUMNS]
    assert not any(cell.startswith(("=", "+", "-", "@")) for cell in text_cells)
    target = f"sqlite:///{tmp_path / 'back.db'}"
    assert as_json("import", str(out), "--db", target)["inserted"] == 6
    again = tmp_path / "again.csv"
    invoke("export", "--db", target, "--format", "csv", "--out", str(again))
    assert again.read_text() == out.read_text()


def test_cli_on_postgres(db_url, tmp_path):
    make_log(db_url, 100, snapshot=True)
    out = as_json("evaluate", "--db", db_url, "--estimators", "ips,dr,graph-dr")
    assert out["counts"]["used"] == 100 and out["estimates"]["graph-dr"]["em"]["n"] == 100
    tr = as_json("train", "--db", db_url, "--test-frac", "0.4", "--dry-run")
    assert tr["split"]["n_test"] == 40
    path = tmp_path / "pg.dsjson"
    as_json("export", "--db", db_url, "--out", str(path))
    rep = as_json("import", str(path), "--db", db_url)
    assert (rep["inserted"], rep["duplicates"]) == (0, 100)


def test_export_with_arms_that_do_not_fit_leaves_no_file(db, tmp_path):
    cfg = tmp_path / "other.toml"
    cfg.write_text('[[arms]]\nname = "full"\nthreshold = 1.01\n\n[[arms]]\nname = "quick"\nthreshold = 0.6\n')
    out = tmp_path / "never.dsjson"
    res = invoke("export", "--db", db, "--config", str(cfg), "--out", str(out), ok=False)
    assert res.exit_code == 2 and "do not fit the arms ['full', 'quick']" in " ".join(res.stderr.split())
    assert not out.exists() and not (tmp_path / "never.dsjson.partial").exists()
    res = invoke("evaluate", "--db", db, "--config", str(cfg), "--policy", "uniform", ok=False)
    assert res.exit_code == 2 and "pass --config with the arms the log was written with" in " ".join(res.stderr.split())


def test_file_content_cannot_inject_terminal_markup(tmp_path):
    path = tmp_path / "evil.dsjson"
    obj = {"EventId": "e", "a": [1, 2, 3, 4], "p": [0.25] * 4, "_label_Action": 1, "_label_probability": 0.25,
           "_label_cost": -1, "Timestamp": "2024-01-01T00:00:00Z",
           "c": {"_multi": [{"arm": "[/]"}, {"arm": "[bold]x"}, {"arm": "b"}, {"arm": "c"}]}}
    path.write_text(json.dumps(obj) + "\n")
    res = invoke("import", str(path), "--db", f"sqlite:///{tmp_path / 'e.db'}", ok=False)
    assert res.exit_code == 2 and "unknown arm '[/]'" in res.stdout


def test_sweep_rows_carry_their_own_warnings_and_em_intervals_stay_in_0_1(sqlite_url):
    from stopbandit.replay.cli_commands import FEW_ESS, HEAVY_WEIGHT

    make_log(sqlite_url, 60, snapshot=True)  # few events: the far λ values rest on a handful of weights
    out = as_json("sweep", "--db", sqlite_url, "--lambdas", "0,0.5,3,10", "--policy", "latest", "--estimator", "ips")
    for p in out["points"]:
        assert 0.0 <= p["em"]["ci_low"] <= p["em"]["ci_high"] <= 1.0
    text = invoke("sweep", "--db", sqlite_url, "--lambdas", "0,0.5,3,10", "--policy", "latest",
                  "--estimator", "ips").stdout
    assert "[λ=" not in text  # no per-λ warning lines: each row says its own
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.startswith("│")}
    flagged = 0
    for p in out["points"]:
        row = rows[f"{p['lam']:g}"]
        heavy = p["em"]["max_weight"] >= HEAVY_WEIGHT
        few = 0 < p["em"]["ess"] < FEW_ESS
        own = [w.split(":", 1)[0] for w in p["em"]["warnings"]]
        for flag in own:
            assert flag in row, (flag, row)
        if heavy:
            assert f"max weight {p['em']['max_weight']:.3g}" in row
        if few and "LOW ESS" not in own:
            assert f"ESS {p['em']['ess']:.1f}" in row
        flagged += bool(own or heavy or few)
        if not (own or heavy or few):
            assert row.rstrip("│ ").endswith(row.split("│")[-2].rstrip()) and row.split("│")[-2].strip() == ""
    assert flagged >= 1
