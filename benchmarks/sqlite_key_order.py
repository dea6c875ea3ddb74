"""Why decision ids are time-ordered: SQLite insert cost of random vs time-ordered keys.

The replay store keeps a unique index on ``decisions.request_key``, another on
``outcomes.decision_key`` and a foreign key between them. This script builds
the same shape of tables in raw ``sqlite3`` (WAL, ``synchronous=NORMAL``,
foreign keys on, 16-row multi-row inserts like the batch writer, a commit
every 1,024 rows) and inserts ``--rows`` decision+outcome pairs, once with
random 128-bit hex keys (the ids before issue 4's third round) and once with
time-ordered ones (``Selector._new_key``: 64 bits of ``time.time_ns()``, then
64 random bits), alternating. It prints the process CPU time per pair.

    python benchmarks/sqlite_key_order.py [--rows 150000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
from pathlib import Path

FEATURES = ('{"len":3.2,"lbin":"l4","domain":"math","digits":0.01,"mathsym":0.0,"steps":1.0,"diff":0.4,'
            '"dbin":"d2","dd":"math.d2","prior":0.3}')
PROBS = ('{"full":0.1,"t99":0.1,"careful":0.5,"t95":0.1,"balanced":0.1,"t85":0.05,"aggressive":0.03,'
         '"cap256":0.02}')


def cpu_us_per_pair(ordered: bool, rows: int, seed: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        con = sqlite3.connect(Path(d) / "keys.db")
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
            con.execute(f"PRAGMA {pragma}")
        con.execute("CREATE TABLE decisions (id INTEGER PRIMARY KEY, request_key VARCHAR(128) UNIQUE, ts FLOAT, "
                    "domain VARCHAR(64), features TEXT, arm VARCHAR(64), arm_index INT, probabilities TEXT, "
                    "propensity FLOAT, lam FLOAT, token_scale FLOAT, policy_version VARCHAR(64), "
                    "experiment VARCHAR(32))")
        con.execute("CREATE INDEX ix_decisions_ts ON decisions (ts)")
        con.execute("CREATE INDEX ix_decisions_domain ON decisions (domain)")
        con.execute("CREATE TABLE outcomes (id INTEGER PRIMARY KEY, decision_key VARCHAR(128) UNIQUE "
                    "REFERENCES decisions (request_key) ON DELETE CASCADE, ts FLOAT, em FLOAT, tokens INT, "
                    "latency_ms FLOAT, trace TEXT, reference_key VARCHAR(32), status VARCHAR(16))")
        rng, t0 = random.Random(seed), time.time_ns()
        keys = [f"{t0 + 1000 * i:016x}{rng.getrandbits(64):016x}" if ordered else f"{rng.getrandbits(128):032x}"
                for i in range(rows)]
        d_sql = "INSERT INTO decisions (request_key, ts, domain, features, arm, arm_index, probabilities, " \
                "propensity, lam, token_scale, policy_version, experiment) VALUES "
        o_sql = "INSERT INTO outcomes (decision_key, ts, em, tokens, latency_ms, trace, reference_key, status) VALUES "
        start = time.process_time()
        for i in range(0, rows, 16):
            chunk = keys[i:i + 16]
            now = time.time()
            con.execute(d_sql + ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?)"] * len(chunk)),
                        [x for k in chunk for x in (k, now, "math", FEATURES, "careful", 2, PROBS, 0.5, 0.2, 1000.0,
                                                    "v1", "champion")])
            con.execute(o_sql + ",".join(["(?,?,?,?,?,?,?,?)"] * len(chunk)),
                        [x for k in chunk for x in (k, now, 1.0, 500, None, None, None, "ok")])
            if i % 1024 == 0:
                con.commit()
        con.commit()
        spent = time.process_time() - start
        con.close()
    return spent / rows * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=150_000, help="decision+outcome pairs per run")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of each key kind")
    args = ap.parse_args()
    print(f"command: python benchmarks/sqlite_key_order.py --rows {args.rows} --repeats {args.repeats}")
    print("| run | keys | CPU µs per decision+outcome |\n|---|---|---|")
    for r in range(args.repeats):
        for ordered in (False, True):
            us = cpu_us_per_pair(ordered, args.rows, seed=r)
            print(f"| {r + 1} | {'time-ordered' if ordered else 'random'} | {us:.1f} |", flush=True)


if __name__ == "__main__":
    main()
