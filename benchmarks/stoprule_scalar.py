"""The stop-rule kernel on one run: the scalar form against the array form, in one process.

A single trace, a simulated request and the online check are batches of one
for :func:`stopbandit.bandit.stoprule.stops`; below
``SCALAR_MAX_CELLS`` probes × arms it applies the rule (``fires`` and
``_settle``, written once) to Python numbers, arm by arm, instead of to
arrays. This script times, alternating the two forms round by round in the
same process (so the machine's load hits both alike):

* ``kernel``: ``stops()`` on one simulated request's probe grid, all arms;
* ``sim run``: :func:`stopbandit.sim.run` (one arm on one request, its trace);
* ``reveal``: the counterfactuals of every arm on one logged trace;
* ``choose+simulate+reward``: a Selector (SQLite store) choosing an arm,
  the simulator running it, and the reward with its trace (which reveals
  the other arms' outcomes).

It prints per-call medians (µs) of each form and their ratio (array / scalar).

    python benchmarks/stoprule_scalar.py [--requests 400] [--rounds 5] [--arms 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from stopbandit import Selector
from stopbandit.bandit import stoprule
from stopbandit.bandit.arms import Arm
from stopbandit.bandit.trace import counterfactual
from stopbandit.sim import Simulator, run as sim_run
from stopbandit.sim.outcome import _grid

ARMS8 = (
    Arm("full", 1.01, 0), Arm("t99", 0.99, 0), Arm("careful", 0.97, 0), Arm("t95", 0.95, 0),
    Arm("balanced", 0.90, 0), Arm("t85", 0.85, 0), Arm("aggressive", 0.75, 512), Arm("cap256", 0.75, 256),
)


def _per_call_us(fn: Callable[[], int]) -> float:
    t0 = time.perf_counter_ns()
    calls = fn()
    return (time.perf_counter_ns() - t0) / calls / 1000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400, help="requests per round and form")
    ap.add_argument("--rounds", type=int, default=5, help="rounds, each timing both forms")
    ap.add_argument("--arms", type=int, default=8, choices=(4, 8))
    args = ap.parse_args()
    arms = ARMS8 if args.arms == 8 else (ARMS8[0], ARMS8[2], ARMS8[4], ARMS8[6])
    reqs = Simulator(seed=1).take(args.requests)
    traces = [sim_run(r, arms[0]).trace for r in reqs]
    scalar_cells = stoprule.SCALAR_MAX_CELLS

    def kernel() -> int:
        for r in reqs:
            stoprule.stops(_grid(r), arms, [r.think_len], [True], [r.answer_tokens])
        return len(reqs)

    def simulate() -> int:
        for i, r in enumerate(reqs):
            sim_run(r, arms[i % len(arms)])
        return len(reqs)

    def reveal() -> int:
        for t in traces:
            for a in arms:
                counterfactual(t, a)
        return len(traces)

    with tempfile.TemporaryDirectory() as tmp:
        sel = Selector.open(f"sqlite:///{Path(tmp) / 'bench.db'}", lam=0.2, arms=list(arms), seed=0)
        try:
            def pipeline() -> int:
                for r in reqs:
                    d = sel.choose(r.prompt, domain=r.domain)
                    out = sim_run(r, d.arm)
                    sel.reward(d.decision_id, em=out.em, tokens=out.tokens, trace=out.trace, reference=r.reference)
                return len(reqs)

            cases = {"kernel (stops, one request, all arms)": kernel, "sim run": simulate,
                     "reveal (every arm, one trace)": reveal, "choose+simulate+reward with trace": pipeline}
            times: dict[str, dict[str, list[float]]] = {k: {"array": [], "scalar": []} for k in cases}
            for name, fn in cases.items():  # warm-up: caches, VW, the store
                for cells in (0, scalar_cells):
                    stoprule.SCALAR_MAX_CELLS = cells
                    fn()
            for rnd in range(args.rounds):
                order = ("array", "scalar") if rnd % 2 == 0 else ("scalar", "array")
                for name, fn in cases.items():
                    for form in order:
                        stoprule.SCALAR_MAX_CELLS = 0 if form == "array" else scalar_cells
                        times[name][form].append(_per_call_us(fn))
            sel.drain(120)
        finally:
            stoprule.SCALAR_MAX_CELLS = scalar_cells
            sel.close()
    print(f"{args.arms} arms, {args.requests} requests x {args.rounds} rounds per form (median of rounds, µs per call)")
    print(f"{'case':<40} {'array':>9} {'scalar':>9} {'array/scalar':>13}")
    for name, by in times.items():
        a, s = statistics.median(by["array"]), statistics.median(by["scalar"])
        print(f"{name:<40} {a:>9.1f} {s:>9.1f} {a / s:>12.2f}x")


if __name__ == "__main__":
    main()
