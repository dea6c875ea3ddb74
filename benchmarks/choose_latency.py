"""choose() latency and decisions+rewards throughput, against VW's own predict.

Prints, for 4 and 8 arms: choose() p50/p99 (features + policy + enqueue to the
batch writer, SQLite store), VW ``--cb_explore_adf --squarecb`` predict p50 on
the same multiline example in the same run, and their ratio; then sustained
decisions+rewards per second on one core with SQLite logging (flush included).

    python benchmarks/choose_latency.py [--n 20000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
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


def percentile_us(samples: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(samples) / 1000.0, q))


def run(k: int, n: int, seconds: float, workdir: Path) -> dict[str, float]:
    import vowpalwabbit

    arms = ARMS8[:k] if k == 8 else [ARMS8[0], ARMS8[2], ARMS8[4], ARMS8[6]]
    sim = Simulator(seed=1)
    reqs = sim.take(4000)
    url = f"sqlite:///{workdir / f'latency{k}.db'}"
    sel = Selector.open(url, lam=0.2, arms=arms, seed=0)
    native = vowpalwabbit.Workspace("--cb_explore_adf --squarecb -q ca -b 18 --quiet")
    arm_lines = [arm_line(a) for a in arms]
    # warm up: train both on the same traffic
    for r in reqs[:2000]:
        d = sel.choose(r.prompt, domain=r.domain)
        out = sim_run(r, d.arm)
        sel.reward(d.decision_id, em=out.em, tokens=out.tokens)
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
    sel.flush()
    # sustained throughput: choose + reward, logging to SQLite, flush included
    done = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        r = reqs[done % len(reqs)]
        d = sel.choose(r.prompt, domain=r.domain)
        sel.reward(d.decision_id, em=1.0, tokens=500)
        done += 1
    sel.flush(120)
    elapsed = time.perf_counter() - t0
    health = sel.health()
    sel.close()
    native.finish()
    if health.dropped or health.rejected:
        raise SystemExit(f"events lost: {health}")
    return {
        "arms": k,
        "p50_us": percentile_us(ours, 50),
        "p99_us": percentile_us(ours, 99),
        "vw_p50_us": percentile_us(theirs, 50),
        "vw_p99_us": percentile_us(theirs, 99),
        "ratio_p50": percentile_us(ours, 50) / percentile_us(theirs, 50),
        "pairs_per_s": done / elapsed,
        "spilled": health.spilled,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="timed choose() calls per arm count")
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of the throughput phase")
    args = ap.parse_args()
    print(f"command: python benchmarks/choose_latency.py --n {args.n} --seconds {args.seconds}")
    print("| arms | choose p50 (µs) | choose p99 (µs) | VW cb_explore_adf predict p50 (µs) | ratio p50 | decisions+rewards/s (SQLite) | rows via spill (queue full) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for k in (4, 8):
            r = run(k, args.n, args.seconds, Path(d))
            print(f"| {k} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['vw_p50_us']:.0f} | {r['ratio_p50']:.2f}× | {r['pairs_per_s']:.0f} | {r['spilled']} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
