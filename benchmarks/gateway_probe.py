"""Probe arms through the gateway: probe tokens vs thinking tokens, and wall time vs one plain call.

Usage (repository root)::

    python -m benchmarks.gateway_probe                          # both upstreams
    python -m benchmarks.gateway_probe --only ours --requests 8
    python -m benchmarks.gateway_probe --only llamacpp --spacings 200,64,32

What runs (every server its own process, real sockets):

* **ours**: ``python -m stopbandit.decoder.server --tiny --init-std 0.05``
  (engine mode, a tiny random Llama that keeps thinking) behind
  ``stopbandit serve``, default probe settings
  (a 20-token probe every 200 thinking tokens), thinking capped at 800.
* **llamacpp**: llama-cpp-python's server with SmolLM2-135M-Instruct behind
  ``stopbandit serve`` (engine detected: text chunking, two-call budgets),
  thinking capped at 256, probe spacing from ``--spacings``.

Each request pins the lenient arm ``full`` with ``probe_all`` on (the arm a
shadow deployment serves: probes all the way, the trace reveals every
stricter arm), so every request probes at every chunk. Per request the
gateway's wall time is compared with **one** direct call to the same
upstream that decodes the same number of tokens (thinking + answer, no
probes) from the same prompt; the upstream's prefix cache serves the prompt
in both. Requests alternate gateway / direct, after one untimed warm-up each.

For llama.cpp the same one call is also timed with ``logprobs: 1`` (what the
driver asks of its text chunks and probes): llama-cpp-python computes
log-probabilities in Python over the whole vocabulary, per token.

Reported: probe tokens / thinking tokens (the reward counts probe tokens),
the wall-time ratio (mean of per-request ratios and ratio of the sums), and
for llama.cpp a breakdown of where the extra time goes: upstream calls
(counted from the engine's log), tokens decoded beyond the one call's
(probes + tokens decoded again after a chunk cut), and the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.gateway_common import start_decoder_server, start_gateway, start_llamacpp, write_json

OURS_PROMPTS = [f"q{i}: what is {7 * i + 3} + {11 * i + 5}? think it through." for i in range(64)]
STORY_TOPICS = ["a cat who learns to count", "a lighthouse keeper", "a robot that paints", "two rival bakers",
                "a lost map", "the last train home", "a garden on mars", "a clockmaker's apprentice"]
LLAMA_PROMPTS = [f"<|im_start|>user\nWrite a long, detailed story about {t}.<|im_end|>\n<|im_start|>assistant\n"
                 for t in STORY_TOPICS]


def _config(work: Path, gateway: dict[str, Any]) -> Path:
    lines = ["lam = 0.2", "token_scale = 1000", "", "[gateway]"]
    for key, value in gateway.items():
        lines.append(f"{key} = {json.dumps(value)}")
    path = work / f"gateway-{abs(hash(tuple(gateway.items())))}.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _run(gateway_url: str, upstream_url: str, prompts: list[str], direct_extra: dict[str, Any],
         call_count: Any = None, logprob_baseline: bool = False) -> dict[str, Any]:
    client = httpx.Client(timeout=600)
    rows = []
    for i, prompt in enumerate(prompts):
        calls0 = call_count() if call_count else None
        t0 = time.perf_counter()
        r = client.post(gateway_url + "/v1/completions", json={"prompt": prompt, "stopbandit": {"arm": "full"}})
        t_gw = time.perf_counter() - t0
        calls = call_count() - calls0 if call_count else None
        r.raise_for_status()
        ours = r.json()["stopbandit"]
        tokens = ours["tokens"]
        same = tokens["thinking"] + tokens["answer"]
        t0 = time.perf_counter()
        d = client.post(upstream_url + "/v1/completions", json={"prompt": prompt, "max_tokens": same, "temperature": 0,
                                                               **direct_extra})
        t_direct = time.perf_counter() - t0
        d.raise_for_status()
        direct_tokens = d.json()["usage"]["completion_tokens"]
        t_lp = None
        if logprob_baseline:  # the same one call, asking for logprobs as the driver's calls do
            t0 = time.perf_counter()
            client.post(upstream_url + "/v1/completions", json={"prompt": prompt, "max_tokens": same, "temperature": 0,
                                                               "logprobs": 1, **direct_extra}).raise_for_status()
            t_lp = time.perf_counter() - t0
        if i == 0:
            continue  # warm-up pair
        rows.append({"gateway_s": t_gw, "direct_s": t_direct, "thinking": tokens["thinking"], "probes": tokens["probes"],
                     "answer": tokens["answer"], "total": tokens["total"], "direct_tokens": direct_tokens,
                     "probe_count": len(ours.get("trace", {}).get("p", [])), "stop_reason": ours["stop_reason"],
                     "upstream_calls": calls, "direct_logprobs_s": t_lp})
    client.close()
    thinking = sum(r["thinking"] for r in rows)
    probes = sum(r["probes"] for r in rows)
    ratios = [r["gateway_s"] / r["direct_s"] for r in rows]
    out = {
        "requests": len(rows),
        "thinking_tokens": thinking,
        "probe_tokens": probes,
        "probe_pct_of_thinking": 100 * probes / thinking if thinking else float("nan"),
        "mean_thinking": thinking / len(rows),
        "gateway_s_mean": statistics.fmean(r["gateway_s"] for r in rows),
        "direct_s_mean": statistics.fmean(r["direct_s"] for r in rows),
        "ratio_mean": statistics.fmean(ratios),
        "ratio_of_sums": sum(r["gateway_s"] for r in rows) / sum(r["direct_s"] for r in rows),
        "direct_tokens_mismatch": sum(1 for r in rows if r["direct_tokens"] != r["thinking"] + r["answer"]),
        "rows": rows,
    }
    if logprob_baseline:
        out["direct_logprobs_s_mean"] = statistics.fmean(r["direct_logprobs_s"] for r in rows)
    if call_count:
        out["upstream_calls_mean"] = statistics.fmean(r["upstream_calls"] for r in rows)
        extra_tokens = sum(r["total"] - r["thinking"] - r["answer"] for r in rows)  # probes + decoded again
        out["extra_tokens_per_request"] = extra_tokens / len(rows)
    return out


def run_ours(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    # init-std 0.05: a near-uniform random model whose greedy path does not close its thinking within 800 tokens
    with start_decoder_server("--tiny", "--init-std", "0.05") as upstream:
        def count() -> int:
            return httpx.get(upstream.url + "/health", timeout=30).json()["completions"]

        config = _config(work, {"probe_all": True, "max_think_tokens": args.ours_think})
        with start_gateway(upstream.url, f"sqlite:///{work / 'ours.db'}", config=config, engine="stopbandit") as gw:
            result = _run(gw.url, upstream.url, OURS_PROMPTS[: args.requests + 1], {}, count)
        # per-call cost of the upstream: a 1-token call on a cached prompt
        per_call = _per_call(upstream.url, OURS_PROMPTS[0], {})
    result["upstream_call_ms"] = per_call
    result["settings"] = {"probe_every": 200, "probe_tokens": 20, "max_think_tokens": args.ours_think}
    return result


def _per_call(url: str, prompt: str, extra: dict[str, Any]) -> float:
    times = []
    with httpx.Client(timeout=120) as client:
        for _ in range(12):
            t0 = time.perf_counter()
            client.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": 1, "temperature": 0, **extra})
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times[2:])


def run_llamacpp(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    greedy = {"repeat_penalty": 1.0}
    results: dict[str, Any] = {}
    with start_llamacpp(threads=args.llama_threads) as upstream:
        def count() -> int:  # llama-cpp-python logs one line per completion call
            return upstream.log.read_text(errors="replace").count("Llama.generate:")

        for spacing in args.spacings:
            config = _config(work, {"probe_all": True, "max_think_tokens": args.llama_think, "probe_every": spacing})
            with start_gateway(upstream.url, f"sqlite:///{work / f'llama{spacing}.db'}", config=config) as gw:
                results[str(spacing)] = _run(gw.url, upstream.url, LLAMA_PROMPTS[: args.llama_requests + 1], greedy,
                                             count, logprob_baseline=True)
        per_call = _per_call(upstream.url, LLAMA_PROMPTS[0], greedy)
    for result in results.values():
        result["upstream_call_ms"] = per_call
        per_token = result["direct_s_mean"] / max(1.0, statistics.fmean(r["direct_tokens"] for r in result["rows"]))
        extra_calls = result["upstream_calls_mean"] - 1
        excess = result["gateway_s_mean"] - result["direct_s_mean"]
        by_tokens = result["extra_tokens_per_request"] * per_token
        by_calls = extra_calls * per_call / 1000
        result["breakdown_s"] = {"excess": excess, "extra_tokens": by_tokens, "extra_calls": by_calls,
                                 "rest": excess - by_tokens - by_calls, "per_token_ms": 1000 * per_token}
    return {"spacings": results, "settings": {"probe_tokens": 20, "max_think_tokens": args.llama_think}}


def print_report(report: dict[str, Any], flush: bool = False) -> None:
    print(f"machine: {report['machine']}")
    if "ours" in report:
        o = report["ours"]
        print("\nour decoder server (--tiny), default spacing (20-token probe every 200 thinking tokens):")
        print("| requests | mean thinking | probe tokens / thinking | gateway s/request | one call s/request | ratio (mean) | ratio of sums | upstream calls/request | upstream ms/call |")
        print("|---|---|---|---|---|---|---|---|---|")
        print(f"| {o['requests']} | {o['mean_thinking']:.0f} | {o['probe_pct_of_thinking']:.1f}% | {o['gateway_s_mean']:.3f} | "
              f"{o['direct_s_mean']:.3f} | {o['ratio_mean']:.3f}× | {o['ratio_of_sums']:.3f}× | {o['upstream_calls_mean']:.1f} | "
              f"{o['upstream_call_ms']:.1f} |")
    if "llamacpp" in report:
        print("\nllama-cpp-python + SmolLM2-135M-Instruct (text chunking):")
        print("| probe every | requests | mean thinking | probe tokens / thinking | gateway s | one call s | one call with logprobs s | ratio (mean) | ratio of sums | calls/request | extra tokens/request | excess s = extra tokens + extra calls + rest |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for spacing, o in report["llamacpp"]["spacings"].items():
            b = o["breakdown_s"]
            print(f"| {spacing} | {o['requests']} | {o['mean_thinking']:.0f} | {o['probe_pct_of_thinking']:.1f}% | "
                  f"{o['gateway_s_mean']:.2f} | {o['direct_s_mean']:.2f} | {o.get('direct_logprobs_s_mean', float('nan')):.2f} | {o['ratio_mean']:.2f}× | {o['ratio_of_sums']:.2f}× | "
                  f"{o['upstream_calls_mean']:.1f} | {o['extra_tokens_per_request']:.1f} | {b['excess']:.2f} = {b['extra_tokens']:.2f} + "
                  f"{b['extra_calls']:.2f} + {b['rest']:.2f} |")
        any_ = next(iter(report["llamacpp"]["spacings"].values()))
        print(f"(per token {any_['breakdown_s']['per_token_ms']:.1f} ms in one call; per upstream call {any_['upstream_call_ms']:.1f} ms)")
    if flush:
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gateway_probe", description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("ours", "llamacpp"), default=None)
    parser.add_argument("--requests", type=int, default=12, help="timed requests on our server")
    parser.add_argument("--ours-think", type=int, default=800)
    parser.add_argument("--llama-requests", type=int, default=6)
    parser.add_argument("--llama-think", type=int, default=256)
    parser.add_argument("--llama-threads", type=int, default=1, help="llama.cpp threads (2 collapse on a loaded 2-core box)")
    parser.add_argument("--spacings", type=lambda s: [int(x) for x in s.split(",")], default=[200, 64, 32])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sb-gw-probe-"))
    report: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
                              "settings": {k: v for k, v in vars(args).items() if k != "json"}}
    if args.only in (None, "ours"):
        report["ours"] = run_ours(args, work)
        print_report({"machine": report["machine"], "ours": report["ours"]}, flush=True)
    if args.only in (None, "llamacpp"):
        report["llamacpp"] = run_llamacpp(args, work)
        print_report({"machine": report["machine"], "llamacpp": report["llamacpp"]}, flush=True)
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
