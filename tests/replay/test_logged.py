"""Store events → LoggedData: hand-built equality, revealed outcomes, statuses, streaming, candidates."""

from __future__ import annotations

import doctest
import math
import time

import numpy as np
import pytest

from stopbandit.bandit.arms import DEFAULT_ARMS, Arm, ArmSet
from stopbandit.serving.selector import Selector
from stopbandit.bandit.trace import ProbeTrace, counterfactual, em_of
from stopbandit.errors import ConfigError, InputError
from stopbandit.replay import times as times_mod
from stopbandit.replay.candidates import (
    CandidateContext,
    FixedArm,
    HeadsCandidate,
    HeadsModel,
    LoggingCandidate,
    UniformCandidate,
    make_candidate,
)
from stopbandit.replay.evaluation import evaluate, sweep_log
from stopbandit.replay.logreader import LogReader
from stopbandit.replay.options import ReplayOptions
from stopbandit.replay.reveal import reveal_row, reveal_rows
from stopbandit.replay.runner import Target, run_targets
from stopbandit.replay.times import parse_time
from stopbandit.replay.ope import ESTIMATORS, LoggedData, Metric, make_estimator, reveal_matrix
from stopbandit.replay.store import ReplayStore, outcome_row
from stopbandit.replay.sweep import lenience_rank
from tests.replay.reference_sweep import fixed_arm_estimates, sweep
from stopbandit.sim import SimConfig, Simulator, run

ARMS = ArmSet(DEFAULT_ARMS)


def make_log(url: str, n: int = 300, *, seed: int = 0, untraced_every: int = 5, snapshot: bool = True,
             lam: float = 0.2) -> str | None:
    """Simulated traffic through a real Selector; every ``untraced_every``-th reward has no trace."""
    sel = Selector.open(url, lam=lam, token_scale=1000, seed=seed, follow=False, snapshot=None)
    try:
        for i, req in enumerate(Simulator(seed=seed).stream(n)):
            d = sel.choose(req.prompt, domain=req.domain, request_id=req.request_id)
            out = run(req, d.arm)
            if untraced_every and i % untraced_every == 0:
                sel.reward(d.decision_id, em=out.em, tokens=out.tokens)
            else:
                sel.reward(d.decision_id, em=out.em, tokens=out.tokens, trace=out.trace, reference=req.reference)
        assert sel.flush(30)
        return sel.snapshot() if snapshot else None
    finally:
        sel.close()


def add_status_events(store: ReplayStore, statuses: list[str], prefix: str = "x") -> None:
    """Events with non-ok statuses (defaulted / late rewards), written straight to the store."""
    decisions, outcomes = [], []
    for i, status in enumerate(statuses):
        key = f"{prefix}{i}"
        decisions.append(dict(
            request_key=key, ts=time.time(), domain="math", features={"len": 2.0, "domain": "math"},
            arm="balanced", arm_index=2, probabilities={"full": 0.1, "careful": 0.2, "balanced": 0.6, "aggressive": 0.1},
            propensity=0.6, lam=0.2, token_scale=1000.0, policy_version="v0", experiment="champion"))
        outcomes.append(outcome_row(key, 0.0, 0, status=status))
    store.write_batch(decisions, outcomes)


@pytest.fixture
def log(sqlite_url):
    version = make_log(sqlite_url)
    store = ReplayStore(sqlite_url)
    yield store, version
    store.dispose()


def collect(reader: LogReader):
    batches = list(reader.batches())
    return batches, {f: np.concatenate([getattr(b, f) for b in batches]) for f in
                     ("actions", "logging_probs", "em", "tokens", "ts")}


# --------------------------------------------------------------------------- hand-built equality


def test_logged_data_equals_hand_built_arrays(log):
    store, _ = log
    events = [e for chunk in store.iter_events() for e in chunk]
    assert len(events) == 300
    batches, got = collect(LogReader(store, ARMS, ReplayOptions(chunk=64)))
    assert [b.n for b in batches] == [64, 64, 64, 64, 44]
    names = ARMS.names
    np.testing.assert_array_equal(got["actions"], [e.arm_index for e in events])
    np.testing.assert_array_equal(got["logging_probs"], [[e.probabilities[n] for n in names] for e in events])
    np.testing.assert_array_equal(got["em"], [e.em for e in events])
    np.testing.assert_array_equal(got["tokens"], [e.tokens for e in events])
    np.testing.assert_array_equal(got["logging_probs"][np.arange(300), got["actions"]], [e.propensity for e in events])
    keys = [k for b in batches for k in b.keys]
    assert keys == [e.request_key for e in events]
    data = batches[0].logged_data()
    assert isinstance(data, LoggedData) and data.n == 64
    np.testing.assert_array_equal(data.candidate_probs, data.logging_probs)


