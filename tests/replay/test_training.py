"""Counterfactual training: the time split, nested-feedback learning, the held-out report, the snapshot."""

from __future__ import annotations

import numpy as np
import pytest

from stopbandit.bandit.arms import DEFAULT_ARMS, ArmSet
from stopbandit.bandit.exploration import SquareCB
from stopbandit.errors import ConfigError, InputError
from stopbandit.features.extract import FeatureConfig
from stopbandit.replay.candidates import HeadsModel
from stopbandit.replay.logreader import LogReader
from stopbandit.replay.options import ReplayOptions
from stopbandit.replay.store import ReplayStore
from stopbandit.replay.training import IW_CLIP, time_split, train_and_evaluate, train_heads
from stopbandit.serving.selector import Selector
from tests.replay.test_logged import add_status_events, make_log

ARMS = ArmSet(DEFAULT_ARMS)


@pytest.fixture
def store(sqlite_url):
    make_log(sqlite_url, 400, snapshot=False)
    s = ReplayStore(sqlite_url)
    yield s
    s.dispose()


def _decision_ts(store: ReplayStore) -> np.ndarray:
    return np.sort([e.ts for ch in store.iter_events() for e in ch])


def test_split_by_fraction_and_by_time(store):
    ts = _decision_ts(store)
    split = time_split(store, test_frac=0.25)
    assert (split.n_train, split.n_test) == (300, 100)
    assert split.cutoff == ts[300] and split.how == "test-frac 0.25"
    default = time_split(store)
    assert (default.n_train, default.n_test) == (320, 80)
    by_time = time_split(store, since=float(ts[150]))
    assert (by_time.n_train, by_time.n_test, by_time.how) == (150, 250, "since")
    assert by_time.to_dict()["cutoff_iso"].endswith("Z")


@pytest.mark.parametrize(("kwargs", "err", "match"), [
    ({"test_frac": 1.0}, ConfigError, r"test_frac must be a number in \(0, 1\), got 1.0"),
    ({"test_frac": 0}, ConfigError, r"test_frac must be a number in \(0, 1\)"),
    ({"since": 0.0}, InputError, "no events before the split"),
    ({"since": 4e9}, InputError, "no events at or after the split"),
    ({"since": 1.0, "test_frac": 0.2}, ConfigError, "give either --since"),
])
def test_split_errors(store, kwargs, err, match):
    with pytest.raises(err, match=match):
        time_split(store, **kwargs)


def test_training_learns_every_revealed_arm(store):
    policy, stats = train_heads(store, ARMS, exploration=SquareCB(), token_scale=1000.0, options=ReplayOptions(progress=False))
    assert stats.learned == 400 and stats.traced == 320 and policy.t == 400
    assert stats.revealed_updates > stats.learned  # traces reveal stricter arms
    # the heads learned something sensible: a stricter arm is predicted to spend fewer tokens
    [batch] = list(LogReader(store, ARMS).batches())
    model = HeadsModel(policy, "test")
    em_hat, tok_hat = model.predict(batch)
    assert (tok_hat[:, 0] > tok_hat[:, 3]).mean() > 0.9
    assert ((em_hat >= 0) & (em_hat <= 1)).all()
    policy.close()


def test_importance_weighting_changes_the_fit(store):
    plain, _ = train_heads(store, ARMS, exploration=SquareCB(), token_scale=1000.0, options=ReplayOptions(progress=False))
    weighted, stats = train_heads(store, ARMS, exploration=SquareCB(), token_scale=1000.0,
                                  importance_weighting=True, options=ReplayOptions(progress=False))
    assert stats.importance_weighting and weighted.t == 400 and IW_CLIP > 1
    [batch] = list(LogReader(store, ARMS).batches())
    a = HeadsModel(plain, "a").predict(batch)[1]
    b = HeadsModel(weighted, "b").predict(batch)[1]
    assert not np.allclose(a, b)
    plain.close()
    weighted.close()


