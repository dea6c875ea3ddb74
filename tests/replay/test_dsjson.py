"""DSJSON and CSV: lossless round trips, idempotent imports, malformed lines, foreign DSJSON."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from click.testing import CliRunner

from stopbandit.bandit.arms import DEFAULT_ARMS, ArmSet, plain_arms
from stopbandit.errors import ConfigError, InputError
from stopbandit.replay.cli_commands import replay
from stopbandit.replay.csvlog import COLUMNS, CsvWriter, read_csv
from stopbandit.replay.dsjson import CUSTOM, event_to_dsjson, read_dsjson, write_dsjson
from stopbandit.replay.interchange import LineError, export_events, import_events
from stopbandit.replay.store import ReplayStore
from tests.replay.test_logged import add_status_events, make_log

ARMS = ArmSet(DEFAULT_ARMS)
NOW = 1_700_000_000.0


def events_of(store: ReplayStore) -> list[tuple]:
    """Every stored event without its cursor (outcome ids may differ between stores)."""
    return [tuple(getattr(e, f) for f in e.__slots__ if f != "cursor") for ch in store.iter_events() for e in ch]


def fresh(db_url: str) -> str:
    """The db_url fixture's SQLite file is the source's (both tmp_path/replay.db): use another file."""
    return db_url.replace("replay.db", "target.db") if db_url.startswith("sqlite") else db_url


def export(store: ReplayStore, path, fmt: str) -> int:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        if fmt == "csv":
            return export_events(store, CsvWriter(fh).write)
        return export_events(store, lambda ev: write_dsjson(ev, ARMS, fh))


def do_import(store: ReplayStore, path, fmt: str, on_error: str = "skip"):
    def parse():
        if fmt == "csv":
            return read_csv(str(path), ARMS, token_scale=1000.0, now=NOW)
        return read_dsjson(str(path), ARMS, token_scale=1000.0)

    return import_events(store, parse, path=str(path), fmt=fmt, on_error=on_error)


@pytest.fixture
def source(sqlite_url):
    make_log(sqlite_url, 120, snapshot=False)
    store = ReplayStore(sqlite_url)
    add_status_events(store, ["defaulted", "late"])
    yield store
    store.dispose()


@pytest.mark.parametrize("fmt", ["dsjson", "csv"])
def test_round_trip_into_a_fresh_store_gives_identical_events(source, db_url, tmp_path, fmt):
    path = tmp_path / f"log.{fmt}"
    assert export(source, path, fmt) == 122
    target = ReplayStore(fresh(db_url), migrate_schema=True)
    report = do_import(target, path, fmt)
    assert (report.lines, report.valid, report.inserted, report.error_count, report.written) == (122, 122, 122, 0, True)
    assert events_of(target) == events_of(source)
    # a second import adds nothing
    again = do_import(target, path, fmt)
    assert (again.inserted, again.duplicates, again.error_count) == (0, 122, 0)
    assert target.counts()["decisions"] == 122 and target.counts()["outcomes"] == 122
    # and exporting the copy gives the same file
    copy_path = tmp_path / f"copy.{fmt}"
    export(target, copy_path, fmt)
    assert copy_path.read_text() == path.read_text()
    target.dispose()


def test_dsjson_fields(source):
    ev = next(e for ch in source.iter_events() for e in ch if e.trace is not None)
    obj = event_to_dsjson(ev, ARMS)
    a = ev.arm_index
    assert obj["_label_Action"] == a + 1 and obj["_labelIndex"] == a
    assert obj["a"][0] == a + 1 and sorted(obj["a"]) == [1, 2, 3, 4]
    assert obj["p"] == [ev.probabilities[ARMS[j - 1].name] for j in obj["a"]]
    assert obj["_label_probability"] == ev.propensity == obj["p"][0]
    assert obj["_label_cost"] == pytest.approx(-(ev.em - ev.lam * ev.tokens / ev.token_scale))
    assert [m["arm"] for m in obj["c"]["_multi"]] == list(ARMS.names)
    assert obj["c"]["_multi"][3] == {"arm": "aggressive", "threshold": 0.75, "max_think_tokens": 512}
    assert obj["c"]["x"] == ev.features and obj["EventId"] == ev.request_key
    assert obj[CUSTOM]["em"] == ev.em and obj[CUSTOM]["tokens"] == ev.tokens and obj[CUSTOM]["trace"] == ev.trace
    assert obj["Timestamp"].endswith("Z")


# --------------------------------------------------------------------------- malformed lines

GOOD = {
    "_label_cost": -1.0, "_label_probability": 0.5, "_label_Action": 2, "_labelIndex": 1,
    "Timestamp": "2024-05-01T12:00:00Z", "EventId": "ok-1", "a": [2, 1, 3, 4],
    "c": {"x": {"len": 3.0}, "_multi": [{"arm": n} for n in ARMS.names]}, "p": [0.5, 0.2, 0.2, 0.1],
    CUSTOM: {"ts": 1714564800.0, "domain": "math", "em": 1.0, "tokens": 321, "lam": 0.0, "token_scale": 1000.0},
}


def variant(key: str, **changes) -> str:
    obj = json.loads(json.dumps(GOOD))
    obj["EventId"] = key
    for path, value in changes.items():
        node = obj
        parts = path.split("__")
        for p in parts[:-1]:
            node = node[p]
        if value is KeyError:
            del node[parts[-1]]
        else:
            node[parts[-1]] = value
    return json.dumps(obj)


MALFORMED = [
    ("bad JSON", '{"EventId": "b1", "a": [1, 2', r"not valid JSON"),
    ("missing field", variant("b2", p=KeyError), r"missing field 'p'"),
    ("probability out of range", variant("b3", p=[1.5, 0.2, 0.2, 0.1]),
     r"probability 1.5 of action 2 is not a number in \[0, 1\]"),
    ("unknown arm", variant("b4", c__x={}, c___multi=[{"arm": "full"}, {"arm": "careful"}, {"arm": "turbo"},
                                                    {"arm": "aggressive"}]), r"unknown arm 'turbo'"),
    ("NaN", variant("b5").replace('"_label_probability": 0.5', '"_label_probability": NaN'),
     r"propensity must be a finite number, got nan"),
    ("em out of range", variant("b6", _stopbandit__em=1.5), r"em must be a finite number in \[0, 1\], got 1.5"),
    ("not an object", "[1, 2, 3]", r"must be a JSON object, got list"),
]


def _malformed_file(tmp_path):
    lines = [variant("ok-1"), ""]  # line 1 good, line 2 blank (ignored)
    for _, text, _ in MALFORMED:
        lines.append(text)
    lines.append(variant("ok-2"))
    path = tmp_path / "mixed.dsjson"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_lines_are_counted_with_line_numbers_and_skipped(sqlite_url, tmp_path):
    store = ReplayStore(sqlite_url, migrate_schema=True)
    report = do_import(store, _malformed_file(tmp_path), "dsjson", on_error="skip")
    assert (report.lines, report.valid, report.inserted, report.error_count) == (9, 2, 2, 7)
    assert [e.line for e in report.errors] == list(range(3, 10))
    for err, (what, _, match) in zip(report.errors, MALFORMED):
        assert __import__("re").search(match, err.message), (what, err.message)
    assert store.counts()["decisions"] == 2
    assert report.to_dict()["skipped"] == 7
    store.dispose()


def test_on_error_fail_writes_nothing(sqlite_url, tmp_path):
    store = ReplayStore(sqlite_url, migrate_schema=True)
    report = do_import(store, _malformed_file(tmp_path), "dsjson", on_error="fail")
    assert report.error_count == 7 and not report.written and report.inserted == 0
    assert store.counts()["decisions"] == 0 and store.counts()["outcomes"] == 0
    store.dispose()


@pytest.mark.parametrize(("name", "text", "match"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_each_malformed_kind_alone(sqlite_url, tmp_path, name, text, match):
    path = tmp_path / "one.dsjson"
    path.write_text(variant("ok-1") + "\n" + text + "\n")
    store = ReplayStore(sqlite_url, migrate_schema=True)
    report = do_import(store, path, "dsjson", on_error="fail")
    assert [e.line for e in report.errors] == [2]
    assert __import__("re").search(match, report.errors[0].message)
    assert store.counts()["decisions"] == 0
    store.dispose()


def test_conflicting_reimport_is_an_error_not_a_silent_skip(sqlite_url, tmp_path):
    store = ReplayStore(sqlite_url, migrate_schema=True)
    first = tmp_path / "a.dsjson"
    first.write_text(variant("k1") + "\n")
    assert do_import(store, first, "dsjson").inserted == 1
    second = tmp_path / "b.dsjson"
    second.write_text(variant("k1", _stopbandit__em=0.0) + "\n" + variant("k2") + "\n" + variant("k2") + "\n")
    report = do_import(store, second, "dsjson")
    assert [e.line for e in report.errors] == [1]
    assert "already has an outcome (em 1.0, tokens 321); this line has em 0.0" in report.errors[0].message
    assert (report.inserted, report.duplicates) == (1, 1)  # k2 once; its repeat is a duplicate
    store.dispose()


def test_one_pass_import_in_many_batches(source, db_url, tmp_path):
    """Batches of 7 lines: a line repeated in a later batch is a duplicate (found in the store, not in memory);
    with on_error="fail" a bad last line undoes the batches already written in the same transaction."""
    path = tmp_path / "log.csv"
    assert export(source, path, "csv") == 122
    lines = path.read_text().splitlines()
    repeated = tmp_path / "repeated.csv"
    repeated.write_text("\n".join(lines + lines[1:4]) + "\n")

    def run(store, file, on_error):
        return import_events(store, lambda: read_csv(str(file), ARMS, token_scale=1000.0, now=NOW),
                             path=str(file), fmt="csv", on_error=on_error, batch=7)

    target = ReplayStore(fresh(db_url), migrate_schema=True)
    broken = tmp_path / "broken.csv"
    broken.write_text("\n".join(lines + [lines[5].replace(",", ",not-a-number,", 1)]) + "\n")
    failed = run(target, broken, "fail")
    assert (failed.lines, failed.error_count, failed.inserted, failed.written) == (123, 1, 0, False)
    assert failed.errors[0].line == 124
    assert target.counts()["decisions"] == 0 and target.counts()["outcomes"] == 0

    report = run(target, repeated, "skip")
    assert (report.lines, report.valid, report.inserted, report.duplicates, report.error_count) == (125, 125, 122, 3, 0)
    assert events_of(target) == events_of(source)
    target.dispose()


# --------------------------------------------------------------------------- foreign DSJSON


def foreign(key: str, cost: float, chosen: int, *, names: bool, **extra) -> str:
    multi = [{"a": {"arm": n, "t": 1}} if names else {"f": {"id": i}} for i, n in enumerate(ARMS.names)]
    obj = {"_label_cost": cost, "_label_probability": 0.4, "_label_Action": chosen, "_labelIndex": chosen - 1,
           "o": [{"v": -cost, "EventId": key}], "Timestamp": "2024-05-01T12:00:00.5Z", "Version": "1",
           "EventId": key, "a": [chosen] + [j for j in (1, 2, 3, 4) if j != chosen], "p": [0.4, 0.2, 0.2, 0.2],
           "c": {"user": {"tier": "gold", "age": 31, "tags": [1, 2]}, "domain": "code", "_multi": multi},
           "VWState": {"m": "abc/def"}}
    obj.update(extra)
    return json.dumps(obj)


def test_foreign_dsjson_maps_cost_to_em_and_actions_to_arms(sqlite_url, tmp_path):
    path = tmp_path / "vw.dsjson"
    path.write_text("\n".join([foreign("f1", -1.0, 3, names=True), foreign("f2", -0.25, 1, names=False),
                               foreign("f3", 2.0, 4, names=True), foreign("f4", -1.0, 2, names=True,
                                                                            _skipLearn=True)]) + "\n")
    store = ReplayStore(sqlite_url, migrate_schema=True)
    report = do_import(store, path, "dsjson")
    assert report.error_count == 0 and report.inserted == 4
    assert (report.from_cost, report.clipped, report.decisions_only) == (3, 1, 1)
    events = {e.request_key: e for ch in store.iter_events() for e in ch}
    assert set(events) == {"f1", "f2", "f3"}  # f4 has no outcome (skipLearn)
    f1, f2, f3 = events["f1"], events["f2"], events["f3"]
    assert (f1.arm, f1.em, f1.tokens, f1.lam) == ("balanced", 1.0, 0, 0.0)
    assert (f2.arm, f2.em) == ("full", 0.25)
    assert (f3.arm, f3.em) == ("aggressive", 0.0)  # cost 2 → −2 clipped to 0
    assert f1.propensity == 0.4 and f1.probabilities == {"full": 0.2, "careful": 0.2, "balanced": 0.4,
                                                         "aggressive": 0.2}
    assert f1.features == {"user_tier": "gold", "user_age": 31.0, "domain": "code"} and f1.domain == "code"
    assert f1.policy_version == "abc/def" and f1.ts == pytest.approx(1714564800.5)
    assert store.get_decision("f4") is not None and store.get_outcome("f4") is None
    store.dispose()


def test_foreign_dsjson_without_names_needs_exactly_k_actions(sqlite_url, tmp_path):
    obj = json.loads(foreign("g1", -1.0, 1, names=False))
    obj["c"]["_multi"] = obj["c"]["_multi"][:3]
    obj["a"], obj["p"] = [1, 2, 3], [0.4, 0.3, 0.3]
    path = tmp_path / "three.dsjson"
    path.write_text(json.dumps(obj) + "\n")
    store = ReplayStore(sqlite_url, migrate_schema=True)
    report = do_import(store, path, "dsjson")
    assert report.errors[0].message.startswith("the line has 3 actions without arm names; mapping by index needs "
                                               "exactly the 4 configured arms")
    store.dispose()


def test_unnamed_actions_mapped_by_position_are_counted_and_warned(tmp_path):
    db = f"sqlite:///{tmp_path / 's.db'}"
    path = tmp_path / "vw.dsjson"
    path.write_text("\n".join([foreign("p1", -1.0, 3, names=False), foreign("p2", -1.0, 1, names=True),
                               foreign("p3", -0.5, 2, names=False)]) + "\n")
    res = CliRunner().invoke(replay, ["import", str(path), "--db", db, "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert (rep["inserted"], rep["mapped_by_position"]) == (3, 2)
    [warning] = [w for w in rep["warnings"] if "by position" in w]
    assert warning.startswith("2 line(s) name none of their actions: action j was stored as the j-th configured arm")
    store = ReplayStore(db)
    assert [store.get_decision(k)["arm"] for k in ("p1", "p2", "p3")] == ["balanced", "full", "careful"]
    store.dispose()
    text = CliRunner().invoke(replay, ["import", str(path), "--db", f"sqlite:///{tmp_path / 't.db'}"])
    assert text.exit_code == 0 and "WARNING 2 line(s) name none of their actions" in text.stdout
    named = tmp_path / "named.dsjson"
    named.write_text(foreign("n1", -1.0, 3, names=True) + "\n")
    rep = json.loads(CliRunner().invoke(replay, ["import", str(named), "--db", db, "--json"]).stdout)
    assert (rep["inserted"], rep["mapped_by_position"]) == (1, 0) and not any("position" in w for w in rep["warnings"])


def test_a_line_that_names_only_some_actions_is_refused(tmp_path):
    obj = json.loads(foreign("s1", -1.0, 2, names=True))
    obj["c"]["_multi"][1] = {"f": {"id": 1}}
    obj["c"]["_multi"][3] = {"f": {"id": 3}}
    path = tmp_path / "some.dsjson"
    path.write_text(json.dumps(obj) + "\n")
    [err] = list(read_dsjson(str(path), ARMS, token_scale=1000.0))
    assert isinstance(err, LineError)
    assert err.message.startswith("c._multi names some actions but not action(s) [2, 4]: name every action")


def test_numeric_action_ids_map_by_id_to_the_plain_arms_action_j(tmp_path):
    """VW's cb_simple.json (two unnamed actions) with the plain arms action_1, action_2: by id, no warning."""
    store = ReplayStore(f"sqlite:///{tmp_path / 's.db'}", migrate_schema=True)
    by_id = plain_arms(["action_2", "action_1"])  # the configured order is not the ids' order
    report = _import_vw(store, "cb_simple.json", by_id)
    assert (report.inserted, report.error_count, report.by_position) == (1, 0, 0)
    (event,) = [e for ch in store.iter_events() for e in ch]
    assert event.arm == "action_2" and event.probabilities == {"action_2": 0.5, "action_1": 0.5}
    store.dispose()
    zero_based = plain_arms(["action_0", "action_1"])
    [err] = list(read_dsjson(str(VW_DATA / "cb_simple.json"), zero_based, token_scale=1.0))
    assert isinstance(err, LineError)
    assert "no arm for id(s) [2]; DSJSON action ids are 1-based" in err.message