def test_revealed_arrays_equal_counterfactual_on_the_traces(log):
    store, _ = log
    events = [e for chunk in store.iter_events() for e in chunk]
    batches, _ = collect(LogReader(store, ARMS, ReplayOptions(chunk=50)))
    rem = np.concatenate([b.revealed_em for b in batches])
    rtok = np.concatenate([b.revealed_tokens for b in batches])
    traced = 0
    for i, ev in enumerate(events):
        if ev.trace is None or ev.reference_key is None:
            assert np.isnan(rem[i]).all() and np.isnan(rtok[i]).all()
            continue
        traced += 1
        trace = ProbeTrace.from_json(ev.trace)
        for k, arm in enumerate(ARMS):
            if k == ev.arm_index:  # the logged arm carries the logged outcome
                assert (rem[i, k], rtok[i, k]) == (ev.em, ev.tokens)
            cf = counterfactual(trace, arm)
            if cf is None:
                assert math.isnan(rem[i, k]) or k == ev.arm_index
            else:
                assert rem[i, k] == em_of(cf.answer, ev.reference_key)
                assert rtok[i, k] == cf.tokens
    assert traced == 240
    counts = sum((b.revealed_em is not None and (~np.isnan(b.revealed_em).all(axis=1)).sum() or 0) for b in batches)
    assert counts == 240


def test_em_of_works_with_a_reference_key():
    from stopbandit.bandit.trace import answer_key

    assert em_of(answer_key(" 42 "), answer_key("42")) == 1.0
    assert em_of(answer_key("41"), answer_key("42")) == 0.0


def test_reveal_row_equals_counterfactual_on_simulated_traces():
    extra = (Arm("cap64", 0.5, 64), Arm("cap100", 0.75, 100), Arm("cap200", 0.97, 200), Arm("cap512", 1.01, 512),
             Arm("t050", 0.5, 0), Arm("t099_cap2048", 0.99, 2048), Arm("cap1", 0.9, 1))
    arms = DEFAULT_ARMS + extra
    requests = Simulator(seed=5).take(600) + Simulator(SimConfig(min_think_tokens=1), seed=6).take(150)
    checked = revealed = 0
    for req in requests:
        for logged in arms:
            trace = run(req, logged).trace
            stored = trace.hashed().to_json()
            from stopbandit.bandit.trace import answer_key

            ref = answer_key(req.reference)
            got = reveal_row(stored, ref, arms)
            hashed = ProbeTrace.from_json(stored)
            for arm, value in zip(arms, got):
                cf = counterfactual(hashed, arm)
                want = None if cf is None else (em_of(cf.answer, ref), cf.tokens)
                assert value == want, (req.request_id, logged.name, arm.name)
                checked += 1
                revealed += value is not None
    assert checked > 50_000 and revealed > checked // 3


def _reveal_or_error(trace, ref, arms):
    try:
        return reveal_row(trace, ref, arms)
    except (KeyError, TypeError, ValueError, IndexError):
        return "malformed"


def _assert_rows_equal_reveal_row(traces, refs, arms):
    em, tok, ok = reveal_rows(traces, refs, arms)
    assert em.shape == tok.shape == (len(traces), len(arms))
    for i, (trace, ref) in enumerate(zip(traces, refs)):
        want = _reveal_or_error(trace, ref, arms)
        if want == "malformed":
            assert not ok[i] and np.isnan(em[i]).all() and np.isnan(tok[i]).all(), i
            continue
        assert ok[i], i
        for k, value in enumerate(want):
            if value is None:
                assert math.isnan(em[i, k]) and math.isnan(tok[i, k]), (i, k)
            else:
                assert (em[i, k], tok[i, k]) == value, (i, k, value)
    return ok


def test_reveal_rows_equal_reveal_row_on_simulated_traces():
    from stopbandit.bandit.trace import answer_key

    extra = (Arm("cap64", 0.5, 64), Arm("cap100", 0.75, 100), Arm("cap200", 0.97, 200), Arm("cap512", 1.01, 512),
             Arm("t050", 0.5, 0), Arm("t099_cap2048", 0.99, 2048), Arm("cap1", 0.9, 1))
    arms = DEFAULT_ARMS + extra
    requests = Simulator(seed=7).take(300) + Simulator(SimConfig(min_think_tokens=1), seed=8).take(80)
    traces, refs = [], []
    for req in requests:
        for logged in arms[::3]:
            traces.append(run(req, logged).trace.hashed().to_json())
            refs.append(answer_key(req.reference))
    ok = _assert_rows_equal_reveal_row(traces, refs, arms)
    assert ok.all() and len(traces) > 1000