def test_train_and_evaluate_reports_held_out_estimates_and_saves_a_loadable_snapshot(store, sqlite_url):
    add_status_events(store, ["defaulted"], prefix="zz")  # newest event, defaulted: counted, not used
    split = time_split(store, test_frac=0.25)
    report = train_and_evaluate(store, ARMS, exploration=SquareCB(), lam=0.2, token_scale=1000.0,
                                feature_config=FeatureConfig().to_dict(), split=split, options=ReplayOptions(progress=False))
    assert report.saved and store.latest_snapshot_version() == report.version
    assert report.train.learned == split.n_train
    assert report.test_counts.used == split.n_test - 1 and report.test_counts.defaulted == 1
    held_out = [e for ch in store.iter_events(since_ts=split.cutoff) for e in ch if e.status == "ok"]
    assert report.logging["em"].value == pytest.approx(np.mean([e.em for e in held_out]))
    assert report.logging["tokens"].value == pytest.approx(np.mean([e.tokens for e in held_out]))
    for name in ("dr", "snips"):
        for metric in ("em", "tokens", "reward"):
            est = report.candidate[name][metric]
            assert est.n == split.n_test - 1 and est.ci_low <= est.value <= est.ci_high
    rew = report.candidate["dr"]["reward"]
    assert rew.value == pytest.approx(report.candidate["dr"]["em"].value - 0.2 * report.candidate["dr"]["tokens"].value
                                      / 1000.0)
    d = report.to_dict()
    assert d["snapshot"] == report.version and d["split"]["n_test"] == split.n_test
    # a serving Selector loads the new snapshot
    sel = Selector.open(sqlite_url, follow=False)
    assert sel.policy_version == report.version
    sel.close()


def test_dry_run_saves_nothing(store):
    split = time_split(store)
    report = train_and_evaluate(store, ARMS, exploration=SquareCB(), lam=0.2, token_scale=1000.0,
                                feature_config=FeatureConfig().to_dict(), split=split, save=False,
                                options=ReplayOptions(progress=False))
    assert not report.saved and store.latest_snapshot_version() is None
    assert report.candidate["dr"]["em"].n == split.n_test


def test_training_on_postgres(db_url):
    make_log(db_url, 120, snapshot=False)
    store = ReplayStore(db_url)
    split = time_split(store, test_frac=0.5)
    report = train_and_evaluate(store, ARMS, exploration=SquareCB(), lam=0.3, token_scale=1000.0,
                                feature_config=FeatureConfig().to_dict(), split=split, options=ReplayOptions(progress=False))
    assert report.train.learned == 60 and report.candidate["snips"]["em"].n == 60
    assert store.get_snapshot(report.version) is not None
    store.dispose()


def test_training_equals_learning_the_log_one_event_at_a_time(store):
    """train_heads (batched lines, one learn_revealed per event) = the plain per-event loop, float for float."""
    import math

    from stopbandit.bandit.policy import HeadsPolicy
    from stopbandit.bandit.vw import shared_line

    trained, stats = train_heads(store, ARMS, exploration=SquareCB(), token_scale=1000.0,
                             options=ReplayOptions(progress=False, chunk=70))
    ref = HeadsPolicy(ARMS, SquareCB(), 1000.0)
    lines = []
    for b in LogReader(store, ARMS, ReplayOptions(chunk=70)).batches():
        for i, feats in enumerate(b.features()):
            a = int(b.actions[i])
            outcomes = {}
            if b.revealed_em is not None:
                outcomes = {k: (float(b.revealed_em[i, k]), int(b.revealed_tokens[i, k])) for k in range(len(ARMS))
                            if not math.isnan(b.revealed_em[i, k])}
            outcomes[a] = (float(b.em[i]), int(b.tokens[i]))
            line = shared_line(feats)
            lines.append(line)
            if len(outcomes) > 1:
                ref.learn_revealed(line, outcomes, a, float(b.logging_probs[i, a]), 0.0)
            else:
                ref.learn(line, a, *outcomes[a], float(b.logging_probs[i, a]), 0.0)
    assert stats.learned == ref.t == trained.t == 400
    for got, want in zip(trained.predict_heads_batch(lines), ref.predict_heads_batch(lines)):
        assert got.tolist() == want.tolist()
    trained.close()
    ref.close()