# --------------------------------------------------------------------------- CSV


def _csv(rows: list[dict], header=("request_id", "features", "domain", "arm", "propensity", "em", "tokens")) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(header), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def test_csv_minimal_columns_spread_the_remaining_probability(sqlite_url, tmp_path):
    path = tmp_path / "min.csv"
    path.write_text(_csv([{"request_id": "c1", "features": '{"len": 2.5, "domain": "math"}', "domain": "math",
                           "arm": "careful", "propensity": "0.7", "em": "1", "tokens": "812"}]))
    store = ReplayStore(sqlite_url, migrate_schema=True)
    report = do_import(store, path, "csv")
    assert report.inserted == 1 and report.error_count == 0
    [[ev]] = list(store.iter_events())
    assert ev.probabilities == pytest.approx({"full": 0.1, "careful": 0.7, "balanced": 0.1, "aggressive": 0.1})
    assert (ev.arm_index, ev.em, ev.tokens, ev.ts, ev.policy_version, ev.lam) == (1, 1.0, 812, NOW, "csv", 0.0)
    store.dispose()


def test_csv_malformed_rows(sqlite_url, tmp_path):
    good = {"request_id": "c1", "features": "{}", "domain": "", "arm": "full", "propensity": "0.5", "em": "1",
            "tokens": "10"}
    rows = [good,
            {**good, "request_id": "c2", "features": "{not json"},
            {**good, "request_id": "c3", "arm": "turbo"},
            {**good, "request_id": "c4", "propensity": "1.5"},
            {**good, "request_id": "c5", "em": "nan"},
            {**good, "request_id": "c6", "tokens": "-3"},
            {**good, "request_id": "c8", "features": '{"a b|c": 1}'}]
    path = tmp_path / "bad.csv"
    text = _csv(rows) + 'c7,"{}",,full\n'  # too few cells
    path.write_text(text)
    store = ReplayStore(sqlite_url, migrate_schema=True)
    report = do_import(store, path, "csv", on_error="skip")
    assert report.inserted == 1
    got = {e.line: e.message for e in report.errors}
    assert sorted(got) == [3, 4, 5, 6, 7, 8, 9]
    assert "column 'features' is not valid JSON" in got[3]
    assert "unknown arm 'turbo'" in got[4]
    assert "column 'propensity' must be in (0, 1]" in got[5]
    assert "column 'em' must be finite" in got[6]
    assert "tokens must be >= 0, got -3" in got[7]
    assert "feature name 'a b|c' must match" in got[8]
    assert "too few cells" in got[9]
    fail = do_import(ReplayStore(sqlite_url), path, "csv", on_error="fail")
    assert not fail.written and store.counts()["decisions"] == 1
    store.dispose()


