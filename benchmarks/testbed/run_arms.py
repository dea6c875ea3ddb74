"""Run static arms end to end with the early-exit decoder on held-out testbed items.

Usage (repository root, after ``python -m benchmarks.testbed.train``)::

    python -m benchmarks.testbed.run_arms
    python -m benchmarks.testbed.run_arms --items 400 --json

For every arm, all items are decoded under that arm; the table gives EM
(overall and per difficulty level) and mean tokens per item, probe tokens
included. The last lines check nested feedback on real model outputs: the
outcomes that the ``full`` run's traces reveal for the other arms
(:func:`stopbandit.bandit.trace.counterfactual`) against those arms' real runs.

:func:`run_items` is the hook for a Selector loop (one arm per item).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.testbed.tasks import Item, sample_items
from benchmarks.testbed.train import DEFAULT_OUT
from stopbandit.bandit.arms import DEFAULT_ARMS, Arm
from stopbandit.bandit.trace import ProbeTrace, counterfactual, em_of
from stopbandit.errors import InputError

HELD_OUT_SEED = 20_250_101  # training draws seeds 0..steps; this one is far away
LEVELS = ("easy", "medium", "hard")
ARMS: tuple[Arm, ...] = (
    *DEFAULT_ARMS,
    Arm("cap16", 1.01, 16),
    Arm("cap8", 1.01, 8),
    Arm("t80c16", 0.80, 16),
)


def run_items(decoder: Any, items: Sequence[Item], arms_per_item: Sequence[Arm]) -> list[tuple[float, int, ProbeTrace]]:
    """Decode ``items[i]`` under ``arms_per_item[i]``; per item ``(em, tokens, trace)``, tokens probes included.

    ``decoder`` is an :class:`stopbandit.decoder.HFDecoder` (anything with ``run(prompts, arms)``).
    """
    if len(items) != len(arms_per_item):
        raise InputError(f"arms_per_item must give one arm per item: {len(arms_per_item)} arms for {len(items)} items")
    results = decoder.run([item.prompt for item in items], list(arms_per_item))
    return [(float(em_of(r.answer, item.answer)), r.total_tokens, r.trace) for item, r in zip(items, results)]


def _summary(items: Sequence[Item], outcomes: Sequence[tuple[float, int, ProbeTrace]]) -> dict[str, Any]:
    by_level: dict[str, list[float]] = defaultdict(list)
    for item, (em, _, _) in zip(items, outcomes):
        by_level[item.level].append(em)
    n = len(outcomes)
    return {
        "em": sum(o[0] for o in outcomes) / n,
        **{f"em_{level}": (sum(v) / len(v) if (v := by_level[level]) else None) for level in LEVELS},
        "tokens": sum(o[1] for o in outcomes) / n,
        "think": sum(o[2].stop_offset for o in outcomes) / n,
        "probe": sum(o[1] - o[2].stop_offset - o[2].answer_tokens for o in outcomes) / n,
        "stops": {r: sum(o[2].stop_reason == r for o in outcomes) for r in ("confidence", "budget", "end")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Static arms on held-out testbed items.")
    parser.add_argument("--model", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from stopbandit.decoder.hf import HFDecoder

    torch.set_num_threads(args.threads)
    if not (args.model / "config.json").is_file():
        parser.error(f"no trained model in {args.model}; run `python -m benchmarks.testbed.train` first")
    decoder = HFDecoder.from_pretrained(args.model, device=args.device)
    items = sample_items(args.items, seed=args.seed)
    start = time.perf_counter()
    runs = {arm.name: run_items(decoder, items, [arm] * len(items)) for arm in ARMS}
    elapsed = time.perf_counter() - start
    table = {arm.name: _summary(items, runs[arm.name]) for arm in ARMS}

    revealed = agree = 0
    for arm in ARMS:
        for (em, tokens, _), (_, _, trace), item in zip(runs[arm.name], runs["full"], items):
            cf = counterfactual(trace, arm)
            if cf is not None:
                revealed += 1
                agree += (em_of(cf.answer, item.answer), cf.tokens) == (em, tokens)
    if args.json:
        print(json.dumps({"arms": table, "counterfactual": {"revealed": revealed, "agree": agree}}, indent=2))
        return 0
    counts = {level: sum(i.level == level for i in items) for level in LEVELS}
    print(f"model {args.model}  device {decoder.device}  {len(items)} held-out items "
          f"({', '.join(f'{counts[lv]} {lv}' for lv in LEVELS)}), probes every {decoder.config.probe_spacing} tokens")
    print(f"{'arm':<12}{'thr':>6}{'cap':>5}{'EM':>7}{'easy':>7}{'medium':>8}{'hard':>7}{'tokens':>8}{'think':>7}"
          f"{'probe':>7}   stops c/b/e")
    for arm in ARMS:
        row = table[arm.name]
        stops = row["stops"]
        print(f"{arm.name:<12}{arm.threshold:>6.2f}{arm.max_think_tokens:>5}{row['em']:>7.3f}{row['em_easy']:>7.3f}"
              f"{row['em_medium']:>8.3f}{row['em_hard']:>7.3f}{row['tokens']:>8.1f}{row['think']:>7.1f}{row['probe']:>7.1f}"
              f"   {stops['confidence']}/{stops['budget']}/{stops['end']}")
    print(f"nested feedback: the 'full' traces reveal {revealed} (arm, item) outcomes; {agree} equal the real run")
    print(f"decoded {len(ARMS)} x {len(items)} items in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
