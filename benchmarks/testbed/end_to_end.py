"""End to end on the testbed: a real Selector picks each request's arm, the early-exit decoder runs it.

Usage (repository root, after ``python -m benchmarks.testbed.train``)::

    nice -n 19 python -m benchmarks.testbed.end_to_end            # model 0; seeds 0,1,2; λ 0.1,0.3,1
    nice -n 19 python -m benchmarks.testbed.end_to_end --models benchmarks/testbed/out/model \\
        benchmarks/testbed/out/model-seed1 --seeds 0,1,2 --lambdas 0.1,0.3,1 --stream 2000 --items 1000 --json

(the second is the run quoted in docs/benchmarks.md).

Per trained model, per selector seed ``s`` and per λ:

1. **Training stream** (``--stream`` items, drawn from seed ``STREAM_SEED + s``):
   ``Selector.open`` on a fresh SQLite replay store (VW heads + SquareCB,
   default features from the prompt text, ``domain`` = the task family,
   exploration seed ``s``) chooses an arm per item; the decoder runs each
   item under its chosen arm (batches of ``--batch`` items with per-row arms,
   so rewards arrive up to one batch late); ``Selector.reward(decision_id,
   em, tokens, trace=…, reference=answer)`` reports EM against the task's
   answer and every token spent, probe tokens included, with the probe trace
   so every stricter arm the trace reveals is learned (nested feedback).
2. **Held-out evaluation** (``--items`` items, the same for every run): the
   learned policy's *greedy* arm per item (top score ``EM̂ − λ·tokenŝ/scale``
   of the policy as the stream left it, no exploration, nothing logged or
   learned) is decoded, and compared with ``full`` and every static arm
   decoded on the same items.

Yardsticks on the same held-out items, at the run's λ: the best static arm
(by reward), the static frontier (the best EM any mix of static arms reaches
at the learned policy's mean tokens, :func:`e2e_stats.hull_em`), and two
hindsight ceilings, ``cell_oracle`` (the best static arm per (task family,
difficulty) cell: a policy that knew each item's exact difficulty) and
``oracle`` (the best arm per item). The *served* figures (what the second half
of the stream got, exploration included) are reported too, and a learning
curve: the greedy policy's held-out EM/tokens at 1/8, 1/4, 1/2 of the stream,
looked up in the static runs (the final point is decoded). The decoder is
deterministic, so the held-out run of the learned policy must reproduce, item
by item, the static run of the arm it picked (``agree``): a live check that
per-row arms in a batch equal each row run alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.testbed.e2e_stats import Outcome, hull_em, mean_se, reward, summarize
from benchmarks.testbed.run_arms import ARMS, HELD_OUT_SEED, run_items
from benchmarks.testbed.tasks import Item, sample_items
from benchmarks.testbed.train import DEFAULT_OUT, require_trained
from stopbandit.bandit.arms import Arm
from stopbandit.serving.selector import Selector
from stopbandit.bandit.vw import shared_line
from stopbandit.config import SelectorConfig
from stopbandit.errors import InputError, StoreError
from stopbandit.features.extract import FeatureConfig

STREAM_SEED = 30_000_000  # stream s draws sample_items(seed=STREAM_SEED + s): far from training and held-out seeds

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Settings:
    """One experiment. ``token_scale`` sets the reward's token unit: ``EM − λ·tokens/token_scale``.

    The testbed spends ~10–25 tokens an item, so the Selector's serving default
    (1000) would make every λ ≤ 1 a no-op; 20 puts λ = 0.1–0.3 in the range
    where saving ~10 tokens is worth a few points of EM; at λ = 1 a token costs 0.05 EM.
    """

    lambdas: tuple[float, ...] = (0.1, 0.3, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    stream: int = 2000
    items: int = 1000
    token_scale: float = 20.0
    batch: int = 32
    held_out_seed: int = HELD_OUT_SEED
    arms: tuple[Arm, ...] = ARMS
    length_counter: str = "whitespace"  # the extractor's default; "chars4" counts characters / 4

    def __post_init__(self) -> None:
        for name in ("stream", "items", "batch"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.lambdas or not self.seeds:
            raise InputError(f"need at least one λ and one seed, got lambdas={self.lambdas}, seeds={self.seeds}")
        if self.token_scale <= 0:
            raise InputError(f"token_scale must be > 0, got {self.token_scale!r}")

    def to_json(self) -> dict[str, Any]:
        return {"lambdas": list(self.lambdas), "seeds": list(self.seeds), "stream": self.stream, "items": self.items,
                "token_scale": self.token_scale, "batch": self.batch, "held_out_seed": self.held_out_seed,
                "stream_seed": STREAM_SEED, "arms": [a.to_dict() for a in self.arms],
                "length_counter": self.length_counter}


@dataclass(slots=True)
class LearnedRun:
    """One (selector seed, λ) run on one model. Lists are per item, in item order."""

    seed: int
    lam: float
    served: list[Outcome]  # the training stream, arms as the Selector sampled them
    learned: list[Outcome]  # the held-out items, the learned policy's greedy arms
    store: dict[str, Any]  # replay-store rows after the stream: counts, traced outcomes, equal to what was served
    logged_arms: dict[str, int]  # arm -> decisions in the store
    agree: int  # held-out items whose learned-arm outcome equals the static run of that arm
    curve: list[dict[str, float]]  # held-out greedy EM/tokens at stream checkpoints (looked up in the static runs)
    seconds: float = 0.0


@dataclass(slots=True)
class ModelRun:
    path: str
    held_out: list[Item]
    static: dict[str, list[Outcome]]
    runs: list[LearnedRun] = field(default_factory=list)


def decode(decoder: Any, items: Sequence[Item], arms: Sequence[Arm]) -> list[Outcome]:
    """Decode ``items[i]`` under ``arms[i]`` (batched, per-row arms)."""
    return [Outcome.of(arm.name, em, tokens, trace)
            for arm, (em, tokens, trace) in zip(arms, run_items(decoder, items, arms))]


def run_stream(decoder: Any, selector: Selector, items: Sequence[Item], batch: int,
               after_batch: Callable[[int], None] | None = None) -> list[Outcome]:
    """The serving loop: ``choose`` per item, decode the batch with per-row arms, ``reward`` with the trace.

    ``after_batch(n)`` is called once ``n`` items have been rewarded (learning-curve checkpoints).
    """
    served: list[Outcome] = []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        decisions = [selector.choose(item.prompt, domain=item.domain) for item in chunk]
        arms = [d.arm for d in decisions]
        for d, item, arm, (em, tokens, trace) in zip(decisions, chunk, arms, run_items(decoder, chunk, arms)):
            selector.reward(d.decision_id, em, tokens, trace=trace, reference=item.answer)
            served.append(Outcome.of(arm.name, em, tokens, trace))
        if after_batch is not None:
            after_batch(len(served))
    return served


def greedy_arms(selector: Selector, items: Sequence[Item], lam: float) -> list[Arm]:
    """The policy's top-scoring arm per item at ``lam``: prediction only (nothing logged, learned or sampled).

    Features come from the Selector's own extractor, as ``choose`` builds
    them (its per-domain prior as the stream left it).
    """
    arms = selector.arms.arms
    policy = selector.policy
    out = []
    for item in items:
        _, scores = policy.decide(shared_line(selector.extractor.extract(item.prompt, item.domain)), lam)
        out.append(arms[max(range(len(scores)), key=scores.__getitem__)])
    return out


def checkpoints(stream: int, batch: int) -> set[int]:
    """Stream sizes (batch boundaries) near 1/8, 1/4, 1/2 and all of the stream."""
    ends = sorted({min(stream, b) for b in range(batch, stream + batch, batch)})
    return {min(ends, key=lambda e: abs(e - stream * f)) for f in (0.125, 0.25, 0.5, 1.0)}


def run_learned(decoder: Any, model: ModelRun, settings: Settings, seed: int, lam: float, url: str) -> LearnedRun:
    """One Selector (fresh store at ``url``) through the stream, then its greedy policy on the held-out items."""
    start = time.perf_counter()
    stream = sample_items(settings.stream, seed=STREAM_SEED + seed)
    marks = checkpoints(settings.stream, settings.batch)
    curve: list[dict[str, float]] = []
    config = SelectorConfig(features=FeatureConfig(length_counter=settings.length_counter))
    with Selector.open(url, config=config, lam=lam, token_scale=settings.token_scale, arms=list(settings.arms),
                       seed=seed, snapshot=None, follow=False) as selector:

        def checkpoint(n: int) -> None:
            if n in marks:
                picked = [model.static[a.name][i] for i, a in enumerate(greedy_arms(selector, model.held_out, lam))]
                curve.append({"stream": n, "em": sum(o.em for o in picked) / len(picked),
                              "tokens": sum(o.tokens for o in picked) / len(picked)})

        served = run_stream(decoder, selector, stream, settings.batch, checkpoint)
        if not selector.drain(60.0):
            raise StoreError(f"replay store {url} did not take every row within 60 s: {selector.health()}")
        counts = selector.store.counts()
        events = [e for chunk in selector.store.iter_events() for e in chunk]
        chosen = greedy_arms(selector, model.held_out, lam)
    learned = decode(decoder, model.held_out, chosen)
    agree = sum(o == model.static[o.arm][i] for i, o in enumerate(learned))
    store = {"decisions": counts["decisions"], "outcomes": counts["outcomes"],
             "traced": sum(e.trace is not None for e in events),
             "matches_served": sorted((e.arm, e.em, e.tokens) for e in events)
             == sorted((o.arm, o.em, o.tokens) for o in served)}
    return LearnedRun(seed, lam, served, learned, store, dict(Counter(e.arm for e in events)), agree, curve,
                      time.perf_counter() - start)


def run_model(decoder: Any, path: str, settings: Settings, workdir: Path, progress: Progress | None = None,
              tag: str = "m") -> ModelRun:
    """Static arms, then every (seed, λ) learned run, for one decoder; stores go to ``workdir`` (``tag`` in names)."""
    say = progress or (lambda _msg: None)
    held = sample_items(settings.items, seed=settings.held_out_seed)
    t0 = time.perf_counter()
    static = {arm.name: decode(decoder, held, [arm] * len(held)) for arm in settings.arms}
    say(f"{path}: {len(settings.arms)} static arms x {len(held)} held-out items in {time.perf_counter() - t0:.1f} s")
    model = ModelRun(path, held, static)
    for seed in settings.seeds:
        for lam in settings.lambdas:
            url = f"sqlite:///{workdir / f'replay-{tag}-s{seed}-l{lam:g}.db'}"
            run = run_learned(decoder, model, settings, seed, lam, url)
            model.runs.append(run)
            s = summarize([i.level for i in held], run.learned)
            say(f"{path}: seed {seed} λ {lam:g}: learned EM {s['em']:.3f}, {s['tokens']:.1f} tokens "
                f"({run.seconds:.0f} s)")
    return model


# -- report ------------------------------------------------------------------------------------------------


def compare(model: ModelRun, run: LearnedRun, settings: Settings) -> dict[str, Any]:
    """The learned policy against the static arms on the same held-out items, at the run's λ."""
    levels = [i.level for i in model.held_out]
    lam, scale = run.lam, settings.token_scale
    static = {name: summarize(levels, outs) for name, outs in model.static.items()}
    rewards = {name: reward(s["em"], s["tokens"], lam, scale) for name, s in static.items()}
    best = max(rewards, key=rewards.__getitem__)
    learned = summarize(levels, run.learned)
    learned_reward = reward(learned["em"], learned["tokens"], lam, scale)
    per_item = [[reward(outs[i].em, outs[i].tokens, lam, scale) for outs in model.static.values()]
                for i in range(len(levels))]
    oracle = sum(max(r) for r in per_item) / len(levels)
    cells: dict[tuple[str, int], list[list[float]]] = {}
    for item, r in zip(model.held_out, per_item):
        cells.setdefault((item.domain, item.difficulty), []).append(r)
    cell_oracle = sum(max(map(sum, zip(*rows))) for rows in cells.values()) / len(levels)
    hull = hull_em({n: (s["tokens"], s["em"]) for n, s in static.items()}, learned["tokens"])
    half = run.served[len(run.served) // 2 :]
    return {
        "seed": run.seed,
        "lam": lam,
        "learned": {**learned, "reward": learned_reward},
        "learned_arms": dict(Counter(o.arm for o in run.learned)),
        "full": {"em": static["full"]["em"], "tokens": static["full"]["tokens"],
                 "reward": rewards["full"]},
        "best_static": {"arm": best, "em": static[best]["em"], "tokens": static[best]["tokens"],
                        "reward": rewards[best]},
        "delta_reward_vs_best_static": learned_reward - rewards[best],
        "static_hull_em_at_learned_tokens": hull,
        "delta_em_vs_static_hull": None if hull is None else learned["em"] - hull,
        "oracle_reward": oracle,
        "cell_oracle_reward": cell_oracle,
        "served_last_half": {**summarize(["?"] * len(half), half),
                             "reward": reward(sum(o.em for o in half) / len(half),
                                              sum(o.tokens for o in half) / len(half), lam, scale)},
        "curve": [{**c, "reward": reward(c["em"], c["tokens"], lam, scale)} for c in run.curve],
        "store": run.store,
        "logged_arms": run.logged_arms,
        "agree": run.agree,
        "items": len(levels),
        "seconds": run.seconds,
    }


def build_report(models: Sequence[ModelRun], settings: Settings) -> dict[str, Any]:
    """JSON-ready report: static arms per model, every run's comparison, mean ± s.e. over all runs per λ."""
    out: dict[str, Any] = {"settings": settings.to_json(), "models": [], "summary": {}}
    every: list[dict[str, Any]] = []
    for model in models:
        levels = [i.level for i in model.held_out]
        runs = [compare(model, run, settings) for run in model.runs]
        every.extend({**r, "model": model.path} for r in runs)
        out["models"].append({
            "path": model.path,
            "static": {name: summarize(levels, outs) for name, outs in model.static.items()},
            "runs": runs,
        })
    for lam in settings.lambdas:
        rows = [r for r in every if r["lam"] == lam]
        pick = {
            "learned_em": lambda r: r["learned"]["em"],
            "learned_tokens": lambda r: r["learned"]["tokens"],
            "learned_reward": lambda r: r["learned"]["reward"],
            "best_static_reward": lambda r: r["best_static"]["reward"],
            "full_em": lambda r: r["full"]["em"],
            "full_tokens": lambda r: r["full"]["tokens"],
            "delta_reward_vs_best_static": lambda r: r["delta_reward_vs_best_static"],
            "delta_em_vs_static_hull": lambda r: r["delta_em_vs_static_hull"],
            "served_em": lambda r: r["served_last_half"]["em"],
            "served_tokens": lambda r: r["served_last_half"]["tokens"],
            "oracle_reward": lambda r: r["oracle_reward"],
            "cell_oracle_reward": lambda r: r["cell_oracle_reward"],
        }
        summary: dict[str, Any] = {"runs": len(rows)}
        for name, get in pick.items():
            values = [v for r in rows if (v := get(r)) is not None]
            summary[name] = dict(zip(("mean", "se"), mean_se(values))) if values else None
        summary["best_static_arms"] = dict(Counter(r["best_static"]["arm"] for r in rows))
        out["summary"][f"{lam:g}"] = summary
    return out


def print_report(report: dict[str, Any]) -> None:
    """Rich tables: static arms per model, each learned run, and the mean ± s.e. per λ."""
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=240)
    s = report["settings"]
    console.print(f"stream {s['stream']} items, held-out {s['items']} items, batch {s['batch']}, "
                  f"length counter {s['length_counter']}, "
                  f"token_scale {s['token_scale']:g}, reward = EM − λ·tokens/{s['token_scale']:g}; "
                  f"tokens include probes")
    for model in report["models"]:
        t = Table(title=f"static arms, {model['path']}")
        for col in ("arm", "EM", "easy", "medium", "hard", "tokens", "tok easy", "tok med", "tok hard"):
            t.add_column(col, justify="left" if col == "arm" else "right")
        for name, row in model["static"].items():
            t.add_row(name, *(f"{row[k]:.3f}" for k in ("em", "em_easy", "em_medium", "em_hard")),
                      *(f"{row[k]:.1f}" for k in ("tokens", "tokens_easy", "tokens_medium", "tokens_hard")))
        console.print(t)
    t = Table(title="learned policy (greedy, held-out) vs static arms, per run")
    for col in ("model", "seed", "λ", "EM", "tokens", "reward", "best static", "EM/tok/reward", "Δ reward",
                "hull EM", "Δ EM hull", "cell oracle", "served EM/tok", "store d/o", "agree", "arms (greedy)"):
        t.add_column(col, justify="left" if col in ("model", "best static", "arms (greedy)") else "right")
    for model in report["models"]:
        for r in model["runs"]:
            lr, b = r["learned"], r["best_static"]
            hull = r["static_hull_em_at_learned_tokens"]
            store = f"{r['store']['decisions']}/{r['store']['outcomes']}"
            store += "" if r["store"]["matches_served"] else " ≠"
            t.add_row(Path(model["path"]).name, str(r["seed"]), f"{r['lam']:g}", f"{lr['em']:.3f}",
                      f"{lr['tokens']:.1f}", f"{lr['reward']:.3f}", b["arm"],
                      f"{b['em']:.3f}/{b['tokens']:.1f}/{b['reward']:.3f}",
                      f"{r['delta_reward_vs_best_static']:+.3f}", "—" if hull is None else f"{hull:.3f}",
                      "—" if hull is None else f"{r['delta_em_vs_static_hull']:+.3f}",
                      f"{r['cell_oracle_reward']:.3f}",
                      f"{r['served_last_half']['em']:.3f}/{r['served_last_half']['tokens']:.1f}",
                      store, f"{r['agree']}/{r['items']}",
                      " ".join(f"{a}:{n}" for a, n in sorted(r["learned_arms"].items(), key=lambda kv: -kv[1])))
    console.print(t)
    t = Table(title="mean ± s.e. over all (model, seed) runs")
    columns = {"learned EM": ("learned_em", 3), "learned tokens": ("learned_tokens", 1),
               "learned reward": ("learned_reward", 3), "best static reward": ("best_static_reward", 3),
               "Δ reward": ("delta_reward_vs_best_static", 3), "Δ EM vs hull": ("delta_em_vs_static_hull", 3),
               "cell oracle": ("cell_oracle_reward", 3), "oracle": ("oracle_reward", 3),
               "full EM": ("full_em", 3), "full tokens": ("full_tokens", 1), "served EM": ("served_em", 3),
               "served tokens": ("served_tokens", 1)}
    for col in ("λ", "runs", *columns):
        t.add_column(col, justify="right")
    fmt = lambda v, d: "—" if v is None else f"{v['mean']:.{d}f} ± {v['se']:.{d}f}"  # noqa: E731
    for lam, m in report["summary"].items():
        t.add_row(lam, str(m["runs"]), *(fmt(m[key], d) for key, d in columns.values()))
    console.print(t)


