"""How fast `stopbandit replay import` reads a CSV log, and `import + evaluate` (IPS/SNIPS) against a numpy floor.

    python benchmarks/import_speed.py                    # 200,000 rows, SQLite in a temporary directory
    python benchmarks/import_speed.py --rows 1000000 --db postgresql+psycopg://…

Setup (not timed): a seeded synthetic CSV of ``--rows`` events over the four
default arms, shaped like our export (request_id, ts, domain, the ten-feature
JSON object, arm, propensity, probabilities, em, tokens).

Timed, in one run on the same file:

* ``import``: :func:`stopbandit.replay.interchange.import_events` over
  :func:`stopbandit.replay.csvlog.read_csv`, the code path of ``replay
  import`` (every line validated, written in bulk), into an empty store;
* ``evaluate``: IPS and SNIPS of the fixed policy "always the first arm" on
  the imported store (:func:`stopbandit.replay.evaluation.evaluate`);
* ``numpy floor``: the same two estimates computed by reading the CSV with
  the ``csv`` module into numpy arrays (no validation, no database): the
  least work any tool that reads the file must do;
* ``parse``: :func:`read_csv` alone (every line validated into rows, nothing
  written), the part of the import that is ours;
* ``OBP`` (with ``--obp``, when Open Bandit Pipeline is installed): the same
  two estimates by OBP's ``OffPolicyEvaluation`` (``InverseProbabilityWeighting``,
  ``SelfNormalizedInverseProbabilityWeighting``), the CSV read with pandas into
  its ``bandit_feedback`` arrays (nothing validated beyond what pandas parses,
  nothing stored): the published tool's path over the same file;
* ``SQLite insert floor`` (SQLite only): the same rows, already built as
  tuples, inserted with the driver's ``executemany`` into a fresh migrated
  store in 10,000-row transactions: what the database itself costs per row
  with this schema (its unique keys, indexes, foreign key and checks), the
  bound no import into it can pass.

On a shared machine wall time is CPU time stretched by the load, so the
import is also reported per CPU second of this process (the database work
of SQLite runs in-process; a PostgreSQL server's does not), with the load
average.

The estimates of the two paths must agree (the script exits 1 if they do
not); the ratios ``(import + evaluate) / floor`` and the import rate are what
``docs/benchmarks.md`` reports.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

DOMAINS = ("math", "science", "code", "trivia")


def write_csv(path: str, rows: int, seed: int, arms: tuple[str, ...]) -> None:
    """``rows`` synthetic logged events in our CSV export's columns."""
    rng = np.random.default_rng(seed)
    k = len(arms)
    logits = rng.normal(size=(rows, k))
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    probs = np.maximum(probs, 0.02)
    probs /= probs.sum(axis=1, keepdims=True)
    u = rng.random(rows)
    chosen = np.minimum((probs.cumsum(axis=1) < u[:, None]).sum(axis=1), k - 1)
    em = (rng.random(rows) < 0.3 + 0.1 * chosen).astype(int)
    tokens = rng.integers(20, 900, size=rows)
    feats = rng.random((rows, 10))
    names = [f"f{j}" for j in range(10)]
    t0 = 1_700_000_000.0
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["request_id", "ts", "domain", "features", "arm", "propensity", "probabilities", "em", "tokens"])
        for i in range(rows):
            p = probs[i]
            w.writerow([
                f"r{seed}-{i:09d}", repr(t0 + i * 0.01), DOMAINS[i % 4],
                json.dumps(dict(zip(names, (round(float(x), 6) for x in feats[i]))), separators=(",", ":")),
                arms[chosen[i]], repr(float(p[chosen[i]])),
                json.dumps({a: float(x) for a, x in zip(arms, p)}, separators=(",", ":")),
                int(em[i]), int(tokens[i]),
            ])


