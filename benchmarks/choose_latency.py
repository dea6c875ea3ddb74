"""choose() latency and decisions+rewards throughput, against VW's own predict.

Prints, for 4 and 8 arms: choose() p50/p99 (features + policy + enqueue to the
batch writer, SQLite store), VW ``--cb_explore_adf --squarecb`` predict p50 on
the same multiline example in the same run, and their ratio; then sustained
decisions+rewards per second on one core with SQLite logging.

The throughput phase runs on one core: every thread of the process (the
serving loop, the batch writer, the Selector's follower) is pinned to one CPU
with ``os.sched_setaffinity`` for the phase. Its time runs from the first
``choose`` to the end of ``drain()`` (every row committed, nothing left in the
queue or the spill); afterwards the store is counted and must hold exactly one
decision and one outcome per request made, or the script fails. Besides the
wall-clock rate it prints the rate per CPU-second of the process (all its
threads): on this shared machine other jobs take part of the core, and that
figure is what one core sustains when it is ours alone. The CPU time of the
serving thread and of the batch writer's thread per decision+reward is printed
too: it moves much less with the load than the rates do.

    python benchmarks/choose_latency.py [--n 20000] [--seconds 5] [--cpu 0] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from stopbandit import Selector
from stopbandit.bandit.arms import Arm
from stopbandit.bandit.vw import arm_line, labeled, shared_line
from stopbandit.sim import Simulator, run as sim_run

ARMS8 = [
    Arm("full", 1.01, 0), Arm("t99", 0.99, 0), Arm("careful", 0.97, 0), Arm("t95", 0.95, 0),
    Arm("balanced", 0.90, 0), Arm("t85", 0.85, 0), Arm("aggressive", 0.75, 512), Arm("cap256", 0.75, 256),
]


def arms_for(k: int) -> list[Arm]:
    """The benchmark's arm set: all eight, or four of them spread from lenient to aggressive."""
    return ARMS8 if k == 8 else [ARMS8[0], ARMS8[2], ARMS8[4], ARMS8[6]]


def percentile_us(samples: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(samples) / 1000.0, q))


@contextmanager
def one_core(cpu: int) -> Iterator[None]:
    """Pin every thread of this process to ``cpu`` (threads started meanwhile inherit it); restore afterwards."""
    tids = [int(t) for t in os.listdir("/proc/self/task")]
    before = {t: os.sched_getaffinity(t) for t in tids}
    for t in tids:
        os.sched_setaffinity(t, {cpu})
    try:
        yield
    finally:
        for t in (int(x) for x in os.listdir("/proc/self/task")):
            try:
                os.sched_setaffinity(t, before.get(t, before[tids[0]]))
            except OSError:  # a thread that ended meanwhile
                pass


