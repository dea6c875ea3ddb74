"""CSV import validated as columns: the same events and messages as the row-by-row check, every problem of a line."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from stopbandit.bandit.arms import DEFAULT_ARMS, ArmSet
from stopbandit.errors import StopbanditError
from stopbandit.replay.csvlog import TEXT_COLUMNS, from_spreadsheet_safe, parse_row, read_csv
from stopbandit.replay.dsjson import read_dsjson
from stopbandit.replay.interchange import LineError, import_events
from stopbandit.replay.store import ReplayStore

ARMS = ArmSet(DEFAULT_ARMS)
NOW = 1_700_000_000.0
HEADER = ["request_id", "ts", "domain", "features", "arm", "propensity", "probabilities", "em", "tokens", "lam",
          "token_scale", "policy_version", "experiment", "latency_ms", "outcome_ts", "status"]


def _row(i: int, rng: np.random.Generator) -> dict[str, str]:
    """A row that is good, or bad in one or more ways, chosen by ``rng``."""
    names = ARMS.names
    p = rng.dirichlet(np.ones(len(names)))
    a = int(rng.integers(len(names)))
    row = {
        "request_id": f"k{i}", "ts": repr(NOW + i), "domain": ["math", "", "'=x", "code"][i % 4],
        "features": json.dumps({"len": float(rng.random()), "n": float(i)}), "arm": names[a],
        "propensity": repr(float(p[a])), "probabilities": json.dumps(dict(zip(names, map(float, p)))),
        "em": str(int(rng.integers(2))), "tokens": str(int(rng.integers(1, 900))), "lam": "", "token_scale": "",
        "policy_version": "", "experiment": "", "latency_ms": "", "outcome_ts": "", "status": "",
    }
    variant = int(rng.integers(24))
    if variant == 1:
        row["probabilities"] = ""  # the remaining mass spread evenly
    elif variant == 2:
        row["features"] = '{"len": 2, "flag": true, "word": "x"}'  # ints, booleans and strings: the row path
    elif variant == 3:
        row["ts"] = "2024-05-01T12:00:00Z"
    elif variant == 4:
        row["propensity"] = "1.5"
    elif variant == 5:
        row["em"] = "nan"
        row["tokens"] = "-3"
        row["arm"] = "turbo"  # three problems on one line
    elif variant == 6:
        row["features"] = '{"a b": 1.0}'
    elif variant == 7:
        row["probabilities"] = json.dumps({n: 0.5 for n in names})  # sums to 2
    elif variant == 8:
        row["lam"], row["token_scale"], row["policy_version"] = "0.25", "500", "'-v2"
    elif variant == 9:
        row["latency_ms"], row["status"] = "12.5", "late"
    elif variant == 10:
        row["tokens"] = "12.5"
    elif variant == 11:
        row["propensity"] = repr(float(p[a]) + 0.01)  # not the logged arm's probability
    elif variant == 12:
        row["ts"] = "yesterday"
    elif variant == 13:
        row["token_scale"] = "0"
    elif variant == 14:
        row["request_id"] = ""
    elif variant == 15:
        row["features"] = "[1, 2]"
    elif variant == 16:
        row["experiment"] = "x" * 40
    return row


def _expected(text: str) -> list[tuple]:
    """Each row through ``parse_row`` alone (csv.DictReader, one row at a time): the reference result."""
    out = []
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    for row in reader:
        for name in TEXT_COLUMNS:
            if row.get(name):
                row[name] = from_spreadsheet_safe(row[name])
        try:
            ev = parse_row(row, reader.line_num, ARMS, token_scale=1000.0, now=NOW)
            out.append((reader.line_num, ev.decision, ev.outcome))
        except StopbanditError as exc:
            out.append((reader.line_num, str(exc)))
    return out


def _got(items) -> list[tuple]:
    return [(x.line, x.message) if isinstance(x, LineError) else (x.line, x.decision, x.outcome) for x in items]


def test_columnar_parse_gives_the_row_by_row_result_for_every_row(tmp_path):
    rng = np.random.default_rng(3)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HEADER, lineterminator="\n")
    w.writeheader()
    for i in range(600):
        w.writerow(_row(i, rng))
    path = tmp_path / "mixed.csv"
    path.write_text(buf.getvalue())
    expected = _expected(buf.getvalue())
    got = _got(read_csv(str(path), ARMS, token_scale=1000.0, now=NOW, batch=37))
    assert len(got) == 600
    bad = sum(1 for e in expected if len(e) == 2)
    assert 100 < bad < 500  # both kinds are well represented
    for g, e in zip(got, expected):
        assert g == e
        if len(g) == 3:  # identical content and the same key order (the stored JSON text is the same)
            assert list(g[1]["probabilities"]) == list(ARMS.names)


def test_every_problem_of_a_csv_line_is_reported(sqlite_url, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("request_id,features,domain,arm,propensity,em,tokens,ts\n"
                    'ok,{},,full,0.5,1,10,\n'
                    'bad,"{""a b"": 1.0}",,turbo,1.5,nan,-3,yesterday\n')
    store = ReplayStore(sqlite_url, migrate_schema=True)
    report = import_events(store, lambda: read_csv(str(path), ARMS, token_scale=1000.0, now=NOW),
                           path=str(path), fmt="csv")
    assert report.inserted == 1 and report.error_count == 1
    msg = report.errors[0].message
    for part in ("unknown arm 'turbo'", "column 'propensity' must be in (0, 1]", "column 'em' must be finite",
                 "tokens must be >= 0, got -3", "feature name 'a b' must match", "ts must be an ISO 8601 time"):
        assert part in msg, (part, msg)
    store.dispose()


def test_every_problem_of_a_dsjson_line_is_reported(tmp_path):
    line = {"_label_cost": "x", "_label_Action": 7, "a": [1, 2, 3, 4], "p": [0.7, 1.5, 0.1, 0.1],
            "c": {"_multi": [{"arm": n} for n in ARMS.names]}, "Timestamp": 12}
    path = tmp_path / "bad.dsjson"
    path.write_text(json.dumps(line) + "\n")
    [err] = list(read_dsjson(str(path), ARMS, token_scale=1000.0))
    assert isinstance(err, LineError)
    for part in ("probability 1.5 of action 2 is not a number in [0, 1]", "_label_Action must be an action id in 1..4",
                 "missing field '_label_probability'", "Timestamp must be an ISO 8601 string",
                 "_label_cost must be a finite number"):
        assert part in err.message, (part, err.message)


@pytest.mark.parametrize("actions", [None, [1, 1, 3]], ids=["no actions", "actions not 1..K"])
def test_a_dsjson_line_without_usable_actions_still_reports_its_other_fields(tmp_path, actions):
    line = {"_label_cost": "x", "_label_probability": 1.5, "_label_Action": 1, "p": [0.5, 0.25, 0.25],
            "c": {"_multi": [{"arm": n} for n in ARMS.names[:3]]}, "Timestamp": "yesterday"}
    if actions is not None:
        line["a"] = actions
    path = tmp_path / "bad.dsjson"
    path.write_text(json.dumps(line) + "\n")
    [err] = list(read_dsjson(str(path), ARMS, token_scale=1000.0))
    assert isinstance(err, LineError)
    first = "missing field 'a'" if actions is None else "field 'a' must list every action id 1..3 once"
    for part in (first, "propensity must be", "got 1.5", "Timestamp", "'yesterday'",
                 "_label_cost must be a finite number, got 'x'"):
        assert part in err.message, (part, err.message)


def test_per_item_propensities_of_a_ranking_log_are_refused_with_the_reason(tmp_path):
    """Each item's own propensity per position (3 slots): the vector sums to about 3, not 1."""
    names = ARMS.names
    probs = {n: 0.75 for n in names}
    path = tmp_path / "rank.csv"
    path.write_text("request_id,features,domain,arm,propensity,probabilities,em,tokens\n"
                    f'r1,{{}},,full,0.75,"{json.dumps(probs).replace(chr(34), chr(34) * 2)}",1,0\n')
    [err] = list(read_csv(str(path), ARMS, token_scale=1000.0, now=NOW))
    assert isinstance(err, LineError)
    assert "probabilities must sum to 1, they sum to 3.0" in err.message
    assert "one distribution per decision" in err.message
    ds = tmp_path / "rank.dsjson"
    ds.write_text(json.dumps({"_label_cost": -1, "_label_probability": 0.75, "_label_Action": 1, "a": [1, 2, 3, 4],
                              "p": [0.75] * 4, "c": {"_multi": [{"arm": n} for n in names]}}) + "\n")
    [err] = list(read_dsjson(str(ds), ARMS, token_scale=1000.0))
    assert isinstance(err, LineError) and "they sum to 3.0" in err.message and "per position" in err.message
