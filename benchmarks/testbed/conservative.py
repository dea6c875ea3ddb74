"""Conservative exploration against a baseline arm on the testbed: a real Selector, the early-exit decoder.

Usage (repository root, after ``python -m benchmarks.testbed.train``)::

    nice -n 10 python -m benchmarks.testbed.conservative --models MODEL_DIR [MODEL_DIR ...] \\
        --seeds 0,1 --lambdas 0.1,0.3,1 --stream 2000 --window 500 --baselines careful,best

Per trained model and selector seed ``s``, the stream (``--stream`` items
from seed ``STREAM_SEED + s``, as :mod:`benchmarks.testbed.end_to_end`
draws it) is first decoded under every static arm: this gives the baseline's
and every static arm's reward on exactly the items served. Then, per λ, fresh
Selectors (VW heads, SquareCB, fresh SQLite store, ``token_scale`` 20 as in
the end-to-end run) serve the stream in batches of ``--batch``: ``choose``
per item, then ``reward`` per item with EM, every token and the probe trace
of the chosen arm's run (so rewards arrive up to one batch late):
``plain`` (today's SquareCB) and, per baseline of ``--baselines``,
``cons:BASELINE`` (``[exploration] baseline = BASELINE``, ``max_loss =
--max-loss`` per request, ``window = --window``).
The chosen arm's outcome is its run from the static pass: the decoder is
deterministic and a row's output does not depend on the other rows' arms
(the end-to-end benchmark checks this item by item), so decoding it again
would give the same EM, tokens and trace at seven times the cost per run;
``--decode-served`` decodes every batch with its per-row arms instead and
counts the items whose outcome equals the static run (``agree``).

Printed per run: the lowest (served − baseline) mean over the ``--window``
windows after the first (the budget asks ≥ −max_loss), served − baseline over
the run, served − best static arm in hindsight over the run with the 95 %
half-width of that mean from the paired per-item differences, and for the
conservative run the rule's budget state (decisions restricted, baseline
served, lower bound against the realized sum). Per (model, seed, λ) a
``headroom`` line says what per-item choice can gain at all over the best
static arm: the best arm per (task family, difficulty) cell and the per-item
oracle, in hindsight.

Learning speed (``--heldout N``, with ``--every K``): ``N`` held-out items
(seed ``HELD_OUT_SEED``, never a stream or training seed) are decoded once per
arm and model; every ``K`` served requests (at the first batch boundary past
each multiple) and at the end, each run's greedy policy (the Selector's
top-scoring arm per held-out item: prediction only, nothing logged or learned;
:func:`benchmarks.conservative.greedy_value`, the simulator benchmark's
valuation) is valued on them with those outcomes. Printed per run: ``to90``,
the requests until that value first reaches 90 % of the way from the fresh
policy's value to the plain run's final value (``-``: never within the run),
and ``greedy-best``, the final greedy value minus the best static arm's on the
held-out items: what the learned policy itself gains per request.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.conservative import greedy_value, to_target
from benchmarks.testbed.e2e_stats import Outcome, reward
from benchmarks.testbed.end_to_end import STREAM_SEED, run_stream
from benchmarks.testbed.run_arms import ARMS, HELD_OUT_SEED, run_items
from benchmarks.testbed.tasks import Item, sample_items
from benchmarks.testbed.train import require_trained
from stopbandit.bandit.conservative import ConservativeConfig
from stopbandit.bandit.trace import ProbeTrace
from stopbandit.config import SelectorConfig
from stopbandit.serving.selector import Selector

TOKEN_SCALE = 20.0  # the end-to-end run's unit: the testbed spends 10–25 tokens an item


def rewards_of(outs: Sequence[Outcome], lam: float) -> list[float]:
    return [reward(o.em, o.tokens, lam, TOKEN_SCALE) for o in outs]


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def ci95(xs: Sequence[float]) -> float:
    """95 % half-width of the mean of ``xs`` (normal approximation)."""
    m = mean(xs)
    return 1.96 * math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


def headroom(items: Sequence[Item], static: dict[str, list[float]], best: str) -> tuple[float, float]:
    """(best arm per (task, difficulty) cell, per-item oracle) minus the best static arm, per item, in hindsight."""
    n = len(items)
    cells: dict[tuple[str, int], list[int]] = {}
    for i, item in enumerate(items):
        cells.setdefault((item.domain, item.difficulty), []).append(i)
    cell = sum(max(sum(r[i] for i in idx) for r in static.values()) for idx in cells.values()) / n
    oracle = sum(max(r[i] for r in static.values()) for i in range(n)) / n
    base = mean(static[best])
    return cell - base, oracle - base


Runs = dict[str, list[tuple[float, int, ProbeTrace]]]  # arm -> per item (em, tokens, trace), one decoder run each
HeldOut = tuple[Sequence[Item], Runs]  # held-out items and their outcome under every arm
Curve = list[tuple[int, float]]  # (requests served, greedy policy's held-out value)


def reward_table(runs: Runs, lam: float) -> np.ndarray:
    """Per item × arm (``ARMS`` order, the Selector's column order) reward of the static runs."""
    return np.array([rewards_of([Outcome.of(a.name, *r) for r in runs[a.name]], lam) for a in ARMS]).T


def serve_static(selector: Selector, items: Sequence[Item], runs: Runs, batch: int,
                 after_batch: Callable[[int], None] | None = None) -> list[Outcome]:
    """The serving loop of :func:`end_to_end.run_stream`, each chosen arm's outcome read from its static run."""
    served: list[Outcome] = []
    for start in range(0, len(items), batch):
        chunk = range(start, min(len(items), start + batch))
        decisions = [selector.choose(items[i].prompt, domain=items[i].domain) for i in chunk]
        for d, i in zip(decisions, chunk):
            em, tokens, trace = runs[d.arm.name][i]
            selector.reward(d.decision_id, em, tokens, trace=trace, reference=items[i].answer)
            served.append(Outcome.of(d.arm.name, em, tokens, trace))
        if after_batch is not None:
            after_batch(len(served))
    return served


def one_run(decoder: Any, items: Sequence[Item], runs: Runs, lam: float, seed: int, url: str, batch: int,
            conservative: ConservativeConfig | None, decode_served: bool, heldout: HeldOut | None = None,
            every: int = 500) -> tuple[list[Outcome], Any, Curve]:
    """A fresh Selector serves ``items``; the served outcomes, the budget state at the end and the learning curve.

    The curve (empty without ``heldout``) holds the greedy policy's value on the
    held-out items before the first request, at the first batch boundary past
    every multiple of ``every`` and after the last request.
    """
    kw = {"conservative": conservative} if conservative is not None else {}
    with Selector.open(url, config=SelectorConfig(), lam=lam, token_scale=TOKEN_SCALE, arms=list(ARMS), seed=seed,
                       snapshot=None, follow=False, **kw) as selector:
        curve: Curve = []
        after_batch = None
        if heldout is not None:
            if [a.name for a in selector.arms.arms] != [a.name for a in ARMS]:
                raise ValueError("the Selector's arms are not in ARMS order: the held-out columns would not match")
            held_items, held_runs = heldout
            table = reward_table(held_runs, lam)
            curve.append((0, greedy_value(selector, held_items, table, lam)))

            def after_batch(n: int) -> None:
                if n // every > curve[-1][0] // every or n == len(items):
                    curve.append((n, greedy_value(selector, held_items, table, lam)))

        if decode_served:
            served = run_stream(decoder, selector, items, batch, after_batch)
        else:
            served = serve_static(selector, items, runs, batch, after_batch)
        return served, selector.budget(), curve


def analyse(items: Sequence[Item], static: dict[str, list[Outcome]], served: list[Outcome], lam: float,
            baseline: str, window: int) -> dict[str, Any]:
    rs = {a: rewards_of(o, lam) for a, o in static.items()}
    best = max(rs, key=lambda a: mean(rs[a]))
    got = rewards_of(served, lam)
    vs_base = [g - b for g, b in zip(got, rs[baseline])]
    vs_best = [g - b for g, b in zip(got, rs[best])]
    windows = [mean(vs_base[w:w + window]) for w in range(window, len(got), window)]
    agree = sum(o == static[o.arm][i] for i, o in enumerate(served))
    return {"served": mean(got), "baseline": mean(rs[baseline]), "best": best, "best_reward": mean(rs[best]),
            "run_vs_baseline": mean(vs_base), "windows_vs_baseline": windows,
            "min_window": min(windows) if windows else None, "run_vs_best": mean(vs_best),
            "ci": ci95(vs_best), "agree": agree, "realized": sum(vs_base)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, nargs="+", required=True)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--lambdas", default="0.1,0.3,1")
    ap.add_argument("--stream", type=int, default=2000)
    ap.add_argument("--window", type=int, default=500, help="budget window of the rule and of the table")
    ap.add_argument("--baselines", default="careful",
                    help="comma-separated baselines, one conservative run each; 'best': the best static arm on the "
                         "stream in hindsight at that λ (the operator's own tuned setting; a diagnostic). The plain "
                         "run is compared with the first")
    ap.add_argument("--max-loss", type=float, default=0.01)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--decode-served", action="store_true",
                    help="decode every served batch with its per-row arms instead of reading the static runs")
    ap.add_argument("--heldout", type=int, default=0,
                    help="value each run's greedy policy on this many held-out items (0: no learning curve)")
    ap.add_argument("--every", type=int, default=500, help="requests between two held-out valuations")
    ap.add_argument("--save", type=Path, help="write every run's figures as JSON here")
    args = ap.parse_args(argv)
    require_trained(ap, args.models)
    if args.heldout < 0 or args.every < 1:
        ap.error("--heldout must be ≥ 0 and --every ≥ 1")
    seeds = [int(s) for s in args.seeds.split(",")]
    lams = [float(x) for x in args.lambdas.split(",")]
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    for b in baselines:
        if b != "best" and b not in {a.name for a in ARMS}:
            ap.error(f"unknown baseline {b!r}: an arm of {[a.name for a in ARMS]} or 'best'")

    import torch

    from stopbandit.decoder.hf import HFDecoder

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    say = lambda msg: print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    print(f"stream={args.stream} window={args.window} baselines={baselines} max_loss={args.max_loss} "
          f"token_scale={TOKEN_SCALE:g} seeds={seeds} lambdas={lams} heldout={args.heldout} every={args.every}")
    print("model      seed λ    run           served  baseline best(arm)          min_window run-base  "
          "run-best ± ci      agree  to90  greedy-best  budget")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="stopbandit-cons-") as tmp:
        for m, path in enumerate(args.models):
            decoder = HFDecoder.from_pretrained(str(path), device="cpu")
            heldout: HeldOut | None = None
            if args.heldout:
                held_items = sample_items(args.heldout, seed=HELD_OUT_SEED)
                heldout = (held_items, {a.name: run_items(decoder, held_items, [a] * len(held_items)) for a in ARMS})
                say(f"{path.name}: {args.heldout} held-out items decoded under {len(ARMS)} arms")
            for seed in seeds:
                items = sample_items(args.stream, seed=STREAM_SEED + seed)
                runs = {a.name: run_items(decoder, items, [a] * len(items)) for a in ARMS}
                static = {a: [Outcome.of(a, *r) for r in rows] for a, rows in runs.items()}
                say(f"{path.name} seed {seed}: {len(ARMS)} static arms decoded")
                for lam in lams:
                    rs = {a: rewards_of(o, lam) for a, o in static.items()}
                    best = max(rs, key=lambda a: mean(rs[a]))
                    cell, oracle = headroom(items, rs, best)
                    held_best = None
                    if heldout is not None:
                        held_table = reward_table(heldout[1], lam)
                        held_rs = {a.name: list(held_table[:, j]) for j, a in enumerate(ARMS)}
                        held_arm = max(held_rs, key=lambda a: mean(held_rs[a]))
                        held_best = mean(held_rs[held_arm])
                        held_note = (f"; held-out: best static {held_arm} {held_best:.4f}, best arm per cell "
                                     f"{headroom(heldout[0], held_rs, held_arm)[0]:+.4f}")
                    print(f"# {path.name} seed {seed} λ {lam:g}: headroom over {best}: best arm per cell "
                          f"{cell:+.4f}, per-item oracle {oracle:+.4f}{held_note if heldout else ''}", flush=True)
                    target = None
                    named = [best if b == "best" else b for b in baselines]
                    plan = [("plain", named[0], None)] + [
                        (f"cons:{b}", b, ConservativeConfig(b, max_loss=args.max_loss, window=args.window))
                        for b in dict.fromkeys(named)]
                    for name, base, c in plan:
                        db = Path(tmp) / f"m{m}-s{seed}-l{lam:g}-{name.replace(':', '-')}.db"
                        url = f"sqlite:///{db}"
                        served, budget, curve = one_run(decoder, items, runs, lam, seed, url, args.batch, c,
                                                        args.decode_served, heldout, args.every)
                        r = analyse(items, static, served, lam, base, args.window)
                        t90, edge = "-", "-"
                        if curve:
                            if name == "plain":  # the reachable gap of this λ and seed: fresh → plain's final value
                                target = curve[0][1] + 0.9 * (curve[-1][1] - curve[0][1])
                            hit = None if target is None else to_target(curve, target)
                            t90, edge = ("-" if hit is None else str(hit)), f"{curve[-1][1] - held_best:+.4f}"
                            r.update(curve=curve, to90=hit, greedy_vs_best=curve[-1][1] - held_best,
                                     heldout_best=held_best)
                        b = "-"
                        if budget is not None:
                            b = (f"restricted {budget.restricted}, baseline served {budget.baseline_served}, "
                                 f"LB {budget.lower_bound:+.1f} vs realized {r['realized']:+.1f}")
                        mw = "—" if r["min_window"] is None else f"{r['min_window']:+.4f}"
                        print(f"{path.name:<10} {seed:<4} {lam:<4g} {name:<16} {r['served']:.4f}  {r['baseline']:.4f}"
                              f"   {r['best_reward']:.4f} ({r['best']:<10}) {mw:>9}  {r['run_vs_baseline']:+.4f}  "
                              f"{r['run_vs_best']:+.4f} ± {r['ci']:.4f}  {r['agree']}/{len(items)}  {t90:>5} {edge:>11}  "
                              f"{b}", flush=True)
                        results.append({"model": str(path), "seed": seed, "lam": lam, "run": name, "against": base,
                                        "headroom_cell": cell, "headroom_oracle": oracle, **r,
                                        "budget": None if budget is None else vars(budget)})
    if args.save is not None:
        args.save.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": results},
                                        indent=2))
    say("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