def run(k: int, n: int, seconds: float, cpu: int, rounds: int, workdir: Path) -> dict[str, float]:
    import vowpalwabbit

    arms = arms_for(k)
    sim = Simulator(seed=1)
    reqs = sim.take(4000)
    url = f"sqlite:///{workdir / f'latency{k}.db'}"
    sel = Selector.open(url, lam=0.2, arms=arms, seed=0)
    native = vowpalwabbit.Workspace("--cb_explore_adf --squarecb -q ca -b 18 --quiet")
    arm_lines = [arm_line(a) for a in arms]
    made = 0
    # warm up: train both on the same traffic
    for r in reqs[:2000]:
        d = sel.choose(r.prompt, domain=r.domain)
        out = sim_run(r, d.arm)
        sel.reward(d.decision_id, em=out.em, tokens=out.tokens)
        made += 1
        lines = [shared_line(d.features), *arm_lines]
        native.learn(labeled(lines, d.arm_index, -(out.em - 0.2 * out.tokens / 1000), d.probability))
    sel.flush()
    ours, theirs = [], []
    pc = time.perf_counter_ns
    for i in range(n):
        r = reqs[i % len(reqs)]
        t0 = pc()
        d = sel.choose(r.prompt, domain=r.domain)
        t1 = pc()
        ours.append(t1 - t0)
        lines = [shared_line(d.features), *arm_lines]
        t2 = pc()
        native.predict(lines)
        theirs.append(pc() - t2)
        sel.reward(d.decision_id, em=1.0, tokens=500)
        made += 1
    sel.flush()
    # sustained throughput on one core: choose + reward, logging to SQLite, until every row is committed
    serving_clock = time.pthread_getcpuclockid(threading.get_ident())
    writer_clock = time.pthread_getcpuclockid(sel.writer._thread.ident)  # noqa: SLF001 - measuring its thread
    phases = []
    drained = True
    for _ in range(rounds):
        done = 0
        with one_core(cpu):
            cpu0 = time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID)
            s0, w0 = time.clock_gettime(serving_clock), time.clock_gettime(writer_clock)
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                r = reqs[done % len(reqs)]
                d = sel.choose(r.prompt, domain=r.domain)
                sel.reward(d.decision_id, em=1.0, tokens=500)
                done += 1
            drained = sel.drain(300) and drained
            elapsed = time.perf_counter() - t0
            cpu_s = time.clock_gettime(time.CLOCK_PROCESS_CPUTIME_ID) - cpu0
            serving_us = (time.clock_gettime(serving_clock) - s0) / done * 1e6
            writer_us = (time.clock_gettime(writer_clock) - w0) / done * 1e6
        made += done
        phases.append((done / elapsed, done / cpu_s, serving_us, writer_us))
    health = sel.health()
    counts = sel.store.counts()
    sel.close()
    native.finish()
    if not drained or health.dropped or health.rejected or counts["decisions"] != made or counts["outcomes"] != made:
        raise SystemExit(f"rows lost or not committed: made {made}, stored {counts}, drained {drained}: {health}")
    return {
        "arms": k,
        "p50_us": percentile_us(ours, 50),
        "p99_us": percentile_us(ours, 99),
        "vw_p50_us": percentile_us(theirs, 50),
        "vw_p99_us": percentile_us(theirs, 99),
        "ratio_p50": percentile_us(ours, 50) / percentile_us(theirs, 50),
        "pairs_per_s": statistics.median(ph[0] for ph in phases),
        "pairs_per_cpu_s": statistics.median(ph[1] for ph in phases),
        "serving_us": statistics.median(ph[2] for ph in phases),
        "writer_us": statistics.median(ph[3] for ph in phases),
        "spilled": health.spilled,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="timed choose() calls per arm count")
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of the throughput phase")
    ap.add_argument("--cpu", type=int, default=min(os.sched_getaffinity(0)), help="the core of the throughput phase")
    ap.add_argument("--rounds", type=int, default=1, help="throughput phases per arm count (medians are printed)")
    args = ap.parse_args()
    print(f"command: python benchmarks/choose_latency.py --n {args.n} --seconds {args.seconds} --cpu {args.cpu} "
          f"--rounds {args.rounds}")
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; throughput phase: every thread on "
          f"CPU {args.cpu}, timed until every row is committed")
    print("| arms | choose p50 (µs) | choose p99 (µs) | VW cb_explore_adf predict p50 (µs) | ratio p50 "
          "| decisions+rewards/s, one core (SQLite) | per CPU-second | CPU µs per pair: serving / writer "
          "| rows via spill (queue full) |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for k in (4, 8):
            r = run(k, args.n, args.seconds, args.cpu, args.rounds, Path(d))
            print(f"| {k} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['vw_p50_us']:.0f} | {r['ratio_p50']:.2f}× "
                  f"| {r['pairs_per_s']:.0f} | {r['pairs_per_cpu_s']:.0f} | {r['serving_us']:.0f} / {r['writer_us']:.0f} "
                  f"| {r['spilled']} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