def test_reveal_rows_handle_traces_off_the_canonical_form_like_reveal_row():
    """Anything but canonical traces takes the one-trace path: same values, same malformed verdicts."""
    arms = DEFAULT_ARMS + (Arm("cap100", 0.75, 100), Arm("cap128", 0.9, 128))
    good = {"p": [[64, 0.5, "x", 9], [128, 0.95, "ref", 11], [192, 0.99, "ref", 7]], "s": 200, "r": "end",
            "a": "ref", "n": 5}

    def variant(**changes):
        return {**good, **changes}

    traces = [
        good,
        variant(p=[]),  # no probes
        variant(p=[[64.0, 0.5, "x", 9], [128.0, 0.95, "ref", 11]]),  # float offsets
        variant(p=[[64, "0.5", "x", 9], [128, "0.95", " ref ", "11"]]),  # numbers as text, padded answer
        variant(p=[[64, 0.5, "x", 9, "extra"], [128, 0.95, "ref", 11, None]]),  # extra fields are ignored
        variant(p=[[64, 0.5, "x"], [128, 0.95, "ref", 11]]),  # a short probe: malformed
        variant(p=[[128, 0.5, "x", 9], [64, 0.95, "ref", 11]]),  # out of order
        variant(p=[[-64, 0.5, "x", 9], [128, 0.95, "ref", 11]]),  # negative offset
        variant(p=[[64, True, "x", 9], [128, 1, "ref", 11]]),  # booleans and integers as confidences
        variant(p=[[64, 0.5, "x", 9.5], [128, 0.95, "ref", 11]]),  # fractional probe tokens
        variant(p={"0": [64, 0.5, "x", 9]}),  # probes not a list
        variant(s="200", n=5.0),  # scalars as text / float
        variant(r="budget", s=100),  # stopped at a cap
        {k: v for k, v in good.items() if k != "a"},  # no final answer: only arms that need it fail
        {k: v for k, v in good.items() if k != "p"},  # no probes at all: malformed
        [1, 2, 3],  # not a mapping
        variant(s=None),  # malformed stop
        variant(p=[[64, 0.5, 7, 9], [128, 0.95, None, 11]]),  # answers that are not text
    ]
    refs = ["ref"] * len(traces)
    ok = _assert_rows_equal_reveal_row(traces, refs, arms)
    assert ok[0] and not ok.all()
    # one odd trace among canonical ones leaves the others on the fast path with the same values
    _assert_rows_equal_reveal_row([good] * 5 + traces + [good] * 5, ["ref"] * (len(traces) + 10), arms)
    _assert_rows_equal_reveal_row([], [], arms)


# --------------------------------------------------------------------------- statuses, arms, errors


def test_defaulted_and_late_events_are_counted_and_excluded_by_default(log):
    store, _ = log
    add_status_events(store, ["defaulted", "defaulted", "late"])
    reader = LogReader(store, ARMS)
    _, got = collect(reader)
    assert reader.counts.events == 303 and reader.counts.used == 300
    assert (reader.counts.ok, reader.counts.defaulted, reader.counts.late) == (300, 2, 1)
    assert reader.count() == {"ok": 300, "defaulted": 2, "late": 1}
    reader = LogReader(store, ARMS, ReplayOptions(include=("ok", "defaulted")))
    _, got = collect(reader)
    assert reader.counts.used == 302 and reader.counts.excluded == 1


def test_arms_that_do_not_match_the_log_are_named(log):
    store, _ = log
    other = ArmSet((Arm("full", 1.01), Arm("careful", 0.97), Arm("quick", 0.6)))
    with pytest.raises(InputError, match=r"logged probabilities name arms \['full', 'careful', 'balanced', "
                                         r"'aggressive'\], the evaluation's arms are \['full', 'careful', 'quick'\]"):
        list(LogReader(store, other).batches())
    swapped = ArmSet((DEFAULT_ARMS[1], DEFAULT_ARMS[0], DEFAULT_ARMS[2], DEFAULT_ARMS[3]))
    with pytest.raises(InputError, match=r"logged arm '\w+' at arm_index \d does not match"):
        list(LogReader(store, swapped).batches())