def numpy_floor(path: str, arm: str) -> tuple[float, float, float]:
    """(seconds, IPS, SNIPS) of EM for "always ``arm``", reading the CSV with the csv module."""
    t0 = time.perf_counter()
    arm_col: list[str] = []
    prop: list[str] = []
    em: list[str] = []
    with open(path, encoding="utf-8", newline="") as fh:
        r = csv.reader(fh)
        header = next(r)
        ia, ip, ie = header.index("arm"), header.index("propensity"), header.index("em")
        for row in r:
            arm_col.append(row[ia])
            prop.append(row[ip])
            em.append(row[ie])
    match = np.array(arm_col) == arm
    w = match / np.array(prop, dtype=float)
    y = np.array(em, dtype=float)
    ips = float(np.mean(w * y))
    snips = float(np.sum(w * y) / np.sum(w))
    return time.perf_counter() - t0, ips, snips


def obp_path(path: str, arm_names: tuple[str, ...], arm: str) -> tuple[float, float, float]:
    """(seconds, IPS, SNIPS) of EM for "always ``arm``" through Open Bandit Pipeline, the CSV read with pandas."""
    import pandas as pd
    from obp.ope import InverseProbabilityWeighting, OffPolicyEvaluation, SelfNormalizedInverseProbabilityWeighting

    t0 = time.perf_counter()
    df = pd.read_csv(path, usecols=["arm", "propensity", "em"])
    action = df["arm"].map({a: i for i, a in enumerate(arm_names)}).to_numpy(dtype=int)
    n, k = len(df), len(arm_names)
    feedback = {"n_rounds": n, "n_actions": k, "action": action, "reward": df["em"].to_numpy(dtype=float),
                "pscore": df["propensity"].to_numpy(dtype=float), "position": None}
    dist = np.zeros((n, k, 1))
    dist[:, arm_names.index(arm), 0] = 1.0
    ope = OffPolicyEvaluation(bandit_feedback=feedback, ope_estimators=[
        InverseProbabilityWeighting(), SelfNormalizedInverseProbabilityWeighting()])
    values = ope.estimate_policy_values(action_dist=dist)
    return time.perf_counter() - t0, float(values["ipw"]), float(values["snipw"])


def sqlite_insert_floor(db: str, path: str, arms) -> float:
    """CPU seconds to insert the CSV's rows, pre-built as driver tuples, into a fresh migrated SQLite store."""
    import sqlite3

    from stopbandit.replay import migrate
    from stopbandit.replay.csvlog import read_csv

    migrate.upgrade(f"sqlite:///{db}")
    dec, out = [], []
    for item in read_csv(path, arms, token_scale=1000.0):
        d, o = item.decision, item.outcome
        dec.append((d["request_key"], d["ts"], d["domain"], json.dumps(d["features"]), d["arm"], d["arm_index"],
                    json.dumps(d["probabilities"]), d["propensity"], d["lam"], d["token_scale"],
                    d["policy_version"], d["experiment"]))
        out.append((o["decision_key"], o["ts"], o["em"], o["tokens"], None, None, None, o["status"]))
    con = sqlite3.connect(db)
    for pragma in ("journal_mode=WAL", "foreign_keys=ON", "synchronous=NORMAL"):
        con.execute(f"PRAGMA {pragma}")
    c0 = time.process_time()
    for i in range(0, len(dec), 10_000):
        con.executemany("INSERT INTO decisions (request_key, ts, domain, features, arm, arm_index, probabilities, "
                        "propensity, lam, token_scale, policy_version, experiment) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", dec[i:i + 10_000])
        con.executemany("INSERT INTO outcomes (decision_key, ts, em, tokens, latency_ms, trace, reference_key, "
                        "status) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", out[i:i + 10_000])
        con.commit()
    spent = time.process_time() - c0
    con.close()
    return spent


