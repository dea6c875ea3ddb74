"""Parquet export and evaluation of its partitions (locally and on a local Ray cluster): the store's floats."""

from __future__ import annotations

import json
import os
import sys

import pytest
from click.testing import CliRunner

from stopbandit.bandit.arms import arms_from_config
from stopbandit.errors import ConfigError
from stopbandit.replay import migrate
from stopbandit.replay.candidates import CandidateContext, default_model, make_candidate
from stopbandit.replay.cli_commands import replay
from stopbandit.replay.csvlog import read_csv
from stopbandit.replay.evaluation import evaluate, evaluate_parquet
from stopbandit.replay.interchange import import_events
from stopbandit.replay.options import ReplayOptions
from stopbandit.replay.parquet import export_parquet, parquet_arms, partitions
from stopbandit.replay.store import ReplayStore
from tests.replay.test_logged import add_status_events, make_log

pa = pytest.importorskip("pyarrow")

ALL = ["ips", "snips", "dr", "dm", "switch-dr", "graph-ips", "graph-dr"]


def _same(a, b) -> None:
    """Every estimate and count of two evaluations, float for float."""
    assert a.counts.to_dict() == b.counts.to_dict()
    assert set(a.estimates) == set(b.estimates)
    for name, by_metric in a.estimates.items():
        for metric, est in by_metric.items():
            assert est.to_dict() == b.estimates[name][metric].to_dict(), (name, metric)
    for metric, est in a.logging.items():
        assert est.to_dict() == b.logging[metric].to_dict()
    assert a.calibration == b.calibration


def test_partitions_evaluate_to_the_stores_floats_with_a_model_and_traces(sqlite_url, tmp_path):
    make_log(sqlite_url, 400, snapshot=True)
    store = ReplayStore(sqlite_url)
    add_status_events(store, ["defaulted", "late"])
    arms = arms_from_config(None)
    out = str(tmp_path / "log.parquet")
    summary = export_parquet(store, out, arms, span=97)
    assert summary["events"] == 402 and len(summary["files"]) == len(partitions(out)) == 5
    assert parquet_arms(partitions(out)[0]) == arms
    cand = make_candidate("latest", CandidateContext(store, arms, 0.2, False))
    model = default_model(store, arms, cand)
    opts = ReplayOptions(progress=False, jobs=1, chunk=64, include=("ok", "late"))
    ref = evaluate(store, arms, cand, ALL, lam=0.2, token_scale=1000.0, model=model, options=opts, partition_ids=97)
    got = evaluate_parquet(out, None, cand, ALL, lam=0.2, token_scale=1000.0, model=model, options=opts,
                           engine="local")
    _same(ref, got)
    assert ref.estimates["graph-dr"]["em"].n == 401
    with pytest.raises(ConfigError, match="exists"):
        export_parquet(store, out, arms)
    store.dispose()


def _synthetic_store(tmp_path, rows: int) -> str:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
    from import_speed import write_csv

    arms = arms_from_config(None)
    path = str(tmp_path / "log.csv")
    write_csv(path, rows, 11, arms.names)
    url = f"sqlite:///{tmp_path / 'big.db'}"
    migrate.upgrade(url)
    store = ReplayStore(url)
    report = import_events(store, lambda: read_csv(path, arms, token_scale=1000.0), path=path, fmt="csv", arms=arms)
    assert report.inserted == rows
    store.dispose()
    return url


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ray_cluster_of_two_workers_gives_the_stores_floats_on_200k_events(tmp_path):
    ray = pytest.importorskip("ray")
    url = _synthetic_store(tmp_path, 200_000)
    out = str(tmp_path / "parts")
    res = CliRunner().invoke(replay, ["export", "--db", url, "--format", "parquet", "--out", out, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["files"] == [f"part-{i:05d}.parquet" for i in range(4)]
    store = ReplayStore(url)
    arms = arms_from_config(None)
    cand = make_candidate("uniform", CandidateContext(store, arms, 0.2, False))
    opts = ReplayOptions(progress=False, jobs=1)
    ref = evaluate(store, arms, cand, ["ips", "snips"], lam=0.2, token_scale=1000.0, options=opts)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        assert ray.cluster_resources().get("CPU") == 2.0
        got = evaluate_parquet(out, None, cand, ["ips", "snips"], lam=0.2, token_scale=1000.0, options=opts,
                               engine="ray", workers=2)
    finally:
        ray.shutdown()
    _same(ref, got)
    assert got.counts.used == 200_000 and got.notes == {"engine": "ray", "partitions": "4"}
    store.dispose()


def test_cli_export_and_evaluate_parquet_locally(sqlite_url, tmp_path):
    make_log(sqlite_url, 150, snapshot=False)
    out = str(tmp_path / "p")
    res = CliRunner().invoke(replay, ["export", "--db", sqlite_url, "--format", "parquet", "--out", out, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["events"] == 150 and not os.path.exists(out + ".partial")
    args = ["--policy", "arm:careful", "--estimators", "ips,snips,graph-ips", "--lam", "0.2", "--json"]
    res = CliRunner().invoke(replay, ["evaluate-parquet", out, "--engine", "local", "--token-scale", "1000", *args])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    res = CliRunner().invoke(replay, ["evaluate", "--db", sqlite_url, "--jobs", "1", "--no-progress", *args])
    ref = json.loads(res.stdout)
    assert got["estimates"] == ref["estimates"] and got["counts"] == ref["counts"]
    res = CliRunner().invoke(replay, ["evaluate-parquet", out, "--policy", "latest", "--engine", "local"])
    assert res.exit_code == 2 and "need --db" in res.stderr
    res = CliRunner().invoke(replay, ["export", "--db", sqlite_url, "--format", "parquet", "--out", out])
    assert res.exit_code == 2 and "exists" in res.stderr
