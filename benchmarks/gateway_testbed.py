"""The testbed through the gateway: learned policy vs every static arm, and the same decisions as in-process.

Usage (repository root, after ``python -m benchmarks.testbed.train``)::

    python -m benchmarks.gateway_testbed                           # λ 0.3, seed 0, 400-item stream, 200 held out
    python -m benchmarks.gateway_testbed --stream 1000 --items 400 --lam 0.3 --seed 1 --json out.json

What runs (every server its own process, real sockets):

* upstream: ``python -m stopbandit.decoder.server --model benchmarks/testbed/out/model``
  (engine mode: plain greedy completions, prefix reuse);
* ``stopbandit serve --engine stopbandit`` in front of it, with the testbed's
  arms (:data:`benchmarks.testbed.run_arms.ARMS`), its decoder settings as
  ``[gateway]`` settings (``<think>`` … ``</think>``, a 6-token trial answer
  every 8 thinking tokens, thinking capped at 64), ``probe_all`` on (every
  arm runs on the probe driver and logs a trace, as in the in-process
  decoder, so nested feedback has the same data), ``token_scale`` 20, λ and
  the Selector's seed from the command line, a fresh SQLite store.

1. **Training stream**: each item is sent as ``/v1/completions`` with
   ``metadata.domain`` = its task family; the gateway chooses the arm and runs
   it on the upstream through its probe driver; the client scores the
   answer (EM) and posts ``/v1/rewards`` with the reference answer; the
   gateway learns with the logged probe trace.
2. **Same decisions in-process**: a second Selector, opened in this process
   on its own fresh store with the same config and seed, gets the same
   ``choose(prompt, domain)`` calls and the same rewards (EM, tokens, trace,
   reference as the gateway reported them). Its arms must equal the
   gateway's, request by request.
3. **Held-out evaluation**: every static arm is pinned through the gateway on
   the held-out items; the learned policy's greedy arm per item (from the
   in-process twin, whose state equals the gateway's) is pinned likewise.
   Pinned requests are logged as forced decisions and get no reward. For
   comparison, the static arms are also decoded in-process by the early-exit
   decoder on the same items (the table of ``benchmarks.testbed.run_arms``).

Reward = EM − λ·tokens/20, tokens as the gateway recorded them (probes included).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from benchmarks.gateway_common import main_of, start_decoder_server, start_gateway
from benchmarks.testbed.end_to_end import STREAM_SEED, greedy_arms
from benchmarks.testbed.run_arms import ARMS, HELD_OUT_SEED
from benchmarks.testbed.tasks import sample_items
from benchmarks.testbed.train import DEFAULT_OUT
from stopbandit.serving.selector import Selector
from stopbandit.bandit.trace import ProbeTrace, em_of
from stopbandit.serve.config import load as load_config

TOKEN_SCALE = 20


def config_text(lam: float, seed: int) -> str:
    lines = [f"lam = {lam}", f"token_scale = {TOKEN_SCALE}", f"seed = {seed}", ""]
    for arm in ARMS:
        lines += ["[[arms]]", f'name = "{arm.name}"', f"threshold = {arm.threshold}",
                  f"max_think_tokens = {arm.max_think_tokens}", ""]
    lines += [
        "[gateway]",
        'think_start = "<think>"',
        'think_end = "</think>"',
        'answer_suffix = ""',
        "answer_stop = []",
        "probe_every = 8",
        "probe_tokens = 6",
        "answer_tokens = 6",
        "max_think_tokens = 64",
        "probe_all = true",
    ]
    return "\n".join(lines) + "\n"


def ask(client: httpx.Client, url: str, item: Any, arm: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": item.prompt, "metadata": {"domain": item.domain}}
    if arm:
        body["stopbandit"] = {"arm": arm}
    r = client.post(url + "/v1/completions", json=body)
    r.raise_for_status()
    data = r.json()
    ours = data["stopbandit"]
    answer = data["choices"][0]["text"]
    return {"arm": ours["arm"], "decision": ours["decision_id"], "answer": answer, "em": em_of(answer, item.answer),
            "tokens": data["usage"]["completion_tokens"], "trace": ours.get("trace"), "mode": ours["mode"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="sb-gw-testbed-"))
    config = work / "stopbandit.toml"
    config.write_text(config_text(args.lam, args.seed), encoding="utf-8")
    stream = sample_items(args.stream, seed=STREAM_SEED + args.seed)
    held = sample_items(args.items, seed=HELD_OUT_SEED)
    selector_config, _ = load_config(config)  # what stopbandit serve reads from the same file
    twin = Selector.open(f"sqlite:///{work / 'twin.db'}", config=selector_config)
    t_start = time.perf_counter()
    with start_decoder_server("--model", str(args.model)) as upstream, \
            start_gateway(upstream.url, f"sqlite:///{work / 'gateway.db'}", config=config, engine="stopbandit") as gw, \
            httpx.Client(timeout=300) as client:
        served, mismatches, modes = [], 0, Counter()
        t0 = time.perf_counter()
        for item in stream:
            out = ask(client, gw.url, item)
            mine = twin.choose(item.prompt, domain=item.domain)
            mismatches += mine.arm.name != out["arm"]
            modes[out["mode"]] += 1
            r = client.post(gw.url + "/v1/rewards", json={"decision_id": out["decision"], "em": out["em"],
                                                          "reference": item.answer})
            r.raise_for_status()
            trace = ProbeTrace.from_json(out["trace"]) if out["trace"] else None
            twin.reward(mine.decision_id, out["em"], out["tokens"], trace=trace, reference=item.answer)
            served.append(out)
        stream_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        static = {arm.name: [ask(client, gw.url, item, arm.name) for item in held] for arm in ARMS}
        chosen = greedy_arms(twin, held, args.lam)
        learned = [ask(client, gw.url, item, arm.name) for item, arm in zip(held, chosen)]
        eval_s = time.perf_counter() - t0
    twin.close()
    in_process = _in_process_static(args.model, held) if args.in_process else None

    def summary(outs: list[dict[str, Any]]) -> dict[str, float]:
        em = sum(o["em"] for o in outs) / len(outs)
        tokens = sum(o["tokens"] for o in outs) / len(outs)
        return {"em": em, "tokens": tokens, "reward": em - args.lam * tokens / TOKEN_SCALE}

    table = {name: summary(outs) for name, outs in static.items()}
    table["learned"] = summary(learned)
    best = max((n for n in table if n != "learned"), key=lambda n: table[n]["reward"])
    agree = sum(o["answer"] == static[o["arm"]][i]["answer"] and o["tokens"] == static[o["arm"]][i]["tokens"]
                for i, o in enumerate(learned))
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
        "settings": {k: str(v) for k, v in vars(args).items() if k != "json"},
        "stream": {"items": len(stream), "seconds": stream_s, "decision_mismatches_vs_in_process": mismatches,
                   "arms_served": dict(Counter(o["arm"] for o in served)), "modes": dict(modes),
                   "served": summary(served)},
        "held_out": {"items": len(held), "seconds": eval_s, "table": table, "best_static": best,
                     "learned_minus_best_static_reward": table["learned"]["reward"] - table[best]["reward"],
                     "learned_arms": dict(Counter(a.name for a in chosen)),
                     "learned_equals_static_run_of_its_arm": agree},
        "in_process_static": in_process,
        "wall_s": time.perf_counter() - t_start,
    }


def _in_process_static(model: Path, held: list[Any]) -> dict[str, dict[str, float]]:
    """EM and tokens of every static arm on the same items with the in-process early-exit decoder (the old table)."""
    import torch

    from benchmarks.testbed.run_arms import run_items
    from stopbandit.decoder.hf import HFDecoder

    torch.set_num_threads(1)
    decoder = HFDecoder.from_pretrained(model, device="cpu")
    out = {}
    for arm in ARMS:
        results = run_items(decoder, held, [arm] * len(held))
        out[arm.name] = {"em": sum(r[0] for r in results) / len(held), "tokens": sum(r[1] for r in results) / len(held)}
    return out


def print_report(report: dict[str, Any]) -> None:
    s, h = report["stream"], report["held_out"]
    print(f"machine: {report['machine']}; settings: {report['settings']}")
    print(f"stream: {s['items']} requests through the gateway in {s['seconds']:.0f} s; decisions that differ from the "
          f"in-process Selector with the same seed: {s['decision_mismatches_vs_in_process']}; arms served "
          f"{s['arms_served']}; modes {s['modes']}")
    print(f"held-out: {h['items']} items, every arm pinned through the gateway ({h['seconds']:.0f} s)")
    local = report.get("in_process_static") or {}
    print("| arm | EM | mean tokens (probes included) | reward | in-process decoder: EM / tokens |")
    print("|---|---|---|---|---|")
    for name, row in h["table"].items():
        mark = " (best static)" if name == h["best_static"] else ""
        there = f"{local[name]['em']:.3f} / {local[name]['tokens']:.1f}" if name in local else "–"
        print(f"| {name}{mark} | {row['em']:.3f} | {row['tokens']:.1f} | {row['reward']:.3f} | {there} |")
    print(f"learned − best static reward: {h['learned_minus_best_static_reward']:+.3f}; learned arms "
          f"{h['learned_arms']}; learned runs equal to the static run of the same arm: "
          f"{h['learned_equals_static_run_of_its_arm']}/{h['items']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gateway_testbed", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--stream", type=int, default=400)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--lam", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-in-process", dest="in_process", action="store_false",
                        help="skip decoding the static arms in-process for comparison")
    return main_of(parser, run, print_report, argv)


if __name__ == "__main__":
    raise SystemExit(main())