def print_summary(out: dict, as_json: bool, ok: bool) -> None:
    """Print ``out`` as one JSON line or as aligned ``key: value`` lines; exit 1 when the check failed."""
    if as_json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>32}: {v}")
    if not ok:
        sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--db", default=None, help="store URL (default: SQLite in a temporary directory)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--obp", action="store_true", help="also time Open Bandit Pipeline on the same file (needs obp)")
    args = ap.parse_args()
    if args.obp:
        try:
            import obp.ope  # noqa: F401 - checked before the long import, not used here
        except ImportError as exc:
            sys.exit(f"--obp needs Open Bandit Pipeline ({exc}): pip install --no-deps obp==0.4.1 && "
                     "pip install scikit-learn pandas seaborn")

    from stopbandit.bandit.arms import arms_from_config
    from stopbandit.replay import migrate
    from stopbandit.replay.candidates import FixedArm
    from stopbandit.replay.csvlog import read_csv
    from stopbandit.replay.evaluation import evaluate
    from stopbandit.replay.interchange import import_events
    from stopbandit.replay.options import ReplayOptions
    from stopbandit.replay.store import ReplayStore

    arms = arms_from_config(None)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "log.csv")
        write_csv(path, args.rows, args.seed, arms.names)
        url = args.db or f"sqlite:///{os.path.join(tmp, 'store.db')}"
        migrate.upgrade(url)
        store = ReplayStore(url)

        t0, c0 = time.perf_counter(), time.process_time()
        report = import_events(store, lambda: read_csv(path, arms, token_scale=1000.0),
                               path=path, fmt="csv", on_error="skip")
        t_import, c_import = time.perf_counter() - t0, time.process_time() - c0
        if report.inserted != args.rows:
            sys.exit(f"imported {report.inserted} of {args.rows} rows: {report.errors[:3]}")

        t0 = time.perf_counter()
        ev = evaluate(store, arms, FixedArm(index=0, name=arms.names[0]), ["ips", "snips"], lam=0.0,
                      token_scale=1000.0, options=ReplayOptions(progress=False, jobs=1))
        t_eval = time.perf_counter() - t0
        t_floor, ips, snips = numpy_floor(path, arms.names[0])
        t_obp = obp_ips = obp_snips = None
        if args.obp:
            t_obp, obp_ips, obp_snips = obp_path(path, arms.names, arms.names[0])
        store.dispose()

        c0 = time.process_time()
        parsed = sum(1 for _ in read_csv(path, arms, token_scale=1000.0))
        c_parse = time.process_time() - c0
        c_insert = None
        if url.startswith("sqlite"):
            c_insert = sqlite_insert_floor(os.path.join(tmp, "floor.db"), path, arms)

    ours = (ev.estimates["ips"]["em"].value, ev.estimates["snips"]["em"].value)
    agree = abs(ours[0] - ips) <= 1e-9 * max(1.0, abs(ips)) and abs(ours[1] - snips) <= 1e-9 * max(1.0, abs(snips))
    if t_obp is not None:
        agree = agree and abs(ours[0] - obp_ips) <= 1e-9 and abs(ours[1] - obp_snips) <= 1e-9
    out = {
        "rows": args.rows, "store": url.split(":", 1)[0], "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "import_s": round(t_import, 2), "import_rows_per_s": round(args.rows / t_import),
        "import_rows_per_cpu_s": round(args.rows / c_import), "load_avg_1min": round(os.getloadavg()[0], 1),
        "parse_rows_per_cpu_s": round(parsed / c_parse),
        "sqlite_insert_floor_rows_per_cpu_s": None if c_insert is None else round(args.rows / c_insert),
        "import_over_insert_floor": None if c_insert is None else round(c_import / c_insert, 2),
        "evaluate_s": round(t_eval, 2), "numpy_floor_s": round(t_floor, 2),
        "import_plus_evaluate_over_floor": round((t_import + t_eval) / t_floor, 1),
        "ips": [ours[0], ips], "snips": [ours[1], snips], "agree": agree,
    }
    if t_obp is not None:
        out.update({"obp_s": round(t_obp, 2), "obp_ips_snips": [obp_ips, obp_snips],
                    "import_plus_evaluate_over_obp": round((t_import + t_eval) / t_obp, 1),
                    "evaluate_over_obp": round(t_eval / t_obp, 2)})
    print_summary(out, args.json, agree)


if __name__ == "__main__":
    main()