def test_probability_dicts_in_another_order_are_mapped_by_name(sqlite_url):
    store = ReplayStore(sqlite_url, migrate_schema=True)
    probs = {"aggressive": 0.1, "balanced": 0.6, "careful": 0.2, "full": 0.1}
    store.write_batch([dict(request_key="r", ts=1.0, domain=None, features={}, arm="balanced", arm_index=2,
                            probabilities=probs, propensity=0.6, lam=0.2, token_scale=1000.0, policy_version="v",
                            experiment="champion")], [outcome_row("r", 1.0, 10)])
    [batch] = list(LogReader(store, ARMS).batches())
    np.testing.assert_array_equal(batch.logging_probs, [[0.1, 0.2, 0.6, 0.1]])
    store.dispose()


@pytest.mark.parametrize(("probs", "match"), [
    ({"full": 0.5, "careful": 0.5, "balanced": 0.5, "aggressive": 0.5}, "probabilities that do not sum to 1"),
    ({"full": 1.0, "careful": 0.0, "balanced": 0.0, "aggressive": 0.0}, "probability 0 for its logged arm"),
    ({"full": 1.5, "careful": -0.5, "balanced": 0.0, "aggressive": 0.0}, r"probabilities outside \[0, 1\]"),
])
def test_bad_stored_probabilities_name_the_event(sqlite_url, probs, match):
    store = ReplayStore(sqlite_url, migrate_schema=True)
    store.write_batch([dict(request_key="bad-1", ts=1.0, domain=None, features={}, arm="careful", arm_index=1,
                            probabilities=probs, propensity=0.5, lam=0.2, token_scale=1000.0, policy_version="v",
                            experiment="champion")], [outcome_row("bad-1", 1.0, 10)])
    with pytest.raises(InputError, match=rf"event 'bad-1' \(cursor 1\) has {match}"):
        list(LogReader(store, ARMS).batches())
    store.dispose()


@pytest.mark.parametrize(("value", "expected"), [
    ("2024-01-02T00:00:00Z", 1704153600.0), ("2024-01-02T01:00:00+01:00", 1704153600.0),
    ("2024-01-02", 1704153600.0), ("1704153600.5", 1704153600.5), (None, None),
])
def test_parse_time(value, expected):
    assert parse_time(value) == expected


@pytest.mark.parametrize("value", ["yesterday", "nan", "2024-13-01"])
def test_parse_time_errors_name_the_value(value):
    with pytest.raises(ConfigError, match=rf"since must be an ISO 8601 time .* got '{value}'|finite"):
        parse_time(value)


def test_module_doctests():
    assert doctest.testmod(times_mod).failed == 0


# --------------------------------------------------------------------------- streaming evaluation


def _all_estimators():
    reveals = reveal_matrix(ARMS)
    return {name: make_estimator(name, reveals=reveals) for name in ESTIMATORS}


def test_streaming_equals_one_shot_and_does_not_depend_on_the_chunk(log):
    store, version = log
    model = HeadsModel.load(store, version, ARMS)
    cand = HeadsCandidate(model=model, lam=0.3)
    metrics = (Metric("em"), Metric("tokens"), Metric("reward", 0.3, 1000.0))
    results = []
    for chunk in (7, 5000):
        res = run_targets(LogReader(store, ARMS, ReplayOptions(chunk=chunk, progress=False)),
                          [Target("c", cand, _all_estimators(), metrics)], model=model)
        results.append(res.estimates["c"])
    # one shot on the whole log
    batches = list(LogReader(store, ARMS).batches())
    [b] = batches
    em_hat, tok_hat = model.predict(b)
    data = b.logged_data(cand.probs(b, (em_hat, tok_hat)), em_hat, tok_hat)
    for name, est in _all_estimators().items():
        for m in metrics:
            one = est.estimate(data, m)
            for streamed in results:
                s = streamed[name][m.kind]
                assert s.value == pytest.approx(one.value, rel=1e-9, abs=1e-9)
                assert s.ci_low == pytest.approx(one.ci_low, rel=1e-9, abs=1e-9)
                assert s.ess == pytest.approx(one.ess, rel=1e-9)
                assert s.max_weight == one.max_weight and s.n == one.n == 300
    model.close()


