"""The store remembers its arms (migration 0007): evaluate and export need no --config; plain and numeric arms."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect

from stopbandit.bandit.arms import ArmSet, plain_arms
from stopbandit.errors import ConfigError, InputError
from stopbandit.replay import migrate
from stopbandit.replay.cli_commands import replay
from stopbandit.replay.csvlog import read_csv
from stopbandit.replay.engine import make_engine
from stopbandit.replay.interchange import import_events
from stopbandit.replay.store import ReplayStore

ITEMS = ["item_a", "item_b", "item_c"]


def invoke(*args: str, ok: bool = True):
    result = CliRunner().invoke(replay, list(args))
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def _config(tmp_path, names) -> str:
    path = tmp_path / "items.toml"
    path.write_text("".join(f'[[arms]]\nname = "{n}"\nplain = true\n\n' for n in names))
    return str(path)


def _log(tmp_path, arm_cells, name="items.csv") -> str:
    path = tmp_path / name
    lines = ["request_id,features,domain,arm,propensity,em,tokens"]
    for i, arm in enumerate(arm_cells):
        lines.append(f'r{i},"{{""x"": {i % 3}.5}}",,{arm},{1 / 3!r},{i % 2},0')
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_plain_arms_reveal_nothing_and_are_refused_with_a_stopping_rule():
    arms = ArmSet.of([{"name": "a", "plain": True}, {"name": "b", "plain": True}, {"name": "full", "threshold": 1.01}])
    assert arms.reveals() == ((0,), (1,), (2,))
    assert arms.to_list()[0] == {"name": "a", "plain": True}
    assert ArmSet.of(arms.to_list()) == arms
    with pytest.raises(ConfigError, match="a plain arm has no stopping rule"):
        ArmSet.of([{"name": "a", "plain": True, "max_think_tokens": 5}, {"name": "b", "plain": True}])


def test_imported_arms_are_the_stores_and_evaluate_and_export_need_no_config(tmp_path):
    db = f"sqlite:///{tmp_path / 's.db'}"
    log = _log(tmp_path, [ITEMS[i % 3] for i in range(30)])
    rep = json.loads(invoke("import", log, "--db", db, "--config", _config(tmp_path, ITEMS), "--json").stdout)
    assert rep["inserted"] == 30
    store = ReplayStore(db)
    assert store.arms() == plain_arms(ITEMS)
    store.dispose()
    out = json.loads(invoke("evaluate", "--db", db, "--policy", "arm:item_b", "--estimators", "ips,snips",
                            "--json").stdout)
    assert out["notes"]["arms_from"] == "store"
    assert out["estimates"]["ips"]["em"]["n"] == 30
    # hand computation: the log picks item_b on rows 1, 4, …, 28 (10 rows) with propensity 1/3
    em_b = [i % 2 for i in range(30) if i % 3 == 1]
    assert out["estimates"]["ips"]["em"]["value"] == pytest.approx(sum(em_b) * 3 / 30, rel=1e-12)
    assert out["estimates"]["snips"]["em"]["value"] == pytest.approx(sum(em_b) / len(em_b), rel=1e-12)
    exported = tmp_path / "back.dsjson"
    summary = json.loads(invoke("export", "--db", db, "--out", str(exported), "--json").stdout)
    assert summary["arms"] == ITEMS and summary["events"] == 30
    # the same file again, without --config: the store's arms map it, nothing new
    again = json.loads(invoke("import", log, "--db", db, "--json").stdout)
    assert (again["inserted"], again["duplicates"], again["errors"]) == (0, 30, 0)


def test_an_import_with_other_arms_than_the_stores_is_refused_and_writes_nothing(tmp_path):
    db = f"sqlite:///{tmp_path / 's.db'}"
    migrate.upgrade(db)
    store = ReplayStore(db)
    assert import_events(store, lambda: read_csv(_log(tmp_path, ITEMS * 2), plain_arms(ITEMS), token_scale=1.0),
                         path="x", fmt="csv", arms=plain_arms(ITEMS)).inserted == 6
    other = plain_arms(["item_a", "item_b", "item_z"])
    with pytest.raises(InputError, match=r"logged with the arms \['item_a', 'item_b', 'item_c'\].*this import maps "
                                         r"to \['item_a', 'item_b', 'item_z'\]"):
        import_events(store, lambda: read_csv(_log(tmp_path, ["item_z"] * 3, "z.csv"), other, token_scale=1.0),
                      path="z", fmt="csv", arms=other)
    assert store.counts()["decisions"] == 6 and store.arms() == plain_arms(ITEMS)
    store.dispose()


def test_numeric_action_ids_map_to_their_plain_arms(tmp_path):
    db = f"sqlite:///{tmp_path / 's.db'}"
    names = ["action_0", "action_1", "action_2"]
    log = _log(tmp_path, ["0", "1", "2", "2", "7"])
    res = invoke("import", log, "--db", db, "--config", _config(tmp_path, names), "--json", ok=False)
    rep = json.loads(res.stdout)
    assert rep["inserted"] == 4 and rep["errors"] == 1
    assert "unknown arm '7'" in rep["error_lines"][0]["error"]
    assert "a numeric action id N is the plain arm action_N" in rep["error_lines"][0]["error"]
    store = ReplayStore(db)
    assert [e.arm for ch in store.iter_events() for e in ch] == ["action_0", "action_1", "action_2", "action_2"]
    store.dispose()


def test_a_serving_selectors_log_is_evaluated_with_its_arms_without_config(tmp_path):
    """No import recorded the arms and no serving snapshot exists: the Selector's checkpoint carries them."""
    from stopbandit import Selector

    db = f"sqlite:///{tmp_path / 's.db'}"
    arms = ArmSet.of([{"name": "lo", "threshold": 0.8}, {"name": "hi", "threshold": 0.95}])
    sel = Selector.open(db, arms=arms, seed=1, follow=False)
    for i in range(40):
        dec = sel.choose("what is 2+2?", domain="math", request_id=f"r{i}")
        sel.reward(dec.decision_id, em=float(i % 3 == 0), tokens=100)
    sel.close()
    store = ReplayStore(db)
    assert store.arms() is None and store.get_snapshot("latest") is None
    [(checkpoint, _, _)] = store.list_snapshots()
    events = [e for ch in store.iter_events() for e in ch]
    store.dispose()
    out = json.loads(invoke("evaluate", "--db", db, "--policy", "arm:hi", "--estimators", "ips", "--lam", "0",
                            "--json", "--no-progress").stdout)
    assert out["arms"] == ["lo", "hi"] and out["notes"]["arms_from"] == f"snapshot {checkpoint}"
    by_hand = sum(e.em / e.propensity for e in events if e.arm == "hi") / len(events)
    assert by_hand > 0
    assert out["estimates"]["ips"]["em"]["value"] == pytest.approx(by_hand, rel=1e-12)
    summary = json.loads(invoke("export", "--db", db, "--out", str(tmp_path / "log.dsjson"), "--json").stdout)
    assert summary["arms"] == ["lo", "hi"] and summary["events"] == 40


def test_0007_adds_and_drops_the_arm_table(db_url):
    migrate.upgrade(db_url, "0006")
    engine = make_engine(db_url)
    assert "store_arms" not in inspect(engine).get_table_names()
    migrate.upgrade(db_url)
    assert "store_arms" in inspect(engine).get_table_names()
    store = ReplayStore(db_url)
    store.record_arms(plain_arms(ITEMS))
    assert store.arms() == plain_arms(ITEMS)
    store.dispose()
    migrate.downgrade(db_url, "0006")
    assert "store_arms" not in inspect(engine).get_table_names()
    migrate.upgrade(db_url)
    engine.dispose()
