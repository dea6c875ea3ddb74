"""CPU instructions per decision+reward on the serving path, counted by valgrind (independent of the host's load).

Why: on a shared 2-core machine the wall-clock and even the CPU-time figures
of ``choose_latency.py`` move by up to 2× within minutes. The number of
instructions a decision+reward executes does not: it is the same on a busy
and on an idle host, so a change to the serving path can be judged by it in
one run, against a baseline tree, as a ratio.

What is counted: the whole process (serving thread, batch writer, follower)
under ``valgrind --tool=cachegrind``, for the Selector loop of
``choose_latency.py`` (SQLite store, choose + reward with em=1, tokens=500,
after a warm-up of simulator traffic), run twice with ``--small`` and
``--large`` loop lengths; the difference divided by the difference in
length is the cost of one decision+reward, with start-up and warm-up
cancelled out. It counts instructions, not cycles: cache misses (VW's weight
tables are megabytes) are not in it, which is why the latency benchmark
stays the measure of record.

    python benchmarks/serving_instructions.py [--arms 8] [--small 500] [--large 2500] [--baseline DIR]

``--baseline DIR``: also count a copy of an older tree (e.g. made with
``git archive <commit> | tar -x -C DIR``) and print the ratio.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def loop(root: str, k: int, n: int) -> None:
    """The measured program: runs in the child, with ``root``'s stopbandit first on sys.path."""
    sys.path.insert(0, root)  # before anything imports stopbandit: the tree under test's package
    import stopbandit
    from choose_latency import arms_for  # this script's directory: the same arms as the latency benchmark
    from stopbandit import Selector
    from stopbandit.sim import Simulator, run as sim_run

    if not stopbandit.__file__.startswith(root):
        raise SystemExit(f"imported {stopbandit.__file__}, not the tree under {root}")
    arms = arms_for(k)
    reqs = Simulator(seed=1).take(4000)
    with tempfile.TemporaryDirectory() as d:
        sel = Selector.open(f"sqlite:///{d}/instr.db", lam=0.2, arms=arms, seed=0)
        for r in reqs[:300]:
            dd = sel.choose(r.prompt, domain=r.domain)
            out = sim_run(r, dd.arm)
            sel.reward(dd.decision_id, em=out.em, tokens=out.tokens)
        sel.drain(60)
        for i in range(n):
            r = reqs[i % len(reqs)]
            dd = sel.choose(r.prompt, domain=r.domain)
            sel.reward(dd.decision_id, em=1.0, tokens=500)
        if not sel.drain(300):
            raise SystemExit("the store did not drain")
        counts = sel.store.counts()
        sel.close()
    if counts["decisions"] != 300 + n or counts["outcomes"] != 300 + n:
        raise SystemExit(f"rows lost: {counts}")


def count(root: Path, k: int, n: int) -> int:
    """Instructions executed by the whole process for a loop of ``n``."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "cg.out"
        cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}",
               sys.executable, __file__, "--child", str(root), str(k), str(n)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        if proc.returncode != 0 or not out.exists():
            raise SystemExit(f"valgrind run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        m = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
        if m is None:
            raise SystemExit(f"no summary line in {out}")
        return int(m.group(1))


def per_pair(root: Path, k: int, small: int, large: int) -> float:
    with ThreadPoolExecutor(2) as pool:  # the two valgrind runs side by side (2 cores)
        a, b = pool.map(lambda n: count(root, k, n), (small, large))
    return (b - a) / (large - small)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        loop(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", type=int, choices=(4, 8), default=8)
    ap.add_argument("--small", type=int, default=500, help="loop length of the first run")
    ap.add_argument("--large", type=int, default=2500, help="loop length of the second run")
    ap.add_argument("--baseline", type=Path, help="a copy of another tree to count the same way")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    if not args.large > args.small >= 0:
        raise SystemExit("--large must be greater than --small")
    print(f"command: python benchmarks/serving_instructions.py --arms {args.arms} --small {args.small} "
          f"--large {args.large}" + (f" --baseline {args.baseline}" if args.baseline else ""))
    ours = per_pair(ROOT, args.arms, args.small, args.large)
    print(f"| tree | arms | instructions per decision+reward |\n|---|---|---|\n| {ROOT} | {args.arms} | {ours:,.0f} |")
    if args.baseline:
        base = per_pair(args.baseline.resolve(), args.arms, args.small, args.large)
        print(f"| {args.baseline} | {args.arms} | {base:,.0f} |")
        print(f"ratio (this tree / baseline): {ours / base:.3f}")


if __name__ == "__main__":
    main()