def test_parallel_workers_give_the_same_estimates(log):
    store, version = log
    model = HeadsModel.load(store, version, ARMS)
    cand = HeadsCandidate(model=model, lam=0.2)
    metrics = (Metric("em"), Metric("reward", 0.2, 1000.0))
    one = run_targets(LogReader(store, ARMS, ReplayOptions(chunk=40, progress=False, jobs=1)),
                      [Target("c", cand, _all_estimators(), metrics)], model=model)
    two = run_targets(LogReader(store, ARMS, ReplayOptions(chunk=40, progress=False, jobs=2)),
                      [Target("c", cand, _all_estimators(), metrics)], model=model)
    assert two.jobs == 2 and two.counts == one.counts
    for name in ESTIMATORS:
        for kind in ("em", "reward"):
            a, b = one.estimates["c"][name][kind], two.estimates["c"][name][kind]
            assert b.value == pytest.approx(a.value, rel=1e-9, abs=1e-12)
            assert b.std_err == pytest.approx(a.std_err, rel=1e-9, abs=1e-12)
    model.close()


@pytest.mark.parametrize("chunk", [40, 64])
def test_estimates_are_the_same_floats_whatever_the_number_of_processes(log, chunk):
    """Ranges of ids streamed from their own starts and merged in order: jobs changes nothing, not even rounding."""
    from stopbandit.replay.runner import partition

    store, version = log
    add_status_events(store, ["defaulted", "late"])  # excluded events inside the ranges
    model = HeadsModel.load(store, version, ARMS)
    cand = HeadsCandidate(model=model, lam=0.2)
    targets = [Target("c", cand, _all_estimators(), (Metric("em"), Metric("tokens"), Metric("reward", 0.2, 1000.0))),
               Target("logging", LoggingCandidate(), {"ips": make_estimator("ips")}, (Metric("em"),))]
    reader = LogReader(store, ARMS, ReplayOptions(chunk=chunk))
    assert len(partition(reader, 70)) == 5  # 302 ids
    runs = {jobs: run_targets(LogReader(store, ARMS, ReplayOptions(chunk=chunk, progress=False, jobs=jobs)), targets,
                              model=model, partition_ids=70) for jobs in (1, 2, 3)}
    want = {t: {e: {m: est.to_dict() for m, est in ms.items()} for e, ms in es.items()}
            for t, es in runs[1].estimates.items()}
    for jobs in (2, 3):
        got = runs[jobs]
        assert got.jobs == jobs and got.counts == runs[1].counts
        assert {t: {e: {m: est.to_dict() for m, est in ms.items()} for e, ms in es.items()}
                for t, es in got.estimates.items()} == want
    assert runs[1].counts.used == 300 and runs[1].counts.events == 302
    model.close()


def test_jobs_follow_the_measured_cost_and_the_idle_cores():
    from stopbandit.replay.runner import PARALLEL_MIN_S, WORKER_START_S, choose_jobs

    # a cheap rest stays in this process, however many cores are idle
    assert choose_jobs(PARALLEL_MIN_S / 10 - 0.01, 10, cores=8, load=0.0) == 1
    # an expensive rest on an idle 2-core machine: two workers
    assert choose_jobs(10.0, 20, cores=2, load=0.5) == 2
    # the same rest on a loaded 2-core machine (two processes would only take turns): one
    assert choose_jobs(10.0, 20, cores=2, load=4.0) == 1
    # never more workers than ranges left, nor than 8
    assert choose_jobs(10.0, 3, cores=16, load=0.0) == 3
    assert choose_jobs(10.0, 100, cores=32, load=0.0) == 8
    # when starting the workers would cost what they save: one
    rest = 2 * 2 * WORKER_START_S
    assert choose_jobs(max(rest, PARALLEL_MIN_S) / 4, 4, cores=2, load=0.0) == (
        1 if max(rest, PARALLEL_MIN_S) / 2 + 2 * WORKER_START_S >= max(rest, PARALLEL_MIN_S) else 2)
    # one range left: nothing to share
    assert choose_jobs(100.0, 1, cores=8, load=0.0) == 1


def test_default_jobs_give_the_same_floats_as_one_process(log):
    store, version = log
    model = HeadsModel.load(store, version, ARMS)
    targets = [Target("c", HeadsCandidate(model=model, lam=0.2), _all_estimators(), (Metric("em"),))]
    one = run_targets(LogReader(store, ARMS, ReplayOptions(chunk=40, progress=False, jobs=1)), targets,
                      model=model, partition_ids=70)
    auto = run_targets(LogReader(store, ARMS, ReplayOptions(chunk=40, progress=False)), targets, model=model,
                       partition_ids=70)
    assert auto.jobs >= 1 and auto.counts == one.counts
    assert {e: {m: x.to_dict() for m, x in ms.items()} for e, ms in auto.estimates["c"].items()} == \
        {e: {m: x.to_dict() for m, x in ms.items()} for e, ms in one.estimates["c"].items()}
    model.close()


