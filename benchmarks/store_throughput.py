"""Decisions+outcomes per second through the batch writer, as a ratio to a raw executemany.

For SQLite (a temp file) and, when ``STOPBANDIT_TEST_PG_URL`` (or ``--pg``) is set,
PostgreSQL: the same rows are written (1) by a raw SQLAlchemy Core
``executemany`` insert in big transactions, and (2) through ``BatchWriter``
(``submit_*`` from the caller's thread, group commit in the background,
``flush`` included in the time). An *event* is one decision plus its outcome.
The JSON encoder in use is printed: the store uses orjson when it is installed
(``stopbandit.replay.jsoncodec.dumps``), the raw baseline always SQLAlchemy's.

    python benchmarks/store_throughput.py [--events 100000] [--pg URL]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from stopbandit.replay import jsoncodec
from stopbandit.replay.store import DECISIONS, OUTCOMES, ReplayStore, outcome_row
from stopbandit.replay.writer import BatchWriter

PROBS = {"full": 0.05, "careful": 0.7, "balanced": 0.2, "aggressive": 0.05}


def rows(n: int, tag: str) -> tuple[list[dict], list[dict]]:
    decisions, outcomes = [], []
    now = time.time()
    for i in range(n):
        key = f"{tag}-{i}"
        decisions.append(dict(
            request_key=key, ts=now, domain="math",
            features={"len": 3.2, "lbin": "l4", "digits": 0.1, "mathsym": 0.02, "steps": 3.0, "diff": 0.41,
                      "dbin": "d2", "dd": "math.d2", "prior": 0.3, "domain": "math"},
            arm="careful", arm_index=1, probabilities=PROBS, propensity=0.7, lam=0.2, token_scale=1000.0,
            policy_version="bench", experiment="champion"))
        outcomes.append(outcome_row(key, float(i % 2), 400 + i % 500, 3.0, now))
    return decisions, outcomes


def raw_insert(store: ReplayStore, decisions: list[dict], outcomes: list[dict], chunk: int = 5000) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(decisions), chunk):
        with store.engine.begin() as conn:
            conn.execute(DECISIONS.insert(), decisions[i:i + chunk])
            conn.execute(OUTCOMES.insert(), outcomes[i:i + chunk])
    return time.perf_counter() - t0


def writer_insert(store: ReplayStore, decisions: list[dict], outcomes: list[dict]) -> float:
    w = BatchWriter(store, batch_size=5000, max_queue=len(decisions) * 2 + 10,
                    spill_path=os.path.join(tempfile.mkdtemp(prefix="sb-bench-"), "spill"))
    t0 = time.perf_counter()
    for d, o in zip(decisions, outcomes):
        w.submit_decision(d)
        w.submit_outcome(o)
    w.flush(600)
    elapsed = time.perf_counter() - t0
    h = w.health()
    w.close()
    if h.spilled or h.rejected or h.dropped:
        raise SystemExit(f"writer did not write everything: {h}")
    return elapsed


def bench(url: str, n: int) -> tuple[float, float]:
    store = ReplayStore(url, migrate_schema=True)
    d1, o1 = rows(n, "raw")
    d2, o2 = rows(n, "writer")
    raw = raw_insert(store, d1, o1)
    ours = writer_insert(store, d2, o2)
    c = store.counts()
    assert c["decisions"] == c["outcomes"] == 2 * n, c
    store.dispose()
    return n / raw, n / ours


def fresh_pg(url: str) -> tuple[str, callable]:
    name = f"sb_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(url).set(database=name).render_as_string(hide_password=False), drop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--pg", default=os.environ.get("STOPBANDIT_TEST_PG_URL"))
    args = ap.parse_args()
    print(f"command: python benchmarks/store_throughput.py --events {args.events}"
          + (" --pg <throwaway PostgreSQL 15>" if args.pg else ""))
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f}; writer's JSON encoder: {jsoncodec.accelerator()}")
    print("| backend | raw executemany (events/s) | batch writer (events/s) | writer / raw |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        raw, ours = bench(f"sqlite:///{d}/bench.db", args.events)
        print(f"| SQLite (WAL) | {raw:,.0f} | {ours:,.0f} | {ours / raw:.2f}× |", flush=True)
    if args.pg:
        url, drop = fresh_pg(args.pg)
        try:
            raw, ours = bench(url, args.events)
            print(f"| PostgreSQL 15 | {raw:,.0f} | {ours:,.0f} | {ours / raw:.2f}× |", flush=True)
        finally:
            drop()


if __name__ == "__main__":
    main()
