"""Soak: minutes of mixed traffic from 4 processes × 4 threads through a database restart, a hang and a full disk.

The script starts its own throwaway PostgreSQL 15 server (``tests/reliability/pgserver.py``:
initdb in a temp dir, a free port, run as ``postgres`` when root), opens one
Selector per process on it, and drives paced traffic: every thread calls
``choose`` at ``--rate`` requests/s and rewards 70% at once, 20% after 0.2–3 s
(delayed), 10% never, and repeats 5% of its rewards (idempotency); process 0
saves a snapshot every 20 s, which the others hot-swap to; process 1 changes
λ every 30 s. Three failures, one after the other:

* outage: the database is stopped (``pg_ctl stop -m fast``) for ``--outage-s``
  seconds and started again;
* hang: the postmaster and every backend are SIGSTOPped for ``--hang-s``
  seconds (sockets open, nothing answers: a hung server or a partition) and
  SIGCONTed; every database call has a deadline (``--timeout``);
* full disk: the spill directory is a small tmpfs (``--disk-mb``); the database
  is stopped *and* the tmpfs filled to its last byte for ``--disk-s`` seconds,
  so neither the store nor the spill takes rows (they are held in memory);
  then space returns and the database starts. Without the right to mount a
  tmpfs (not root) the spill goes to a private temp directory and this phase
  is skipped (the report says so).

At the end every process drains its spill, and the database is compared with
what the processes were told was accepted.

Prints, as markdown: events sent and stored, lost and duplicated (both must
be 0), the largest spill backlog and in-memory hold, and p50/p99 ``choose``
latency outside the failures and during each, with the outage/normal p99
ratio (target ≤ 2×).

    python benchmarks/soak.py --quick            # 1 minute (10 s outage, 8 s hang, 8 s full disk)
    python benchmarks/soak.py --minutes 10       # 10 minutes (30 s each)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPTS = [
    ("math", "What is {a} + {b}?"),
    ("math", "Let x = {a}{b} and y = {b}{a}. Find x * y, then the sum of its digits; explain every step."),
    ("trivia", "Which river runs through the old capital of region {a}?"),
    ("trivia", "Name the composer whose student's student wrote opera {a}; explain why each link holds."),
]


def _worker(proc: int, url: str, spill: str, out_dir: str, threads: int, rate: float, seconds: float,
            durable: bool, timeout: float, go: mp.Event, ready: mp.Queue) -> None:
    """One serving process: ``threads`` paced threads of mixed traffic on one Selector."""
    from stopbandit import Selector
    from stopbandit.config import SelectorConfig, StoreConfig
    from stopbandit.errors import StopbanditError

    cfg = SelectorConfig(seed=proc, follow_interval=0.5,
                         store=StoreConfig(spill_path=spill, durable=durable, retry_interval=0.5, timeout=timeout))
    sel = Selector.open(url, config=cfg)
    ready.put(proc)
    go.wait()
    t_end = time.time() + seconds
    lock = threading.Lock()
    stats = {"decisions": 0, "outcomes": 0, "repeats": 0, "errors": [], "snapshots": 0, "lambda_changes": 0}
    sent_d: list[str] = []
    sent_o: list[str] = []
    backlog_max = [0]
    held_max = [0]

    def thread(t: int) -> None:
        rng = random.Random(proc * 1000 + t)
        lat, when = array("d"), array("d")
        delayed: list[tuple[float, str, float, int]] = []
        rewarded: list[tuple[str, float, int]] = []
        my_d, my_o = [], []
        period, nxt, i = 1.0 / rate, time.perf_counter(), 0
        last_snapshot = last_lambda = time.time()

        def give(key: str, em: float, tokens: int) -> None:
            sel.reward(key, em=em, tokens=tokens)
            my_o.append(key)
            rewarded.append((key, em, tokens))

        try:
            while time.time() < t_end:
                nxt += period
                pause = nxt - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                domain, text = PROMPTS[rng.randrange(len(PROMPTS))]
                key = f"w{proc}-t{t}-{i}"
                i += 1
                t0 = time.perf_counter_ns()
                d = sel.choose(text.format(a=rng.randrange(10, 99), b=rng.randrange(10, 99)), domain=domain,
                               request_id=key)
                lat.append((time.perf_counter_ns() - t0) / 1000.0)
                when.append(time.time())
                my_d.append(key)
                em, tokens = float(rng.random() < 0.8), rng.randrange(100, 1500)
                r = rng.random()
                if r < 0.7:
                    give(d.decision_id, em, tokens)
                elif r < 0.9:
                    delayed.append((time.time() + rng.uniform(0.2, 3.0), d.decision_id, em, tokens))
                if rewarded and rng.random() < 0.05:
                    give_again = rewarded[rng.randrange(len(rewarded))]
                    sel.reward(give_again[0], em=give_again[1], tokens=give_again[2])  # idempotent repeat
                    with lock:
                        stats["repeats"] += 1
                now = time.time()
                while delayed and delayed[0][0] <= now:
                    _, k, e, tok = delayed.pop(0)
                    give(k, e, tok)
                if proc == 0 and t == 0 and now - last_snapshot > 20:
                    last_snapshot = now
                    try:
                        sel.snapshot()
                        with lock:
                            stats["snapshots"] += 1
                    except StopbanditError:
                        pass  # the store is down: no snapshot this time
                if proc == 1 and t == 0 and now - last_lambda > 30:
                    last_lambda = now
                    sel.set_lambda(round(rng.uniform(0.1, 0.4), 3), reason="soak", who="soak")
                    with lock:
                        stats["lambda_changes"] += 1
            for _, k, e, tok in delayed:  # the traffic stops: the rest of the delayed rewards arrive now
                give(k, e, tok)
        except BaseException as exc:  # noqa: BLE001 - reported
            with lock:
                stats["errors"].append(repr(exc))
        with lock:
            stats["decisions"] += len(my_d)
            stats["outcomes"] += len(my_o)
            sent_d.extend(my_d)
            sent_o.extend(my_o)
        with open(Path(out_dir) / f"lat-{proc}-{t}.bin", "wb") as fh:
            lat.tofile(fh)
            when.tofile(fh)

    def monitor() -> None:
        while time.time() < t_end + 1:
            h = sel.health()
            backlog_max[0] = max(backlog_max[0], h.spill_backlog)
            held_max[0] = max(held_max[0], h.unspilled)
            time.sleep(0.2)

    workers = [threading.Thread(target=thread, args=(t,)) for t in range(threads)]
    mon = threading.Thread(target=monitor, daemon=True)
    mon.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 300)
        if w.is_alive():
            stats["errors"].append("a serving thread did not finish (deadlock?)")
    t_drain = time.time()
    drained = sel.drain(300)
    h = sel.health()
    stats.update(drained=drained, drain_s=round(time.time() - t_drain, 2), outages=h.outages,
                 spilled=h.spilled, replayed=h.replayed, dropped=h.dropped, rejected=h.rejected,
                 max_spill_backlog=max(h.max_spill_backlog, backlog_max[0]), policy_version=h.policy_version,
                 max_unspilled=held_max[0], conflicts=h.conflicts, replay_errors=h.replay_errors)
    sel.close()
    with open(Path(out_dir) / f"sent-{proc}.json", "w") as fh:
        json.dump({"stats": stats, "decisions": sent_d, "outcomes": sent_o}, fh)


def _pct(values, q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if len(values) else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="1 minute: 10 s outage, 8 s hang, 8 s full disk")
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--rate", type=float, default=25.0, help="choose() calls per second per thread")
    ap.add_argument("--outage-s", type=float, default=None, help="database downtime (default 10 s quick, 30 s)")
    ap.add_argument("--hang-s", type=float, default=None, help="SIGSTOP of the server (default 8 s quick, 30 s)")
    ap.add_argument("--disk-s", type=float, default=None, help="full disk + database down (default 8 s quick, 30 s)")
    ap.add_argument("--disk-mb", type=int, default=32, help="size of the spill tmpfs")
    ap.add_argument("--timeout", type=float, default=2.0, help="[store] timeout: the deadline of a database call")
    ap.add_argument("--durable", action="store_true", help="Selector.open(..., durable=True)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    minutes = 1.0 if args.quick else args.minutes
    outage_s = args.outage_s if args.outage_s is not None else (10.0 if args.quick else 30.0)
    hang_s = args.hang_s if args.hang_s is not None else (8.0 if args.quick else 30.0)
    disk_s = args.disk_s if args.disk_s is not None else (8.0 if args.quick else 30.0)
    seconds = minutes * 60
    import numpy as np
    from sqlalchemy import func, select

    from stopbandit.replay import migrate
    from stopbandit.replay.store import DECISIONS, OUTCOMES, SNAPSHOTS, ReplayStore
    from tests.reliability.helpers import fill, mount_tmpfs
    from tests.reliability.pgserver import PgServer

    load0 = [round(x, 2) for x in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="sb-soak-"))
    spill_dir = work / "spill"
    tmpfs = mount_tmpfs(spill_dir, f"{args.disk_mb}m") is None
    if not tmpfs:
        spill_dir.mkdir(mode=0o700, exist_ok=True)
    server = PgServer()
    phases: list[tuple[str, float, float]] = []
    try:
        server.start()
        url = server.create_database("soak")
        migrate.upgrade(url)
        ctx = mp.get_context("spawn")
        go, ready = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(p, url, str(spill_dir / "sb"), str(work), args.threads,
                                                   args.rate, seconds, args.durable, args.timeout, go, ready))
                 for p in range(args.processes)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=120)
        t0 = time.time()
        go.set()

        def at(fraction: float) -> None:
            time.sleep(max(0.0, t0 + fraction * seconds - time.time()))

        at(0.2)
        t = time.time()
        server.stop("fast")
        time.sleep(outage_s)
        server.start()
        phases.append(("outage (server stopped)", t, time.time()))
        at(0.45)
        t = time.time()
        server.freeze()
        time.sleep(hang_s)
        server.thaw()
        phases.append(("hang (server SIGSTOPped)", t, time.time()))
        if tmpfs:
            at(0.7)
            t = time.time()
            server.stop("fast")
            filler = fill(spill_dir)
            time.sleep(disk_s)
            filler.unlink()
            time.sleep(1.0)  # the held rows reach the spill before the store returns
            server.start()
            phases.append(("full disk + server stopped", t, time.time()))
        for p in procs:
            p.join(seconds + 900)
        hung = [p.pid for p in procs if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()

        sent = [json.loads((work / f"sent-{p}.json").read_text()) for p in range(args.processes)
                if (work / f"sent-{p}.json").exists()]
        sent_d = {k for s in sent for k in s["decisions"]}
        sent_o = {k for s in sent for k in s["outcomes"]}
        store = ReplayStore(url)
        with store.engine.connect() as conn:
            stored_d = [r[0] for r in conn.execute(select(DECISIONS.c.request_key))]
            stored_o = [r[0] for r in conn.execute(select(OUTCOMES.c.decision_key))]
            n_snap = conn.execute(select(func.count()).select_from(SNAPSHOTS)).scalar_one()
        store.dispose()
        lat, when = [], []
        for f in work.glob("lat-*.bin"):
            raw = np.fromfile(f, dtype="d")
            half = len(raw) // 2
            lat.append(raw[:half])
            when.append(raw[half:])
        lat_a, when_a = np.concatenate(lat), np.concatenate(when)
        in_any = np.zeros(len(lat_a), dtype=bool)
        by_phase = {}
        for name, a, b in phases:
            m = (when_a >= a) & (when_a <= b)
            in_any |= m
            by_phase[name] = lat_a[m]
        normal = lat_a[~in_any]
        stats = [s["stats"] for s in sent]

        def row(v):
            return {"n": int(len(v)), "p50": round(_pct(v, 50), 1), "p99": round(_pct(v, 99), 1),
                    "max": round(float(v.max()) if len(v) else float("nan"), 1)}

        fig = {
            "minutes": minutes, "processes": args.processes, "threads": args.threads,
            "rate_per_thread": args.rate, "durable": args.durable, "timeout_s": args.timeout,
            "phases": [(n, round(b - a, 1)) for n, a, b in phases], "tmpfs_mb": args.disk_mb if tmpfs else None,
            "decisions_sent": len(sent_d), "outcomes_sent": len(sent_o),
            "decisions_stored": len(set(stored_d)), "outcomes_stored": len(set(stored_o)),
            "lost_decisions": len(sent_d - set(stored_d)), "lost_outcomes": len(sent_o - set(stored_o)),
            "unexpected_rows": len(set(stored_d) - sent_d) + len(set(stored_o) - sent_o),
            "duplicated": (len(stored_d) - len(set(stored_d))) + (len(stored_o) - len(set(stored_o))),
            "idempotent_repeats": sum(s["repeats"] for s in stats),
            "max_spill_backlog_per_process": [s["max_spill_backlog"] for s in stats],
            "max_spill_backlog_total": sum(s["max_spill_backlog"] for s in stats),
            "max_unspilled_per_process": [s.get("max_unspilled", 0) for s in stats],
            "spilled": sum(s["spilled"] for s in stats), "replayed": sum(s["replayed"] for s in stats),
            "dropped": sum(s["dropped"] for s in stats), "rejected": sum(s["rejected"] for s in stats),
            "conflicts": sum(s.get("conflicts", 0) for s in stats),
            "replay_errors": sum(s.get("replay_errors", 0) for s in stats),
            "drain_s_max": max(s["drain_s"] for s in stats), "outages_seen": [s["outages"] for s in stats],
            "snapshots": n_snap, "lambda_changes": sum(s["lambda_changes"] for s in stats),
            "errors": [e for s in stats for e in s["errors"]], "hung_processes": hung,
            "choose_us": {"normal": row(normal), **{name: row(v) for name, v in by_phase.items()}},
            "start": t0, "loadavg_end": [round(x, 2) for x in os.getloadavg()], "loadavg_start": load0,
        }
        fig["p99_normal_us"] = round(_pct(normal, 99), 1)
        worst = max((_pct(v, 99) for v in by_phase.values() if len(v)), default=float("nan"))
        fig["p99_failures_us"] = round(worst, 1)
        fig["p99_ratio"] = round(fig["p99_failures_us"] / fig["p99_normal_us"], 2)
        fig["ok"] = (fig["lost_decisions"] == fig["lost_outcomes"] == fig["duplicated"] == fig["unexpected_rows"] == 0
                     and not fig["errors"] and not hung and fig["dropped"] == fig["rejected"] == 0)
        print_markdown(fig, sys.argv)
        if args.json:
            Path(args.json).write_text(json.dumps(fig, indent=2))
        if not fig["ok"]:
            sys.exit(1)
    finally:
        server.destroy()
        if tmpfs:
            subprocess.run(["umount", "-l", str(spill_dir)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def print_markdown(f: dict, argv: list[str]) -> None:
    c = f["choose_us"]
    cmd = "python benchmarks/soak.py " + " ".join(argv[1:])
    phases = ", ".join(f"{n} {s:g} s" for n, s in f["phases"])
    disk = (f"spill on a {f['tmpfs_mb']} MiB tmpfs" if f["tmpfs_mb"] else
            "no tmpfs could be mounted (not root): the full-disk phase was skipped")
    lat = "\n".join(f"| {name} | {v['n']} | {v['p50']} | {v['p99']} | {v['max']} |" for name, v in c.items())
    print(f"""