def test_partition_covers_the_ids_once(log):
    from stopbandit.replay.runner import partition

    store, _ = log
    reader = LogReader(store, ARMS)
    lo, hi = reader.cursor_bounds()
    for span in (1, 7, 100, 299, 300, 10_000):
        ranges = partition(reader, span)
        assert ranges[0][0] == lo and ranges[-1][1] == hi
        assert all(a < b <= a + span for a, b in ranges) and all(x[1] == y[0] for x, y in zip(ranges, ranges[1:]))
    assert partition(LogReader(store, ARMS, ReplayOptions(since=4e9))) == []
    with pytest.raises(ConfigError, match="partition span must be a positive integer, got 0"):
        partition(reader, 0)


def test_streaming_sweep_equals_sweep_and_fixed_arm_estimates(log):
    store, version = log
    model = HeadsModel.load(store, version, ARMS)
    lams = [0.0, 0.25, 0.5, 1.0]
    res = sweep_log(store, ARMS, model, lams, token_scale=1000.0, options=ReplayOptions(chunk=33, progress=False))
    [b] = list(LogReader(store, ARMS).batches())
    em_hat, tok_hat = model.predict(b)
    data = b.logged_data(None, em_hat, tok_hat)
    points = sweep(data, lams, token_scale=1000.0, tie_rank=lenience_rank(ARMS))
    for mine, ref in zip(res.points, points):
        assert mine.lam == ref.lam
        for f in ("em", "tokens", "reward"):
            assert getattr(mine, f).value == pytest.approx(getattr(ref, f).value, rel=1e-9, abs=1e-9)
            assert getattr(mine, f).ci_high == pytest.approx(getattr(ref, f).ci_high, rel=1e-9, abs=1e-9)
    fixed = fixed_arm_estimates(data, ARMS.names)
    assert list(res.fixed) == ["full (full reasoning)", "careful", "balanced", "aggressive"]
    for (label, (em, tok)), (name, (em_ref, tok_ref)) in zip(res.fixed.items(), fixed.items()):
        assert label.split()[0] == name
        assert em.value == pytest.approx(em_ref.value, rel=1e-9) and tok.value == pytest.approx(tok_ref.value, rel=1e-9)
    assert res.logging["em"].value == pytest.approx(float(np.mean(b.em)))
    model.close()


def test_evaluate_reports_logging_value_and_skips_model_estimators_without_a_model(sqlite_url):
    make_log(sqlite_url, 120, snapshot=False)
    store = ReplayStore(sqlite_url)
    add_status_events(store, ["defaulted"])
    ev = evaluate(store, ARMS, FixedArm(index=1, name="careful"), ["ips", "dr", "graph-ips"], lam=0.2,
                  token_scale=1000.0, options=ReplayOptions(progress=False))
    assert set(ev.estimates) == {"ips", "graph-ips"} and "dr" in ev.skipped
    assert "needs per-arm EM/token predictions" in ev.skipped["dr"]
    assert ev.counts.defaulted == 1 and ev.counts.used == 120
    em = np.array([e.em for chunk in store.iter_events() for e in chunk if e.status == "ok"])
    assert ev.logging["em"].value == pytest.approx(em.mean())
    assert any(w.startswith("SKIPPED dr") for w in ev.warnings())
    assert ev.to_dict()["counts"]["defaulted"] == 1
    store.dispose()


def test_no_usable_events_is_a_clear_error(sqlite_url):
    store = ReplayStore(sqlite_url, migrate_schema=True)
    with pytest.raises(InputError, match="no events in the selected events"):
        evaluate(store, ARMS, UniformCandidate(), ["ips"], lam=0.2, token_scale=1000.0, options=ReplayOptions(progress=False))
    add_status_events(store, ["defaulted", "late"])
    with pytest.raises(InputError, match="1 defaulted and 1 late rewards are excluded by default"):
        evaluate(store, ARMS, UniformCandidate(), ["ips"], lam=0.2, token_scale=1000.0, options=ReplayOptions(progress=False))
    store.dispose()


# --------------------------------------------------------------------------- candidates