def test_csv_numbers_no_float_holds_are_the_rows_error_not_a_crash(tmp_path):
    big, huge = "1" + "0" * 400, "9" * 5000  # 10**400; more digits than the interpreter converts
    probs = {"full": 0.5, "careful": 0.2, "balanced": 0.2, "aggressive": 0.1}
    good = {"request_id": "c1", "features": "{}", "domain": "", "arm": "full", "propensity": "0.5",
            "probabilities": json.dumps(probs), "em": "1", "tokens": "10"}
    rows = [good,
            {**good, "request_id": "c2", "features": '{"x": %s}' % huge},
            {**good, "request_id": "c3", "probabilities": json.dumps(probs).replace("0.5", huge)},
            {**good, "request_id": "c4", "probabilities": json.dumps(probs).replace("0.5", big)},
            {**good, "request_id": "c5", "propensity": big}]
    path = tmp_path / "big.csv"
    path.write_text(_csv(rows, header=tuple(good)))
    got = {x.line: getattr(x, "message", None) for x in read_csv(str(path), ARMS, token_scale=1000.0, now=NOW)}
    assert got[2] is None
    assert got[3].startswith("column 'features' is not valid JSON (Exceeds the limit (4300 digits)")
    assert got[4].startswith("column 'probabilities' is not valid JSON (Exceeds the limit (4300 digits)")
    assert "probability of arm 'full' must be a finite number, got an integer of 401 digits" in got[5]
    assert got[6].startswith("column 'propensity' must be finite")


