"""DM's EM model as a calibrated probability: Platt recalibration, Brier score and reliability table."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from stopbandit.replay.calibration import BINS, CalibrationAcc, apply, fit_platt
from stopbandit.replay.candidates import HeadsModel
from stopbandit.replay.cli_commands import replay
from stopbandit.replay.logreader import LogReader
from stopbandit.replay.options import ReplayOptions
from stopbandit.replay.store import ReplayStore

NAMES = ["full", "careful", "balanced", "aggressive"]
T0 = 1_000_000_000.0


def test_platt_recovers_a_known_miscalibration():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.01, 0.6, size=200_000)
    logit = np.log(p) - np.log1p(-p)
    y = (rng.random(p.size) < 1.0 / (1.0 + np.exp(-(0.7 * logit - 1.5)))).astype(float)
    fit = fit_platt(p, y)
    assert fit["method"] == "platt" and fit["n"] == p.size
    assert fit["a"] == pytest.approx(0.7, abs=0.03) and fit["b"] == pytest.approx(-1.5, abs=0.06)
    # the recalibrated mean matches the outcomes' (the intercept's score equation)
    assert float(apply(p, fit).mean()) == pytest.approx(float(y.mean()), rel=1e-6)


def test_brier_and_reliability_table_by_hand_and_merged_exactly():
    p = np.array([0.05, 0.05, 0.15, 0.95, 1.0, 0.55])
    y = np.array([0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    whole = CalibrationAcc.of(p, y).report()
    assert whole["events"] == 6
    assert whole["brier"] == pytest.approx(np.mean((p - y) ** 2), rel=1e-15)
    rows = whole["reliability"]
    assert len(rows) == BINS and [r["events"] for r in rows] == [2, 1, 0, 0, 0, 1, 0, 0, 0, 2]
    assert rows[0]["mean_prediction"] == pytest.approx(0.05) and rows[0]["mean_em"] == 0.5
    assert rows[9]["mean_prediction"] == pytest.approx(0.975) and rows[9]["mean_em"] == 1.0
    assert rows[2]["mean_prediction"] is None
    merged = CalibrationAcc.of(p[:3], y[:3]).merge(CalibrationAcc.of(p[3:], y[3:])).report()
    assert merged["events"] == whole["events"] and merged["brier"] == pytest.approx(whole["brier"], rel=1e-15)


@pytest.fixture
def sparse_store(tmp_path):
    """A uniform-random log over the four arms whose EM is a rare event (about 1 %), imported from CSV."""
    rng = np.random.default_rng(5)
    lines = ["request_id,ts,features,domain,arm,propensity,em,tokens"]
    for i in range(3000):
        x = float(rng.random())
        a = int(rng.integers(4))
        em = int(rng.random() < 0.004 * (1 + 2 * x) * (1 + 0.5 * a))
        lines.append(f'r{i},{T0 + i},"{{""x"": {x!r}}}",math,{NAMES[a]},0.25,{em},100')
    path = tmp_path / "sparse.csv"
    path.write_text("\n".join(lines) + "\n")
    db = f"sqlite:///{tmp_path / 's.db'}"
    res = CliRunner().invoke(replay, ["import", str(path), "--db", db, "--json"])
    assert res.exit_code == 0, res.output
    return db


def _invoke(*args: str) -> dict:
    res = CliRunner().invoke(replay, [*args, "--json", "--no-progress"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return json.loads(res.stdout)


def test_train_fits_the_recalibration_and_dm_uses_it(sparse_store):
    db = sparse_store
    rep = _invoke("train", "--db", db, "--lam", "0", "--jobs", "1")
    cal = rep["calibration"]
    assert cal["fit"]["method"] == "platt" and cal["fit"]["n"] == rep["split"]["n_train"] == 2400
    held = cal["held_out"]
    assert set(held) == {"model", "raw"} and held["model"]["events"] == held["raw"]["events"] == 600
    store = ReplayStore(db)
    model = HeadsModel.load(store, rep["snapshot"])
    assert model.calibration == cal["fit"]
    # the held-out Brier score of the calibrated heads, by hand from the stored snapshot
    reader = LogReader(store, model.arms, ReplayOptions(since=rep["split"]["cutoff"], progress=False, jobs=1))
    p, y, dm = [], [], []
    for batch in reader.batches():
        em_hat, _ = model.calibrated(model.predict(batch))
        p.append(em_hat[np.arange(batch.n), batch.actions])
        y.append(batch.em)
        dm.append(em_hat.mean(axis=1))  # the uniform logging policy: DM = mean over arms
    p, y, dm = np.concatenate(p), np.concatenate(y), np.concatenate(dm)
    assert held["model"]["brier"] == pytest.approx(float(np.mean((p - y) ** 2)), rel=1e-9)
    assert held["model"]["mean_prediction"] == pytest.approx(float(p.mean()), rel=1e-9)
    # evaluate: DM of the logging policy uses the calibrated heads, and reports their reliability
    ev = _invoke("evaluate", "--db", db, "--lam", "0", "--policy", "logging", "--estimators", "dm,ips",
                 "--since", repr(rep["split"]["cutoff"]), "--jobs", "1")
    assert ev["estimates"]["dm"]["em"]["value"] == pytest.approx(float(dm.mean()), rel=1e-9)
    assert ev["calibration"]["model"]["brier"] == pytest.approx(held["model"]["brier"], rel=1e-12)
    assert ev["calibration"]["raw"]["events"] == 600
    # the logging policy's true EM rate: E[0.004·(1 + 2x)·(1 + a/2)] over x ~ U(0, 1), a uniform on 0..3
    truth = 0.004 * 2.0 * 1.75
    assert truth / 2 < ev["estimates"]["dm"]["em"]["value"] < 2 * truth
    store.dispose()


def test_train_prints_the_reliability_tables_and_brier_scores(sparse_store):
    """The command line's report (no --json): both Brier scores and reliability tables, by hand from the snapshot."""
    db = sparse_store
    res = CliRunner().invoke(replay, ["train", "--db", db, "--lam", "0", "--jobs", "1", "--no-progress"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    text = " ".join(res.stdout.split())  # the console wraps long titles
    assert "split at 2001-09-09T02:26:40.000000Z" in text  # T0 + 2400: the newer 600 events are held out
    store = ReplayStore(db)
    model = HeadsModel.load(store, re.search(r"saved snapshot (\S+)", text).group(1))
    reader = LogReader(store, model.arms, ReplayOptions(since=T0 + 2400, progress=False, jobs=1))
    raw, cal, y = [], [], []
    for batch in reader.batches():
        pred = model.predict(batch)
        rows = np.arange(batch.n)
        raw.append(pred[0][rows, batch.actions])
        cal.append(model.calibrated(pred)[0][rows, batch.actions])
        y.append(batch.em)
    raw, cal, y = np.concatenate(raw), np.concatenate(cal), np.concatenate(y)
    assert y.size == 600
    for label, p in (("heads, uncalibrated", raw), ("calibrated", cal)):
        title = (f"logged arm ({label}): Brier {np.mean((p - y) ** 2):.5f}, mean P {p.mean():.4f} vs "
                 f"mean EM {y.mean():.4f}")
        assert title in text, (title, text)
        # the reliability table: one row per bin with events (here every P lies below 0.1)
        assert p.max() < 0.1
        assert f"│ [0.0, 0.1) │ 600 │ {p.mean():.4f} │ {y.mean():.4f} │" in text
    assert "EM recalibration (Platt, fitted on 2,400 training events)" in text
    store.dispose()
