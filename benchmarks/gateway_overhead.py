"""Gateway overhead for budget arms: added latency vs calling the upstream directly, and gateway throughput.

Usage (repository root)::

    python -m benchmarks.gateway_overhead                 # 2,000 paired requests, 10 s of load
    python -m benchmarks.gateway_overhead --requests 500 --load-seconds 5 --json out.json

What runs, all over real loopback sockets, each server its own process:

* the canned upstream (:mod:`benchmarks.gateway_upstream`): a fixed OpenAI
  chat response in tens of microseconds, so the difference is the gateway;
* ``stopbandit serve --engine vllm`` in front of it, with budget arms only
  (the budget goes to the engine in ``thinking_token_budget``: one upstream
  call per request), a fresh SQLite replay store, default everything else.

**Latency** (warm: after ``--warmup`` requests each way): one keep-alive
connection, requests alternate upstream-direct / through-the-gateway, the
same chat body. Added latency = percentile(gateway) − percentile(direct).

**Throughput**: ``--concurrency`` keep-alive connections send requests to the
gateway for ``--load-seconds``; reported are the completed requests per
second and the gateway process's CPU time per request (``/proc``), whose
inverse is what one core of gateway work sustains. Both cores of this
machine are shared by the client, the upstream and the gateway, so the wall
figure is a lower bound on what the gateway alone does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.gateway_common import RawClient, cpu_seconds, main_of, start_canned, start_gateway, summarize

CONFIG = """\
lam = 0.2
token_scale = 1000

[[arms]]
name = "cap256"
threshold = 1.01
max_think_tokens = 256

[[arms]]
name = "cap1024"
threshold = 1.01
max_think_tokens = 1024

[[arms]]
name = "cap4096"
threshold = 1.01
max_think_tokens = 4096
"""

BODY = {"model": "canned", "messages": [{"role": "user", "content": "What is 17 * 23? Think it through."}], "max_tokens": 64}


async def latency(direct_url: str, gateway_url: str, n: int, warmup: int) -> dict[str, Any]:
    direct, gateway = RawClient(direct_url), RawClient(gateway_url)
    raw_direct = direct.request_bytes("/v1/chat/completions", BODY)
    raw_gateway = gateway.request_bytes("/v1/chat/completions", BODY)
    times: dict[str, list[float]] = {"direct": [], "gateway": []}
    arms: dict[str, int] = {}
    for i in range(warmup + n):
        for name, client, raw in (("direct", direct, raw_direct), ("gateway", gateway, raw_gateway)):
            t0 = time.perf_counter()
            status, headers, body = await client.send(raw)
            dt = time.perf_counter() - t0
            if status != 200:
                raise RuntimeError(f"{name} answered {status}: {body[:300]!r}")
            if i >= warmup:
                times[name].append(dt)
                if name == "gateway":
                    arm = headers.get("x-stopbandit-arm", "?")
                    arms[arm] = arms.get(arm, 0) + 1
    await direct.close()
    await gateway.close()
    d, g = summarize(times["direct"]), summarize(times["gateway"])
    return {"direct_ms": d, "gateway_ms": g, "added_ms": {k: g[k] - d[k] for k in ("p50", "p90", "p99", "mean")}, "arms": arms}


async def load(url: str, pid: int, seconds: float, concurrency: int) -> dict[str, Any]:
    done = 0
    errors = 0
    stop_at = 0.0

    async def worker() -> None:
        nonlocal done, errors
        client = RawClient(url)
        raw = client.request_bytes("/v1/chat/completions", BODY)
        while time.perf_counter() < stop_at:
            status, _, _ = await client.send(raw)
            if status == 200:
                done += 1
            else:
                errors += 1
        await client.close()

    cpu0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    stop_at = t0 + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu0
    return {
        "seconds": wall,
        "requests": done,
        "errors": errors,
        "requests_per_s": done / wall,
        "gateway_cpu_ms_per_request": 1000 * cpu / max(done, 1),
        "requests_per_cpu_second": done / cpu if cpu > 0 else float("nan"),
        "concurrency": concurrency,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="sb-gw-overhead-"))
    config = work / "gateway.toml"
    config.write_text(CONFIG, encoding="utf-8")
    with start_canned() as upstream:
        with start_gateway(upstream.url, f"sqlite:///{work / 'gateway.db'}", config=config, engine="vllm") as gateway:
            lat = asyncio.run(latency(upstream.url, gateway.url, args.requests, args.warmup))
            thr = asyncio.run(load(gateway.url, gateway.process.pid, args.load_seconds, args.concurrency))
            direct = asyncio.run(load(upstream.url, upstream.process.pid, min(args.load_seconds, 5.0), args.concurrency))
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU, Python {platform.python_version()}",
        "latency": lat,
        "throughput": thr,
        "upstream_alone": direct,
        "settings": vars(args),
    }


def print_report(report: dict[str, Any]) -> None:
    lat, thr = report["latency"], report["throughput"]
    print(f"machine: {report['machine']}")
    print(f"latency, {lat['direct_ms']['n']} warm requests each way (ms):")
    print("| path | p50 | p90 | p99 | mean |")
    print("|---|---|---|---|---|")
    for name in ("direct_ms", "gateway_ms", "added_ms"):
        row = lat[name]
        print(f"| {name[:-3] if name != 'added_ms' else '**added by the gateway**'} | {row['p50']:.3f} | {row['p90']:.3f} | {row['p99']:.3f} | {row['mean']:.3f} |")
    print(f"arms chosen: {lat['arms']}")
    print(f"throughput at concurrency {thr['concurrency']}: {thr['requests_per_s']:.0f} req/s wall "
          f"({thr['requests']} in {thr['seconds']:.1f} s, {thr['errors']} errors); gateway CPU "
          f"{thr['gateway_cpu_ms_per_request']:.3f} ms/request = {thr['requests_per_cpu_second']:.0f} req per CPU-second")
    up = report["upstream_alone"]
    print(f"canned upstream alone, same client: {up['requests_per_s']:.0f} req/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gateway_overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--load-seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    return main_of(parser, run, print_report, argv)


if __name__ == "__main__":
    raise SystemExit(main())