def test_csv_header_must_have_the_required_columns(sqlite_url, tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("request_id,arm\nx,full\n")
    store = ReplayStore(sqlite_url, migrate_schema=True)
    with pytest.raises(InputError, match=r"header lacks required column\(s\) \['features', 'domain', 'propensity', "
                                         r"'em', 'tokens'\]"):
        do_import(store, path, "csv")
    with pytest.raises(ConfigError, match="on_error must be one of"):
        import_events(store, lambda: iter(()), path="x", fmt="csv", on_error="ignore")
    store.dispose()


def test_csv_export_columns(source, tmp_path):
    path = tmp_path / "x.csv"
    export(source, path, "csv")
    rows = list(csv.DictReader(path.open()))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 122
    assert {r["status"] for r in rows} == {"ok", "defaulted", "late"}
    assert not any(math.isnan(float(r["em"])) for r in rows)


def test_vowpal_wabbit_reads_our_export(source, tmp_path):
    """Interop: VW's own --dsjson reader parses every exported line and finds the label where we put it."""
    import vowpalwabbit

    path = tmp_path / "vw.dsjson"
    export(source, path, "dsjson")
    ws = vowpalwabbit.Workspace("--cb_explore_adf --dsjson --chain_hash --quiet")
    try:
        for line in path.read_text().splitlines()[:40]:
            obj = json.loads(line)
            exs = ws.parse(line)
            assert len(exs) == 1 + len(ARMS)  # the shared example and one per action
            chosen = obj["_label_Action"]
            [cost] = exs[chosen].get_label(vowpalwabbit.LabelType.CONTEXTUAL_BANDIT).costs
            assert cost.cost == pytest.approx(obj["_label_cost"], abs=1e-6)
            assert cost.probability == pytest.approx(obj["_label_probability"], rel=1e-6)
            ws.learn(exs)
            ws.finish_example(exs)
    finally:
        ws.finish()


def test_actions_that_are_not_the_arms_tell_the_user_to_pass_config(sqlite_url, tmp_path):
    hint = "pass --config with an [[arms]] table naming them"
    store = ReplayStore(sqlite_url, migrate_schema=True)
    good = {"request_id": "c1", "features": "{}", "domain": "", "arm": "item-7", "propensity": "0.5", "em": "1",
            "tokens": "10"}
    csv_path = tmp_path / "items.csv"
    csv_path.write_text(_csv([good]))
    csv_report = do_import(store, csv_path, "csv")
    assert "unknown arm 'item-7'" in csv_report.errors[0].message and hint in csv_report.errors[0].message
    named = json.loads(foreign("h1", -1.0, 1, names=True))
    named["c"]["_multi"][2] = {"a": {"arm": "item-7"}}
    three = json.loads(foreign("h2", -1.0, 1, names=False))
    three["c"]["_multi"] = three["c"]["_multi"][:3]
    three["a"], three["p"] = [1, 2, 3], [0.4, 0.3, 0.3]
    ds_path = tmp_path / "items.dsjson"
    ds_path.write_text(json.dumps(named) + "\n" + json.dumps(three) + "\n")
    ds_report = do_import(store, ds_path, "dsjson")
    assert [e.line for e in ds_report.errors] == [1, 2]
    assert "unknown arm 'item-7'" in ds_report.errors[0].message
    assert all(hint in e.message for e in ds_report.errors)
    assert store.counts()["decisions"] == 0
    store.dispose()


VW_DATA = __import__("pathlib").Path(__file__).parent.parent / "data" / "vw_dsjson"


def _import_vw(store: ReplayStore, name: str, arms: ArmSet):
    path = VW_DATA / name
    return import_events(store, lambda: read_dsjson(str(path), arms, token_scale=1000.0), path=str(path),
                         fmt="dsjson")


def _em_estimates(store: ReplayStore, arms: ArmSet, arm: str) -> tuple[float, float]:
    from stopbandit.replay.candidates import FixedArm
    from stopbandit.replay.evaluation import evaluate
    from stopbandit.replay.options import ReplayOptions

    ev = evaluate(store, arms, FixedArm(index=arms.names.index(arm), name=arm), ["ips", "snips"], lam=0.0,
                  token_scale=1000.0, options=ReplayOptions(progress=False, jobs=1))
    return ev.estimates["ips"]["em"].value, ev.estimates["snips"]["em"].value


def test_vw_decision_service_log_imports_by_tag_and_estimates_like_a_hand_computation(tmp_path):
    """VW's test/train-sets/dsjson_cb.json (first 4 lines): actions named by _tag, costs −1/0."""
    from stopbandit.bandit.arms import Arm

    coffee = ArmSet((Arm("Cappucino", 0.9, 0), Arm("Cold_brew", 0.8, 0), Arm("Iced_mocha", 0.7, 0),
                     Arm("Latte", 0.6, 0)))
    store = ReplayStore(f"sqlite:///{tmp_path}/coffee.db", migrate_schema=True)
    report = _import_vw(store, "dsjson_cb_head.json", coffee)
    assert (report.lines, report.inserted, report.error_count, report.from_cost) == (4, 4, 0, 4)
    arms_logged = [e.arm for ch in store.iter_events() for e in ch]
    assert arms_logged == ["Latte", "Cappucino", "Cold_brew", "Cappucino"]
    # by hand: lines 2 and 4 chose Cappucino, logged probability 0.85 in "p" (its float32 rounding,
    # 0.8500000238418579, is _label_probability), cost −1 (EM 1); lines 1 and 3 chose other actions:
    # IPS = (1/p + 1/p) / 4, SNIPS = (1/p + 1/p) / (1/p + 1/p)
    w = 1.0 / 0.85
    ips, snips = _em_estimates(store, coffee, "Cappucino")
    assert ips == pytest.approx((w + w) / 4, rel=1e-12, abs=0)
    assert snips == pytest.approx(1.0, rel=1e-12, abs=0)
    ips, snips = _em_estimates(store, coffee, "Latte")  # line 1: Latte, probability 0.05, cost 0
    assert (ips, snips) == (0.0, 0.0)
    store.dispose()


def test_vw_lines_without_timestamp_or_event_id_import_with_a_derived_key(tmp_path):
    """VW's test/train-sets/cb_simple.json: no Timestamp, no EventId, unnamed actions."""
    two = ArmSet((ArmSet(DEFAULT_ARMS)[0], ArmSet(DEFAULT_ARMS)[1]))
    store = ReplayStore(f"sqlite:///{tmp_path}/simple.db", migrate_schema=True)
    report = _import_vw(store, "cb_simple.json", two)
    assert (report.inserted, report.error_count, report.by_position) == (1, 0, 1)  # unnamed: by position, warned
    (event,) = [e for ch in store.iter_events() for e in ch]
    assert event.request_key.startswith("dsjson-1-") and event.ts == 1.0 and event.arm == two.names[1]
    again = _import_vw(store, "cb_simple.json", two)
    assert (again.inserted, again.duplicates, again.error_count) == (0, 1, 0)
    ips, snips = _em_estimates(store, two, two.names[1])  # chose action 2 with probability 0.5, cost −1
    assert (ips, snips) == (pytest.approx(2.0, rel=1e-12), pytest.approx(1.0, rel=1e-12))
    store.dispose()


def test_vw_ccb_lines_get_one_not_supported_message(tmp_path):
    store = ReplayStore(f"sqlite:///{tmp_path}/ccb.db", migrate_schema=True)
    report = _import_vw(store, "ccb_simple.json", ARMS)
    assert report.error_count == 1 and report.inserted == 0
    assert report.errors[0].message.startswith("not supported: CCB")
    store.dispose()


def test_a_slates_line_gets_the_same_one_message(tmp_path):
    """A slates line (c._slots with a label, no _outcomes): one message, not one per missing field."""
    line = {"_label_cost": -1.0, "c": {"shared": {"f": 1}, "_multi": [{"a": {"f": 1}}, {"a": {"f": 2}}],
                                       "_slots": [{"_inc": [0, 1]}]}}
    path = tmp_path / "slates.json"
    path.write_text(json.dumps(line) + "\n")
    [err] = list(read_dsjson(str(path), ARMS, token_scale=1000.0))
    assert isinstance(err, LineError)
    assert err.message.startswith("not supported: CCB") and "c._slots" in err.message and "missing" not in err.message