## Soak: {f['minutes']:g} min, {f['processes']} processes × {f['threads']} threads: outage, hang, full disk

`{cmd.strip()}` — {f['rate_per_thread']:g} choose/s per thread, {'durable' if f['durable'] else 'queued (default)'}
writes, database call deadline {f['timeout_s']:g} s; {phases}; {disk}; {os.cpu_count()} CPU cores, load
average {f['loadavg_start'][0]} at the start and {f['loadavg_end'][0]} at the end (other work on the machine included).

| events | sent | stored | lost | duplicated |
|---|---:|---:|---:|---:|
| decisions | {f['decisions_sent']} | {f['decisions_stored']} | {f['lost_decisions']} | |
| outcomes | {f['outcomes_sent']} | {f['outcomes_stored']} | {f['lost_outcomes']} | |
| all | {f['decisions_sent'] + f['outcomes_sent']} | {f['decisions_stored'] + f['outcomes_stored']} | {f['lost_decisions'] + f['lost_outcomes']} | {f['duplicated']} |

Unexpected rows {f['unexpected_rows']}; idempotent repeats sent {f['idempotent_repeats']}; spilled {f['spilled']},
replayed {f['replayed']}, dropped {f['dropped']}, rejected {f['rejected']}, conflicts {f['conflicts']}, replay
errors {f['replay_errors']}; max spill backlog {f['max_spill_backlog_total']} events (per process
{f['max_spill_backlog_per_process']}); most rows held in memory while the disk was full, per process
{f['max_unspilled_per_process']}; longest final drain {f['drain_s_max']} s; snapshots {f['snapshots']}, λ changes
{f['lambda_changes']}; errors {len(f['errors'])}.

| `choose` latency (µs) | n | p50 | p99 | max |
|---|---:|---:|---:|---:|
{lat}

p99 during the worst failure / p99 otherwise: **{f['p99_ratio']}×** (target ≤ 2×).
Verdict: {'PASS' if f['ok'] else 'FAIL'} (0 lost, 0 duplicated{'' if f['ok'] else ': NOT MET'}).
""")
    if f["errors"]:
        print("errors:", f["errors"][:5])


if __name__ == "__main__":
    main()