def test_candidate_registry(log):
    store, version = log
    ctx = CandidateContext(store, ARMS, 0.2)
    [b] = list(LogReader(store, ARMS).batches())
    assert isinstance(make_candidate("logging", ctx), LoggingCandidate)
    np.testing.assert_allclose(make_candidate("uniform", ctx).probs(b, None), 0.25)
    fixed = make_candidate("arm:balanced", ctx).probs(b, None)
    assert (fixed[:, 2] == 1).all() and fixed.sum() == b.n
    latest = make_candidate("latest", ctx)
    by_version = make_candidate(version, ctx)
    p1, p2 = latest.probs(b, None), by_version.probs(b, None)
    np.testing.assert_array_equal(p1, p2)
    assert set(np.unique(p1)) == {0.0, 1.0}  # greedy
    current = make_candidate("current", ctx)
    pc = current.probs(b, None)
    assert (pc > 0).all() and np.allclose(pc.sum(axis=1), 1)  # SquareCB keeps every arm in play
    np.testing.assert_array_equal(pc.argmax(axis=1), p1.argmax(axis=1))
    for c in (latest, by_version, current):
        c.model.close()


@pytest.mark.parametrize(("spec", "match"), [
    ("arm:nope", r"policy 'arm:nope': unknown arm 'nope'; known arms: \['full', 'careful', 'balanced', 'aggressive'\]"),
    ("v-missing", r"unknown policy 'v-missing': not one of \['current', 'latest', 'logging', 'uniform'\] or arm:NAME"),
    ("", "policy must be a name"),
])
def test_candidate_errors(log, spec, match):
    store, _ = log
    with pytest.raises(ConfigError, match=match):
        make_candidate(spec, CandidateContext(store, ARMS, 0.2))


def test_latest_without_snapshots_says_how_to_get_one(sqlite_url):
    store = ReplayStore(sqlite_url, migrate_schema=True)
    with pytest.raises(ConfigError, match=r"no snapshot 'latest' in the store; the store has no snapshots yet "
                                          r"\(run `stopbandit replay train`\)"):
        make_candidate("latest", CandidateContext(store, ARMS, 0.2))
    store.dispose()


