"""Does the batch writer keep up with a serving loop that never waits?

A thread calls ``choose`` + ``reward`` back to back for ``--seconds`` (no
I/O between requests: the worst case for the writer thread, whose share of
the interpreter is what that loop leaves it) on a fresh SQLite store. A
sampler reads the writer's health every 50 ms. Reported per SQLite
statement size (rows per multi-row ``VALUES`` insert; the store's
``MULTI_ROWS``, against a baseline size in the same run): pairs served per
second, rows the writer committed per second during the loop, the deepest
queue and its age in seconds of serving (what a ``kill -9`` at that moment
would lose), and the writer's overload episodes (queue spilled because its
oldest row waited ``[store] timeout``).

    python benchmarks/writer_keepup.py --seconds 4 --sizes 16 256 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time

from stopbandit import Selector
from stopbandit.config import SelectorConfig, StoreConfig
from stopbandit.replay import store as store_module


def run_once(multi_rows: int, seconds: float) -> dict[str, float]:
    store_module.MULTI_ROWS = multi_rows  # read when a store opens
    d = tempfile.mkdtemp(prefix="sb-keepup-")
    url = f"sqlite:///{d}/replay.db"
    Selector.open(url, follow=False).close()
    cfg = SelectorConfig(seed=0, store=StoreConfig(spill_path=f"{d}/spill/sb", flush_interval=0.1, timeout=1.0))
    sel = Selector.open(url, config=cfg, follow=False)
    w = sel.writer
    depths: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            depths.append(w.health().queue_depth)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < seconds:
        key = f"k{n}"
        sel.choose("what is 2+2", domain="math", request_id=key)
        sel.reward(key, em=1.0, tokens=n)
        n += 1
    elapsed = time.perf_counter() - t0
    h = w.health()
    stop.set()
    sampler.join()
    sel.close()
    rate = 2 * n / elapsed  # rows produced per second
    return {"pairs_per_s": n / elapsed, "committed_per_s": h.written / elapsed, "max_depth": max(depths or [0]),
            "max_age_s": max(depths or [0]) / rate, "overloads": h.overloads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each serving loop")
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, store_module.MULTI_ROWS],
                    help="rows per SQLite VALUES statement to compare (the first is the baseline)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per size, interleaved (medians are printed)")
    args = ap.parse_args()
    print(f"Command: python benchmarks/writer_keepup.py --seconds {args.seconds:g} --sizes "
          f"{' '.join(map(str, args.sizes))} --repeats {args.repeats}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: dict[int, list[dict[str, float]]] = {m: [] for m in args.sizes}
    for _ in range(args.repeats):
        for m in args.sizes:
            results[m].append(run_once(m, args.seconds))
    print("| rows per statement | pairs served/s | rows committed/s (during the loop) | deepest queue (rows) "
          "| its age (s of serving) | overloads |")
    print("|---|---|---|---|---|---|")
    for m, rs in results.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print(f"| {m} | {med['pairs_per_s']:,.0f} | {med['committed_per_s']:,.0f} | {med['max_depth']:,.0f} "
              f"| {med['max_age_s']:.2f} | {med['overloads']:.0f} |")


if __name__ == "__main__":
    main()