DEFAULTS = Settings()


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Selector + early-exit decoder end to end on the testbed.")
    parser.add_argument("--models", type=Path, nargs="+", default=[DEFAULT_OUT],
                        help="trained model directories (python -m benchmarks.testbed.train --out DIR --seed N)")
    parser.add_argument("--seeds", type=_ints, default=DEFAULTS.seeds, help="selector/stream seeds, e.g. 0,1,2")
    parser.add_argument("--lambdas", type=_floats, default=DEFAULTS.lambdas, help="e.g. 0.1,0.3")
    parser.add_argument("--stream", type=int, default=DEFAULTS.stream, help="training-stream items per run")
    parser.add_argument("--items", type=int, default=DEFAULTS.items, help="held-out items")
    parser.add_argument("--token-scale", type=float, default=DEFAULTS.token_scale)
    parser.add_argument("--batch", type=int, default=DEFAULTS.batch, help="stream items decoded per batch")
    parser.add_argument("--length-counter", default=DEFAULTS.length_counter, choices=("whitespace", "chars4"),
                        help="the feature extractor's prompt-length counter (default: the library default)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    parser.add_argument("--save", type=Path, help="also write the JSON report to this file")
    args = parser.parse_args(argv)

    import torch

    from stopbandit.decoder.hf import HFDecoder

    torch.set_num_threads(args.threads)
    settings = Settings(lambdas=args.lambdas, seeds=args.seeds, stream=args.stream, items=args.items,
                        token_scale=args.token_scale, batch=args.batch, length_counter=args.length_counter)
    require_trained(parser, args.models)
    start = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="stopbandit-e2e-") as tmp:
        models = [run_model(HFDecoder.from_pretrained(p, device=args.device), str(p), settings, Path(tmp), progress,
                            tag=f"m{i}") for i, p in enumerate(args.models)]
    report = build_report(models, settings)
    report["seconds"] = time.perf_counter() - start
    if args.save is not None:
        args.save.write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
        print(f"{time.perf_counter() - start:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