def test_batched_heads_equal_predict_heads(log):
    from stopbandit.bandit.vw import shared_line

    store, version = log
    model = HeadsModel.load(store, version, ARMS)
    [b] = list(LogReader(store, ARMS).batches())
    em_hat, tok_hat = model.predict(b)
    for i, feats in enumerate(b.features()):
        em, tok = model.policy.predict_heads(shared_line(feats))
        np.testing.assert_allclose(em_hat[i], em, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(tok_hat[i], tok, rtol=1e-12, atol=1e-9)
    model.close()


def test_batched_heads_are_the_same_floats_as_one_at_a_time(log):
    """Batch scoring of a stored snapshot (dedupe, shared parsing) = HeadsPolicy.predict_heads, float for float."""
    from stopbandit.bandit.vw import shared_line
    from stopbandit.replay.candidates import batch_shared_lines

    store, version = log
    # repeated contexts: the same features logged again under new keys
    events = [e for chunk in store.iter_events() for e in chunk][:40]
    store.write_batch(
        [dict(request_key=f"again-{i}", ts=e.ts + 1e4, domain=e.domain, features=e.features, arm=e.arm,
              arm_index=e.arm_index, probabilities=e.probabilities, propensity=e.propensity, lam=e.lam,
              token_scale=e.token_scale, policy_version="v", experiment="champion") for i, e in enumerate(events)],
        [outcome_row(f"again-{i}", e.em, e.tokens) for i, e in enumerate(events)])
    model = HeadsModel.load(store, version, ARMS)
    batches = list(LogReader(store, ARMS, ReplayOptions(chunk=128)).batches())
    assert sum(b.n for b in batches) == 340
    for b in batches:
        lines = batch_shared_lines(b)
        assert lines == [shared_line(f) for f in b.features()]
        em_hat, tok_hat = model.predict(b)
        for i, line in enumerate(lines):
            em, tok = model.policy.predict_heads(line)
            assert em_hat[i].tolist() == em.tolist() and tok_hat[i].tolist() == tok.tolist()
    [whole] = list(LogReader(store, ARMS, ReplayOptions(chunk=1000)).batches())
    assert len(set(batch_shared_lines(whole))) <= whole.n - 40  # the repeats are scored once ...
    em_hat, tok_hat = model.predict(whole)
    assert em_hat[300:].tolist() == em_hat[:40].tolist() and tok_hat[300:].tolist() == tok_hat[:40].tolist()
    model.close()


def test_sqlite_rows_from_the_driver_equal_sqlalchemy_rows(log):
    """On SQLite the reader fetches plain tuples from the driver; they equal SQLAlchemy's rows."""
    store, _ = log
    add_status_events(store, ["defaulted", "late"])
    reader = LogReader(store, ARMS, ReplayOptions(chunk=70))
    fast = [tuple(r) for chunk in reader.raw_chunks() for r in chunk]
    with store.engine.connect() as conn:
        slow = [tuple(r) for r in conn.execute(store._event_query(chunk=None), {"sb_after": 0}).all()]
    assert fast == slow and len(fast) == 302


def test_count_total_and_cursor_bounds_agree_with_the_rows(log):
    store, _ = log
    add_status_events(store, ["defaulted", "late"])
    rows = [r for chunk in LogReader(store, ARMS, ReplayOptions(chunk=1000)).raw_chunks() for r in chunk]
    ids = [r[0] for r in rows]
    ts = sorted(r[2] for r in rows)
    for kw in ({}, {"since": ts[100]}, {"until": ts[250]}, {"since": ts[50], "until": ts[60]}, {"after": ids[10]},
               {"after": ids[5], "upto": ids[200]}, {"since": ts[-1] + 1.0}, {"after": ids[-1]}):
        window = {k: kw[k] for k in ("since", "until") if k in kw}
        ids_range = {k: kw[k] for k in ("after", "upto") if k in kw}
        reader = LogReader(store, ARMS, ReplayOptions(include=("ok", "defaulted", "late"), **window), **ids_range)
        got = [r for chunk in reader.raw_chunks() for r in chunk]
        assert reader.count_total() == sum(reader.count().values()) == len(got), kw
        lo, hi = reader.cursor_bounds()
        if got:
            assert (lo, hi) == (got[0][0] - 1, got[-1][0]), kw
        else:
            assert lo == hi, kw


def test_building_a_batch_leaves_the_garbage_collector_as_it_was(log):
    import gc

    store, _ = log
    assert gc.isenabled()
    list(LogReader(store, ARMS).batches())
    assert gc.isenabled()
    gc.disable()
    try:
        list(LogReader(store, ARMS).batches())
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_heads_model_survives_pickling_for_worker_processes(log):
    import pickle

    store, version = log
    model = HeadsModel.load(store, version, ARMS)
    copy = pickle.loads(pickle.dumps(model))
    [b] = list(LogReader(store, ARMS, ReplayOptions(chunk=5000)).batches())
    for x, y in zip(model.predict(b), copy.predict(b)):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    assert copy.version == version and copy.policy.t == model.policy.t
    model.close()
    copy.close()


def test_logged_data_on_postgres_matches_sqlite(db_url):
    make_log(db_url, 80, snapshot=False)
    store = ReplayStore(db_url)
    _, got = collect(LogReader(store, ARMS, ReplayOptions(chunk=30)))
    events = [e for chunk in store.iter_events() for e in chunk]
    np.testing.assert_array_equal(got["actions"], [e.arm_index for e in events])
    np.testing.assert_array_equal(got["em"], [e.em for e in events])
    batches = list(LogReader(store, ARMS).batches())
    assert sum(int((~np.isnan(b.revealed_em).all(axis=1)).sum()) for b in batches) == 64
    store.dispose()


def test_vw_native_snapshot_is_played_with_its_own_probabilities(sqlite_url):
    sel = Selector.open(sqlite_url, policy="vw-native", seed=1, follow=False, snapshot=None)
    for req in Simulator(seed=1).stream(60):
        d = sel.choose(req.prompt, domain=req.domain, request_id=req.request_id)
        out = run(req, d.arm)
        sel.reward(d.decision_id, em=out.em, tokens=out.tokens)
    sel.flush()
    version = sel.snapshot()
    sel.close()
    store = ReplayStore(sqlite_url)
    cand = make_candidate("latest", CandidateContext(store, ARMS, 0.2))
    assert not cand.model.has_heads and cand.describe()["mode"] == "explore"
    [b] = list(LogReader(store, ARMS).batches())
    probs = cand.probs(b, None)
    assert probs.shape == (60, 4) and np.allclose(probs.sum(axis=1), 1.0)
    ev = evaluate(store, ARMS, cand, ["ips", "dr"], lam=0.2, token_scale=1000.0, options=ReplayOptions(progress=False))
    assert set(ev.estimates) == {"ips"} and "dr" in ev.skipped and ev.policy["snapshot"] == version
    with pytest.raises(ConfigError, match="the sweep needs EM/token heads"):
        sweep_log(store, ARMS, cand.model, [0.1], token_scale=1000.0, options=ReplayOptions(progress=False))
    cand.model.close()
    store.dispose()
