"""How long `stopbandit replay evaluate` takes on a million logged events, and how much memory it needs.

    python benchmarks/ope_scale.py                      # 1,000,000 events, every estimator
    python benchmarks/ope_scale.py --events 200000 --db /tmp/ope.db --keep
    valgrind --tool=cachegrind --cache-sim=no python3.11 benchmarks/ope_scale.py --db /tmp/ope.db --single-pass 20000

Setup (not timed): seeded synthetic events shaped like the Selector's —
the ten built-in features, a SquareCB-like probability vector over the four
default arms, EM and token outcomes, and a hashed probe trace with its
reference key on every event (so the graph-feedback estimators have work to
do) — are written through ``ReplayStore.write_batch`` in batches of 20,000, and
a heads snapshot trained on the first 20,000 events is saved. ``--keep``
reuses a database that already holds the requested number of events.

Timed: the code path of ``stopbandit replay evaluate --policy latest
--estimators all`` (resolve arms, λ and the candidate, load the snapshot, stream
the log with every estimator), called in-process in a fresh interpreter, so
its peak RSS (``resource.getrusage``) is that of the evaluation alone.
Targets: at most 20 s and 1.5 GB on a 2-core machine.

After the timed run, in the same fresh interpreter (not timed against the
targets): the same-run baseline, a plain keyset read of the whole log through
``LogReader.raw_chunks`` (the evaluation's query, nothing decoded), and the
split by phase, CPU time per event of each step of the pass (read, decode and
checks with the probe traces, VW shared lines, VW heads, estimators) measured
in one process over the first ``--phase-events`` events with the very calls
the evaluation makes. On a loaded machine wall time is CPU time stretched by
the load, so the split is reported as CPU per event and as a share.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TARGET_S = 20.0
TARGET_MB = 1536.0
BATCH = 20_000
DOMAINS = ("math", "science", "code", "trivia")


def _hexkeys(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.array([f"{x:016x}" for x in rng.integers(0, 2**63, size=n, dtype=np.int64)])


def generate(url: str, events: int, seed: int) -> None:
    """Write ``events`` synthetic events (and a trained snapshot) into the store at ``url``."""
    from stopbandit.bandit.arms import ArmSet
    from stopbandit.bandit.exploration import SquareCB
    from stopbandit.bandit.policy import HeadsPolicy
    from stopbandit.bandit.snapshot import pack
    from stopbandit.bandit.vw import shared_line
    from stopbandit.features.extract import FeatureConfig
    from stopbandit.replay.store import ReplayStore

    arms = ArmSet.of(None)
    names = arms.names
    thr = [a.threshold for a in arms]
    cap = [a.max_think_tokens or 10**9 for a in arms]
    store = ReplayStore(url, migrate_schema=True)
    rng = np.random.default_rng(seed)
    t0 = time.time() - events * 0.01
    policy = HeadsPolicy(arms, SquareCB(), 1000.0)
    train_n = min(20_000, events)
    written = 0
    max_probes = 4000 // 64
    while written < events:
        n = min(BATCH, events - written)
        dom = rng.integers(0, len(DOMAINS), n).tolist()
        diff = rng.beta(2, 2, n)
        dbin = np.minimum((diff * 4).astype(int), 3).tolist()
        diff = np.round(diff, 4).tolist()
        length = np.round(3.0 + 2.0 * rng.random(n), 4).tolist()
        digits = rng.integers(0, 5, n).astype(float).tolist()
        steps = rng.integers(0, 6, n).astype(float).tolist()
        mathsym = np.round(rng.random(n) * 0.05, 4).tolist()
        # SquareCB-like logging: one favoured arm, the rest explored with a few percent each
        best = rng.integers(0, 4, n)
        small = rng.uniform(0.01, 0.08, (n, 4))
        small[np.arange(n), best] = 0.0
        probs = small.copy()
        probs[np.arange(n), best] = 1.0 - small.sum(axis=1)
        arm = np.minimum((rng.random(n)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1), 3).tolist()
        probs = probs.tolist()
        # a probe trace: probes every 64 tokens; the logged arm stops at its first confident probe or its cap
        think = np.clip(rng.lognormal(6.6, 0.6, n), 64, 4000).astype(np.int64).tolist()
        conf_all = np.round(rng.random((n, max_probes)), 6).tolist()
        ans_tok = rng.integers(4, 30, n).tolist()
        ref = _hexkeys(rng, n).tolist()
        wrong = _hexkeys(rng, n).tolist()
        settle = rng.random(n).tolist()
        decisions, outcomes = [], []
        for i in range(n):
            k = (think[i] - 1) // 64
            conf = conf_all[i]
            a = arm[i]
            stop, reason, stopped = think[i], "end", False
            for j in range(k):
                off = 64 * (j + 1)
                if off >= cap[a]:
                    break
                if conf[j] >= thr[a]:
                    stop, reason, stopped = off, "confidence", True
                    break
            if not stopped and cap[a] < think[i]:
                stop, reason = int(cap[a]), "budget"
            settled = int(settle[i] * think[i])
            at = ans_tok[i]
            probes = [[off, conf[j], ref[i] if off >= settled else wrong[i], at]
                      for j, off in ((j, 64 * (j + 1)) for j in range(k)) if off <= stop]
            answer = ref[i] if stop >= settled else wrong[i]
            tokens = stop + at * sum(1 for p in probes if p[0] < stop) + at
            em = 1.0 if answer == ref[i] else 0.0
            key = f"e{written + i:09d}"
            d = DOMAINS[dom[i]]
            db = f"d{dbin[i]}"
            feats = {"len": length[i], "lbin": f"l{int(length[i])}", "domain": d, "digits": digits[i],
                     "mathsym": mathsym[i], "steps": steps[i], "diff": diff[i], "dbin": db, "dd": f"{d}.{db}",
                     "prior": round(0.3 + 0.4 * diff[i], 4)}
            p = dict(zip(names, probs[i]))
            ts = t0 + (written + i) * 0.01
            decisions.append({"request_key": key, "ts": ts, "domain": d, "features": feats, "arm": names[a],
                              "arm_index": a, "probabilities": p, "propensity": p[names[a]], "lam": 0.2,
                              "token_scale": 1000.0, "policy_version": "bench", "experiment": "champion"})
            outcomes.append({"decision_key": key, "ts": ts + 1.0, "em": em, "tokens": tokens, "latency_ms": None,
                             "trace": {"p": probes, "s": stop, "r": reason, "a": answer, "n": at},
                             "reference_key": ref[i], "status": "ok"})
            if written + i < train_n:
                policy.learn(shared_line(feats), a, em, tokens, p[names[a]], 0.2)
        store.write_batch(decisions, outcomes)
        written += n
        print(f"  wrote {written:,}/{events:,} events", file=sys.stderr, flush=True)
    packed = pack(policy, lam=0.2, feature_config=FeatureConfig().to_dict())
    store.save_snapshot(packed.version, packed.model, packed.meta, packed.checksum)
    store.add_lambda(0.2, "benchmark", "ope_scale")
    policy.close()
    store.dispose()


def event_count(url: str) -> int:
    from stopbandit.replay.store import ReplayStore

    try:
        store = ReplayStore(url)
    except Exception:  # noqa: BLE001 - a missing or foreign file just means "generate"
        return -1
    try:
        return store.counts()["outcomes"] if store.latest_snapshot_version() else -1
    finally:
        store.dispose()


def _latest_setup(url: str, estimators: str):
    """What `replay evaluate --policy latest` sets up: store, arms, λ, estimator names, candidate, heads model."""
    from stopbandit.replay.candidates import CandidateContext, default_model, make_candidate, resolve_arms, \
        resolve_lambda, snapshot_meta
    from stopbandit.replay.evaluation import has_traces, parse_estimators
    from stopbandit.replay.store import ReplayStore

    store = ReplayStore(url)
    meta = snapshot_meta(store, "latest")
    arms, _ = resolve_arms(None, meta)
    lam, _ = resolve_lambda(None, store, meta, 0.2)
    names = parse_estimators(estimators, traced=has_traces(store))
    cand = make_candidate("latest", CandidateContext(store, arms, lam))
    model = default_model(store, arms, cand)
    return store, arms, lam, names, cand, model


def timed_evaluate(url: str, estimators: str, chunk: int, jobs: int | None = None) -> dict:
    """The `replay evaluate` code path, in this (fresh) process."""
    from stopbandit.replay.evaluation import evaluate
    from stopbandit.replay.options import ReplayOptions

    t0 = time.perf_counter()
    store, arms, lam, names, cand, model = _latest_setup(url, estimators)
    ev = evaluate(store, arms, cand, names, lam=lam, token_scale=1000.0, model=model,
                  options=ReplayOptions(chunk=chunk, progress=False, jobs=jobs))
    wall = time.perf_counter() - t0
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    dr = ev.estimates.get("dr", {}).get("reward")
    return {"events": ev.counts.used, "estimators": names, "wall_s": wall, "jobs": ev.jobs,
            "cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
            "peak_rss_mb": me.ru_maxrss / 1024.0, "worker_rss_mb": kids.ru_maxrss / 1024.0,
            "dr_reward": None if dr is None else [dr.value, dr.ci_low, dr.ci_high]}


def read_baseline(url: str, chunk: int) -> dict:
    """A plain keyset read of every event (the evaluation's query; rows only, nothing decoded)."""
    from stopbandit.bandit.arms import ArmSet
    from stopbandit.replay.logreader import LogReader
    from stopbandit.replay.options import ReplayOptions
    from stopbandit.replay.store import ReplayStore

    store = ReplayStore(url)
    reader = LogReader(store, ArmSet.of(None), ReplayOptions(chunk=chunk))
    t0, c0 = time.perf_counter(), time.process_time()
    n = sum(len(rows) for rows in reader.raw_chunks())
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    store.dispose()
    return {"events": n, "wall_s": wall, "cpu_s": cpu}


def phase_split(url: str, estimators: str, chunk: int, events: int) -> dict:
    """CPU seconds per phase of one streaming pass over the first ``events`` events, in this process.

    The calls of ``run_targets`` one chunk at a time, with the heads' predictions
    timed on their own and then handed to the estimators (``_accumulate`` asks
    the model once per chunk; here it gets the predictions just made).
    """
    from stopbandit.replay.candidates import LoggingCandidate, batch_shared_lines
    from stopbandit.replay.logreader import LogReader
    from stopbandit.replay.options import ReplayOptions
    from stopbandit.replay.runner import Target, _accumulate
    from stopbandit.replay.ope import IPS, Metric, make_estimator, reveal_matrix

    store, arms, lam, names, cand, model = _latest_setup(url, estimators)
    reveals = reveal_matrix(arms)
    ests = {n: make_estimator(n, reveals=reveals) for n in names}
    metrics = (Metric("em"), Metric("tokens"), Metric("reward", lam, 1000.0))
    plan = [(Target("candidate", cand, ests, metrics), ests),
            (Target("logging", LoggingCandidate(), {"on-policy": IPS()}, metrics), {"on-policy": IPS()})]
    reader = LogReader(store, arms, ReplayOptions(chunk=chunk), traces=any(n.startswith("graph") for n in names))
    cpu = {"read": 0.0, "decode, checks, traces": 0.0, "VW shared lines": 0.0, "VW heads": 0.0, "estimators": 0.0}
    accs: dict = {}
    clock = time.process_time
    n = 0
    chunks = reader.raw_chunks()
    while n < events:
        t0 = clock()
        rows = next(chunks, None)
        if rows is None:
            break
        t1 = clock()
        batch, _ = reader.build(rows)
        t2 = clock()
        lines = batch_shared_lines(batch)
        t3 = clock()
        heads = model.predict_lines(lines)
        t4 = clock()
        model.predict = lambda b, h=heads: h  # type: ignore[method-assign]  # the predictions just timed
        _accumulate(batch, plan, model, accs)
        del model.predict
        t5 = clock()
        for key, a, b in (("read", t0, t1), ("decode, checks, traces", t1, t2), ("VW shared lines", t2, t3),
                          ("VW heads", t3, t4), ("estimators", t4, t5)):
            cpu[key] += b - a
        n += len(rows)
    model.close()
    store.dispose()
    return {"events": n, "cpu_s": cpu}


def single_pass(url: str, estimators: str, chunk: int, events: int) -> None:
    """Setup, then (``events`` > 0) one single-process pass over the first ``events`` outcome ids; nothing timed.

    For instruction counts that the machine's load cannot change: run it under
    ``valgrind --tool=cachegrind --cache-sim=no`` with N and with 0 events and
    divide the difference by N.
    """
    from stopbandit.replay.candidates import LoggingCandidate
    from stopbandit.replay.logreader import LogReader
    from stopbandit.replay.options import ReplayOptions
    from stopbandit.replay.runner import Target, run_targets
    from stopbandit.replay.ope import IPS, Metric, make_estimator, reveal_matrix

    store, arms, lam, names, cand, model = _latest_setup(url, estimators)
    ests = {n: make_estimator(n, reveals=reveal_matrix(arms)) for n in names}
    metrics = (Metric("em"), Metric("tokens"), Metric("reward", lam, 1000.0))
    targets = [Target("candidate", cand, ests, metrics),
               Target("logging", LoggingCandidate(), {"on-policy": IPS()}, metrics)]
    if events > 0:
        reader = LogReader(store, arms, ReplayOptions(chunk=chunk, progress=False, jobs=1), upto=events,
                           traces=any(n.startswith("graph") for n in names))
        res = run_targets(reader, targets, model=model)
        print(f"{res.counts.used} events; DR reward {res.estimates['candidate']['dr']['reward'].value!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--db", default="/tmp/stopbandit_ope_scale.db", help="SQLite file of the synthetic log.")
    ap.add_argument("--keep", action="store_true", help="Keep the database afterwards and reuse a matching one.")
    ap.add_argument("--estimators", default="all")
    ap.add_argument("--chunk", type=int, default=5000)
    ap.add_argument("--jobs", type=int, default=None, help="Worker processes (default: as the CLI, one per core).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--phase-events", type=int, default=200_000,
                    help="Events of the single-process phase split after the timed run (0: skip it).")
    ap.add_argument("--single-pass", type=int, default=None, metavar="N",
                    help="Only set up and stream the first N events in this process, untimed, on an existing "
                         "--db (0: setup only); for instruction counts under valgrind.")
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    url = f"sqlite:///{Path(args.db).resolve()}"
    if args.single_pass is not None:
        single_pass(url, args.estimators, args.chunk, args.single_pass)
        return
    if args._child:
        res = timed_evaluate(url, args.estimators, args.chunk, args.jobs)
        res["load_during"] = os.getloadavg()[0]
        res["baseline"] = read_baseline(url, args.chunk)
        if args.phase_events > 0:
            res["phases"] = phase_split(url, args.estimators, args.chunk, args.phase_events)
        print(json.dumps(res))
        return
    have = event_count(url) if Path(args.db).exists() else -1
    if have != args.events:
        if Path(args.db).exists():
            for suffix in ("", "-wal", "-shm"):
                Path(args.db + suffix).unlink(missing_ok=True)
        print(f"generating {args.events:,} events into {args.db} (not timed) …", file=sys.stderr)
        t = time.perf_counter()
        generate(url, args.events, args.seed)
        print(f"  setup took {time.perf_counter() - t:.1f} s", file=sys.stderr)
    else:
        print(f"reusing {args.db} ({have:,} events)", file=sys.stderr)
    load_before = os.getloadavg()[0]
    cmd = [sys.executable, __file__, "--_child", "--db", args.db, "--events", str(args.events),
           "--estimators", args.estimators, "--chunk", str(args.chunk), "--phase-events", str(args.phase_events)]
    if args.jobs is not None:
        cmd += ["--jobs", str(args.jobs)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if not args.keep:
        for suffix in ("", "-wal", "-shm"):
            Path(args.db + suffix).unlink(missing_ok=True)
    total_mb = res["peak_rss_mb"] + res["jobs"] * res["worker_rss_mb"] if res["jobs"] > 1 else res["peak_rss_mb"]
    ok_t = "yes" if res["wall_s"] <= TARGET_S else "NO"
    ok_m = "yes" if total_mb <= TARGET_MB else "NO"
    print(f"\n`{' '.join(['python', 'benchmarks/ope_scale.py', *sys.argv[1:]])}` on {platform.node()} "
          f"({os.cpu_count()} cores, Python {platform.python_version()}; 1-minute load average before the timed "
          f"run {load_before:.1f}, at its end {res['load_during']:.1f}, after the baseline and phases "
          f"{os.getloadavg()[0]:.1f})\n")
    print("| events | estimators | processes | wall (s) | CPU (s) | CPU per event (µs) | events/s | "
          "peak RSS main + workers (MB) | ≤ 20 s | ≤ 1.5 GB |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|:-:|:-:|")
    print(f"| {res['events']:,} | {','.join(res['estimators'])} | {res['jobs']} | {res['wall_s']:.1f} | "
          f"{res['cpu_s']:.1f} | {1e6 * res['cpu_s'] / res['events']:.0f} | {res['events'] / res['wall_s']:,.0f} | "
          f"{res['peak_rss_mb']:.0f} + {res['jobs'] if res['jobs'] > 1 else 0} × {res['worker_rss_mb']:.0f} | "
          f"{ok_t} | {ok_m} |")
    print("\nCPU counts the evaluating process and its workers; on a busy machine wall time exceeds "
          "CPU / processes by the time other processes held the cores.")
    if res["dr_reward"]:
        v, lo, hi = res["dr_reward"]
        print(f"\nDR reward of the latest snapshot: {v:.4f} [{lo:.4f}, {hi:.4f}]")
    base = res["baseline"]
    print(f"\nSame-run baseline, plain keyset read of the {base['events']:,} events (one process, rows only): "
          f"{base['wall_s']:.1f} s wall, {base['cpu_s']:.1f} s CPU, {base['events'] / base['wall_s']:,.0f} events/s; "
          f"the evaluation ran at {res['events'] / res['wall_s']:,.0f} events/s "
          f"({res['wall_s'] / base['wall_s']:.1f}× the read's wall time)")
    if "phases" in res:
        ph = res["phases"]
        total = sum(ph["cpu_s"].values())
        print(f"\nSplit by phase, one process over the first {ph['events']:,} events "
              f"(CPU µs per event; share; estimated wall s of the timed run = share × wall):\n")
        print("| phase | CPU µs / event | share | ≈ wall s |")
        print("|---|---:|---:|---:|")
        for name, sec in ph["cpu_s"].items():
            share = sec / total if total else 0.0
            print(f"| {name} | {1e6 * sec / ph['events']:.1f} | {100 * share:.0f}% | {share * res['wall_s']:.1f} |")
        print(f"| total | {1e6 * total / ph['events']:.1f} | 100% | {res['wall_s']:.1f} |")


if __name__ == "__main__":
    main()
