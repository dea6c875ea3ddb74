"""Evaluation of a Parquet export on Ray: equality with the store's pass, and scaling from 1 to 2 workers.

    python benchmarks/parquet_scale.py                 # 200,000 events, 4 partitions
    python benchmarks/parquet_scale.py --rows 400000 --json

Setup (not timed): the seeded synthetic CSV of ``benchmarks/import_speed.py``
imported into a SQLite store in a temporary directory.

Timed, in one run:

* ``export``: ``replay export --format parquet`` (:func:`export_parquet`);
* ``store``: IPS + SNIPS of the uniform policy over the store, one process
  (:func:`evaluate`, ``jobs=1``);
* ``local``: the same over the partitions, map and reduce in this process;
* ``ray 1`` / ``ray 2``: the same on a local Ray cluster of 1 and 2 CPUs
  (one task per partition); the cluster's start and its workers' first
  import of the map step are timed apart (``ray_start_s``): a running
  cluster is reused.

Every path's estimates must be the store's floats (exit 1 otherwise). The
100M-event figure is a linear extrapolation of the measured per-worker rate,
not a measurement: it assumes as many partitions as workers can take and the
same per-event cost, and leaves out reading from remote storage.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))


def _warm() -> None:
    import time

    import stopbandit.replay.parquet  # noqa: F401

    time.sleep(0.5)  # holds its CPU, so that each warm-up task lands on a worker of its own


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import ray

    from import_speed import print_summary, write_csv
    from stopbandit.bandit.arms import arms_from_config
    from stopbandit.replay import migrate
    from stopbandit.replay.candidates import CandidateContext, make_candidate
    from stopbandit.replay.csvlog import read_csv
    from stopbandit.replay.evaluation import evaluate, evaluate_parquet
    from stopbandit.replay.interchange import import_events
    from stopbandit.replay.options import ReplayOptions
    from stopbandit.replay.parquet import export_parquet
    from stopbandit.replay.store import ReplayStore

    arms = arms_from_config(None)
    ests = ["ips", "snips"]
    opts = ReplayOptions(progress=False, jobs=1)
    out: dict = {"rows": args.rows, "machine": f"{os.cpu_count()} cores, {platform.machine()}"}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "log.csv")
        write_csv(path, args.rows, args.seed, arms.names)
        url = f"sqlite:///{os.path.join(tmp, 'store.db')}"
        migrate.upgrade(url)
        store = ReplayStore(url)
        import_events(store, lambda: read_csv(path, arms, token_scale=1000.0), path=path, fmt="csv", arms=arms)
        cand = make_candidate("uniform", CandidateContext(store, arms, 0.2, False))

        t0 = time.perf_counter()
        summary = export_parquet(store, os.path.join(tmp, "parts"), arms)
        out["export_s"] = round(time.perf_counter() - t0, 2)
        out["partitions"] = len(summary["files"])

        def timed(fn):
            t = time.perf_counter()
            ev = fn()
            return time.perf_counter() - t, ev

        t_store, ref = timed(lambda: evaluate(store, arms, cand, ests, lam=0.2, token_scale=1000.0, options=opts))
        parts = os.path.join(tmp, "parts")
        t_local, local = timed(lambda: evaluate_parquet(parts, arms, cand, ests, lam=0.2, token_scale=1000.0,
                                                        options=opts, engine="local"))
        runs = {"store": (t_store, ref), "local": (t_local, local)}
        for workers in (1, 2):
            t = time.perf_counter()
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
            # start every worker process and import the map step there (what a long-running cluster has done)
            ray.get([ray.remote(num_cpus=1)(_warm).remote() for _ in range(workers)])
            out[f"ray_start_s_{workers}"] = round(time.perf_counter() - t, 2)
            try:
                runs[f"ray {workers}"] = timed(lambda: evaluate_parquet(
                    parts, arms, cand, ests, lam=0.2, token_scale=1000.0, options=opts, engine="ray",
                    workers=workers))
            finally:
                ray.shutdown()
        store.dispose()

    def values(ev):
        return {e: {m: est.to_dict() for m, est in ms.items()} for e, ms in ev.estimates.items()}

    same = all(values(ev) == values(ref) and ev.counts.to_dict() == ref.counts.to_dict() for _, ev in runs.values())
    for name, (t, _) in runs.items():
        out[f"{name}_s"] = round(t, 2)
        out[f"{name}_events_per_s"] = round(args.rows / t)
    out["speedup_ray_2_over_1"] = round(runs["ray 1"][0] / runs["ray 2"][0], 2)
    per_worker = args.rows / runs["ray 1"][0]
    out["extrapolated_100M_events_min"] = {str(w): round(1e8 / (per_worker * w) / 60, 1) for w in (2, 16, 64)}
    out["load_avg_1min"] = round(os.getloadavg()[0], 1)
    out["same_floats"] = same
    out["ips_snips"] = [ref.estimates["ips"]["em"].value, ref.estimates["snips"]["em"].value]
    print_summary(out, args.json, same)


if __name__ == "__main__":
    main()
