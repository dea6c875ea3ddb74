"""Learning benchmark: the stopbandit Selector against baselines on seeded simulator streams.

Every policy of a seed plays the same requests from ``stopbandit.sim``
(paired comparison). The stopbandit policies run through the real product
path: ``Selector.open("sqlite:///<tmp>/….db", lam=…, seed=…)`` writing a real
SQLite replay store, ``choose`` → ``sim.run`` on the chosen arm → ``reward``.

Compared (section "main", λ = ``--lam``):

* ``plain``     -- Selector, heads + SquareCB, learning the logged arm only;
* ``nested``    -- the same, rewarded with the probe trace and the reference
                   answer, so every stricter arm the trace reveals is learned;
* ``native``    -- ``Selector.open(..., policy="vw-native")`` (VW cb_explore_adf);
* ``thompson``  -- a context-free Thompson-sampling bandit over the arms;
* ``fullinfo``  -- the heads learning every arm's outcome, greedy (ceiling);
* always-full, every static arm, the best static arm in hindsight and the
  per-request hindsight oracle (from ``outcome_table``).

Also: prototypes of library changes (section "prototypes"), the λ at which the
Selector saves as many tokens as the static ``balanced`` rule and its EM drop
there (section "matched"), and a drift scenario -- a domain-mix and difficulty
shift at 50% of the stream, a λ change (``set_lambda``) at 70% (section "drift").

Figures: cumulative reward, fraction of the oracle gap closed over trailing
windows, held-out learning curves (requests to reach a share of the reachable
gap), recovery after drift; PNGs ``learning_curve.png`` and ``drift.png``.
Definitions: ``benchmarks/learning_lib/metrics.py`` and docs/benchmarks.md ("Learning").
Prototypes (``--sections prototypes --protos KEY,...``, any key of ``learning_lib.suite.LEARNERS``):
issue 9's candidates for the λ = 0.4 plateau include revealed updates weighted 1/q (``nested-graph-iw10``),
VW's default ``-l 0.5``, the library's rate before issue 9 (``nested-graph-lr0.5``, ``plain-lr0.5``),
and exploration variants (``nested-graph-r75``).

    python benchmarks/learning.py                 # full run: 50k requests, 3 seeds (16–20 min measured on 2 busy cores)
    python benchmarks/learning.py --quick         # 4k requests, 2 seeds (~1 min)
    python benchmarks/learning.py --seeds 5 --requests 20000 --sections main,drift
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.learning_lib import analysis  # noqa: E402
from benchmarks.learning_lib.metrics import fmt  # noqa: E402
from benchmarks.learning_lib.runners import Trajectory, from_arms  # noqa: E402
from benchmarks.learning_lib.streams import ARMS, Scenario, Shift, Stream, make_stream  # noqa: E402
from benchmarks.learning_lib.suite import LEARNERS, Task, held_for, run_task  # noqa: E402

SECTIONS = ("main", "prototypes", "matched", "drift")
MAIN_KEYS = ("plain", "nested", "nested-graph", "native", "thompson", "fullinfo")
PROTO_KEYS = ("nested-lenient",)  # more with --protos (e.g. nested-g20, plain-g20, nested-graph-g20, nested-latent)
MATCHED_KEYS = ("nested", "plain", "nested-graph", "nested-latent")
DRIFT_KEYS = ("plain", "nested", "nested-graph", "native", "thompson")
CHECKPOINT_GRID = (100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 4000, 5000, 7500, 10000, 15000, 20000,
                   30000, 40000, 50000, 75000, 100000)
DRIFT_MIX = {"math": 0.2, "science": 0.1, "code": 0.6, "trivia": 0.1}
DRIFT_DIFFICULTY = 0.7
LEVELS = (0.5, 0.75, 0.9)


@dataclass(frozen=True)
class Plan:
    """Sizes of one run. ``n``: requests of the main and drift streams."""

    n: int
    seeds: tuple[int, ...]
    lam: float = 0.2
    drift_lam: float = 0.4
    held_n: int = 3000
    window: int = 1000
    search_n: int = 20000
    search_lams: tuple[float, ...] = (0.25, 0.3, 0.35, 0.4, 0.5)
    matched_n: int = 25000
    sections: tuple[str, ...] = SECTIONS
    protos: tuple[str, ...] = PROTO_KEYS
    jobs: int = 2
    features_version: int = 2  # FeatureConfig.version of every learner's features (1: before issue 9)

    @property
    def checkpoints(self) -> tuple[int, ...]:
        return tuple(sorted({c for c in CHECKPOINT_GRID if c < self.n} | {self.n}))

    @property
    def report_at(self) -> tuple[int, ...]:
        """Checkpoints of the tables: 1k, 10k and the end (those the stream reaches)."""
        return tuple(sorted({c for c in (1000, 10000) if c < self.n} | {self.n}))

    def main_scenario(self) -> Scenario:
        return Scenario("main", self.n, self.lam)

    def drift_scenario(self) -> Scenario:
        return Scenario("drift", self.n, self.lam, lam_changes=((self.lam_at, self.drift_lam),),
                        shifts=(Shift.of(self.shift_at, DRIFT_MIX, DRIFT_DIFFICULTY),))

    @property
    def shift_at(self) -> int:
        return self.n // 2

    @property
    def lam_at(self) -> int:
        return (self.n * 7) // 10

    @property
    def drift_window(self) -> int:
        return max(100, min(1000, self.n // 50))


def plan_from_args(args: argparse.Namespace) -> Plan:
    sections = tuple(s for s in args.sections.split(",") if s) if args.sections else SECTIONS
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--sections: unknown section(s) {sorted(unknown)}; known: {list(SECTIONS)}")
    protos = tuple(p for p in args.protos.split(",") if p) if args.protos else PROTO_KEYS
    unknown = set(protos) - set(LEARNERS)
    if unknown:
        raise SystemExit(f"--protos: unknown learner(s) {sorted(unknown)}; known: {sorted(LEARNERS)}")
    if args.quick:
        n = args.requests or 4000
        seeds = tuple(range(args.seeds or 2))
        return Plan(n=n, seeds=seeds, lam=args.lam, held_n=600, window=min(1000, n // 4), search_n=max(1000, n // 2),
                    search_lams=(0.25, 0.35, 0.5), matched_n=max(1000, (3 * n) // 4), sections=sections,
                    protos=protos, jobs=args.jobs, features_version=args.features_version)
    n = args.requests or 50000
    seeds = tuple(range(args.seeds or 3))
    return Plan(n=n, seeds=seeds, lam=args.lam, window=min(1000, n // 4), search_n=min(20000, max(2000, n // 2)),
                matched_n=max(2000, n // 2), sections=sections, protos=protos, jobs=args.jobs,
                features_version=args.features_version)


# -- running ------------------------------------------------------------------------------------

@dataclass
class Results:
    plan: Plan
    streams: dict[str, dict[int, Stream]] = field(default_factory=dict)
    trajs: dict[str, dict[int, dict[str, Trajectory]]] = field(default_factory=dict)
    helds: dict[int, Stream] = field(default_factory=dict)
    search: list[tuple[float, float]] = field(default_factory=list)
    search_target: float = float("nan")
    lam_star: float = float("nan")
    wall_s: float = 0.0

    def put(self, section: str, seed: int, key: str, traj: Trajectory) -> None:
        self.trajs.setdefault(section, {}).setdefault(seed, {})[key] = traj


def _work(section: str, task: Task) -> tuple[str, Task, Trajectory]:
    def progress(msg: str) -> None:
        print(f"    … {section}: {msg}", file=sys.stderr, flush=True)

    return section, task, run_task(task, progress)


def _tasks(plan: Plan) -> list[tuple[str, Task]]:
    out: list[tuple[str, Task]] = []
    if "matched" in plan.sections:
        for lam in plan.search_lams:
            out.append(("search", Task(Scenario("search", plan.search_n, lam), plan.seeds[0], "nested",
                                       features_version=plan.features_version)))
    if "main" in plan.sections or "prototypes" in plan.sections:
        # prototypes alone: the plain learner and the ceiling, plus what --protos names (any learner key)
        keys = list(MAIN_KEYS) if "main" in plan.sections else ["plain", "fullinfo"]
        if "prototypes" in plan.sections:
            keys += [k for k in plan.protos if k not in keys]
        keys.sort(key=lambda k: (not LEARNERS[k].nested, LEARNERS[k].kind != "selector"))  # long tasks first
        for seed in plan.seeds:
            for k in keys:
                out.append(("main", Task(plan.main_scenario(), seed, k, plan.held_n, plan.checkpoints,
                                         plan.features_version)))
    if "drift" in plan.sections:
        for seed in plan.seeds:
            for k in DRIFT_KEYS:
                out.append(("drift", Task(plan.drift_scenario(), seed, k, features_version=plan.features_version)))
    return out


def run_benchmark(plan: Plan, log=print) -> Results:
    """Run every task of ``plan`` (over ``plan.jobs`` processes) and collect the trajectories."""
    t0 = time.perf_counter()
    res = Results(plan)
    tasks = _tasks(plan)
    search_left = sum(1 for s, _ in tasks if s == "search")
    total = len(tasks) + (len(MATCHED_KEYS) * len(plan.seeds) if "matched" in plan.sections else 0)
    done = 0

    def collect(section: str, task: Task, traj: Trajectory) -> None:
        nonlocal done, search_left
        done += 1
        key = task.learner if section != "search" else f"{task.learner}@{task.scenario.lam:g}"
        res.put(section, task.seed, key, traj)
        log(f"[{done}/{total}] {section:8s} seed {task.seed} {key:18s} {traj.wall_s:6.1f} s "
            f"({time.perf_counter() - t0:5.0f} s elapsed)")
        if section == "search":
            search_left -= 1

    def matched_tasks() -> list[tuple[str, Task]]:
        _finish_search(res)
        log(f"λ search: savings {[(lam, round(s, 4)) for lam, s in res.search]}, target "
            f"{res.search_target:.4f} (balanced) → λ* = {res.lam_star:.3f}")
        sc = Scenario("matched", plan.matched_n, res.lam_star)
        return [("matched", Task(sc, seed, k, features_version=plan.features_version))
                for seed in plan.seeds for k in MATCHED_KEYS]

    if plan.jobs <= 1:
        for section, task in tasks:
            collect(*_work(section, task))
        if "matched" in plan.sections:
            for section, task in matched_tasks():
                collect(*_work(section, task))
    else:
        with ProcessPoolExecutor(plan.jobs) as pool:
            pending: set[Future] = {pool.submit(_work, s, t) for s, t in tasks}
            matched_sent = "matched" not in plan.sections
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    collect(*f.result())
                if not matched_sent and search_left == 0:
                    pending |= {pool.submit(_work, s, t) for s, t in matched_tasks()}
                    matched_sent = True
    _build_streams(res)
    res.wall_s = time.perf_counter() - t0
    return res


def _finish_search(res: Results) -> None:
    plan = res.plan
    seed = plan.seeds[0]
    lo = plan.search_n // 2
    points, target = [], []
    for lam in plan.search_lams:
        stream = make_stream(Scenario("search", plan.search_n, lam), seed)
        traj = res.trajs["search"][seed][f"nested@{lam:g}"]
        points.append((lam, analysis.savings_em(stream, traj, lo, plan.search_n)[0]))
        target.append(analysis.savings_em(stream, from_arms("balanced", stream, np.full(stream.n, analysis.BALANCED)),
                                          lo, plan.search_n)[0])
    res.search = points
    res.search_target = float(np.mean(target))
    res.lam_star = round(analysis.interpolate_lambda(points, res.search_target), 3)


def _build_streams(res: Results) -> None:
    """The streams of every section in this process, plus the baselines as trajectories."""
    plan = res.plan
    for section, trajs in res.trajs.items():
        if section == "search":
            continue
        sc = {"main": plan.main_scenario(), "drift": plan.drift_scenario(),
              "matched": Scenario("matched", plan.matched_n, res.lam_star)}[section]
        for seed in trajs:
            stream = make_stream(sc, seed)
            res.streams.setdefault(section, {})[seed] = stream
            for key, t in analysis.baselines(stream).items():
                res.put(section, seed, key, t)
            if section == "drift":
                res.put(section, seed, "best-static-phase",
                        from_arms("best static arm of each phase (hindsight)", stream, stream.best_static_per_phase()))
            if section == "main":
                for kind in ("features", "latent"):
                    res.put(section, seed, f"cells-{kind}",
                            analysis.hindsight_cells(stream, kind, plan.features_version))
                if plan.held_n:
                    res.helds[seed] = held_for(plan.lam, plan.held_n, seed)


# -- reporting ----------------------------------------------------------------------------------------

def md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _labels() -> dict[str, str]:
    return {k: v.label for k, v in LEARNERS.items()}


def render(res: Results, command: str) -> str:
    plan = res.plan
    parts = [f"Command: `{command}`  ",
             f"Requests per stream: {plan.n:,}; seeds: {list(plan.seeds)}; λ = {plan.lam:g} (token_scale 1000); "
             f"features version {plan.features_version}; cells: mean ± sd over seeds; "
             f"wall time {res.wall_s / 60:.1f} min with {plan.jobs} worker process(es)."]
    labels = _labels()
    if "main" in res.trajs:
        streams, trajs = res.streams["main"], res.trajs["main"]
        base = ["oracle", "cells-latent", "cells-features", "best-static"] + [f"static-{a.name}" for a in ARMS]
        learners = [k for k in MAIN_KEYS if k in trajs[plan.seeds[0]]]
        protos = [k for k in plan.protos if k in trajs[plan.seeds[0]]] if "prototypes" in plan.sections else []
        main_order = base + [k for k in learners if k != "fullinfo"] + (["fullinfo"] if "fullinfo" in learners else [])
        t = analysis.main_table(streams, trajs, main_order, checkpoints=plan.report_at, window=plan.window)
        parts += [f"\n### Online reward, λ = {plan.lam:g}\n",
                  f"Gap closed = Σ(r_policy − r_ref) / Σ(r_oracle − r_ref) over the trailing {plan.window:,} "
                  "requests before the checkpoint, on the same requests; r_ref = always-full or the best static arm "
                  "in hindsight.\n", md_table(t.header, t.rows)]
        curve_keys = [k for k in dict.fromkeys(learners + protos) if trajs[plan.seeds[0]][k].curve]
        cs = analysis.curve_stats(res.helds, trajs, curve_keys, plan.lam)
        if cs is not None:
            h, rows = analysis.curve_table(cs, [k for k in curve_keys if k in learners], labels, plan.report_at,
                                           LEVELS)
            parts += [f"\n### Held-out learning curves, λ = {plan.lam:g}\n",
                      f"Value of the policy as served (exploration included) on {plan.held_n:,} held-out requests; "
                      f"always-full {fmt(cs.v_full, 4)}, best static arm {fmt(cs.v_best_static, 4)}, reachable "
                      f"ceiling {fmt(cs.ceiling, 4)}, per-request oracle {fmt(cs.v_oracle, 4)}. Reachable gap = "
                      "always-full → reachable ceiling = max(best static arm, plateau of the full-information "
                      "heads: mean of their last 3 checkpoints).\n", md_table(h, rows)]
            if "plain" in cs.value and "nested" in cs.value:
                h, rows = analysis.ratio_table(cs, "plain", [k for k in ("nested", "nested-graph") if k in cs.value],
                                               LEVELS)
                parts += ["\nRequests needed, plain vs nested-feedback learners (seed-mean curve; per seed in "
                          "brackets, seeds in order; 'same quality as plain @end' = the first checkpoint from which "
                          "the learner's held-out value stays at or above the plain learner's value at the last "
                          "checkpoint):\n", md_table(h, rows)]
            if protos:
                proto_keys = list(dict.fromkeys([k for k in ("nested", "nested-graph") if k in cs.value] +
                                                [k for k in protos if k in cs.value]))
                h, rows = analysis.curve_table(cs, proto_keys, labels, plan.report_at, LEVELS)
                t = analysis.main_table(streams, trajs, proto_keys, checkpoints=plan.report_at, window=plan.window)
                parts += [f"\n### Prototypes (candidate library changes), λ = {plan.lam:g}\n",
                          md_table(t.header, t.rows), "", md_table(h, rows)]
                if "plain" in cs.value:
                    h, rows = analysis.ratio_table(cs, "plain", proto_keys, LEVELS)
                    parts += ["\nRequests needed, plain vs the prototypes (as above):\n", md_table(h, rows)]
                for base in (k for k in proto_keys if k.startswith("plain-")):  # a plain variant as the baseline
                    nested = [k for k in proto_keys if LEARNERS[k].nested]
                    if nested:
                        h, rows = analysis.ratio_table(cs, base, nested, LEVELS)
                        parts += [f"\nRequests needed, {base} vs the nested prototypes (as above):\n",
                                  md_table(h, rows)]
                parts += ["\nExploration's share of the plateau (held-out, last checkpoint): value as served vs "
                          "the greedy arm's value, and the full-information heads (greedy):\n",
                          md_table(*analysis.greedy_table(cs, ["plain"] + proto_keys + ["fullinfo"], labels))]
    if "matched" in res.trajs:
        parts += ["\n" + _render_matched(res)]
    if "drift" in res.trajs:
        parts += ["\n" + _render_drift(res, labels)]
    return "\n".join(parts)


def _render_matched(res: Results) -> str:
    plan = res.plan
    streams, trajs = res.streams["matched"], res.trajs["matched"]
    lo, hi = plan.matched_n // 2, plan.matched_n
    rows = []
    keys = [k for k in MATCHED_KEYS if k in trajs[plan.seeds[0]]] + ["static-balanced", "oracle"]
    per: dict[str, list[tuple[float, float, float]]] = {}
    bounds: dict[str, list[float]] = {"static": [], "features": [], "latent": [], "oracle": []}
    for seed, stream in streams.items():
        for k in keys:
            sav, drop = analysis.savings_em(stream, trajs[seed][k], lo, hi)
            rew = float(trajs[seed][k].rewards(stream)[lo:hi].mean())
            per.setdefault(k, []).append((sav, drop, rew))
        sav_nested = analysis.savings_em(stream, trajs[seed]["nested"], lo, hi)[0]
        bounds["static"].append(analysis.static_frontier_drop(stream, lo, hi, sav_nested))
        bounds["features"].append(analysis.frontier_drop(stream, lo, hi, sav_nested,
                                                         analysis.cell_keys(stream, "features",
                                                                            plan.features_version)))
        bounds["latent"].append(analysis.frontier_drop(stream, lo, hi, sav_nested,
                                                       analysis.cell_keys(stream, "latent")))
        bounds["oracle"].append(analysis.frontier_drop(stream, lo, hi, sav_nested, None))
    labels = _labels() | {"static-balanced": "static rule `balanced` (threshold 0.90)",
                          "oracle": f"per-request oracle at λ*={res.lam_star:g}"}
    for k in keys:
        v = per[k]
        rows.append([labels.get(k, k), fmt([x[0] for x in v], 1, pct=True) + "%", fmt([x[1] for x in v], 2),
                     fmt([x[2] for x in v], 4)])
    brow = [["static arms, randomised mix", bounds["static"]],
            ["hindsight table over feature cells (domain × difficulty bucket × length bucket)", bounds["features"]],
            ["hindsight table over the true latent difficulty (20 bins × domain; not deployable)", bounds["latent"]],
            ["per-request hindsight oracle", bounds["oracle"]]]
    search = ", ".join(f"λ={lam:g}: {100 * s:.1f}%" for lam, s in res.search)
    out = [f"### Matched savings: the λ at which the nested Selector saves as much as `balanced`\n",
           f"Search (seed {plan.seeds[0]}, {plan.search_n:,} requests, savings over the second half): {search}; "
           f"target {100 * res.search_target:.1f}% → λ* = {res.lam_star:g}. Then {plan.matched_n:,} requests per seed "
           f"at λ*; figures over requests [{lo:,}, {hi:,}), EM drop against always-full on the same requests.\n",
           md_table(["policy", "tokens saved", "EM drop vs full (points)", "mean reward at λ*"], rows),
           "\nEM drop (points) other policies would have at the nested Selector's savings (same requests):\n",
           md_table(["policy family", "EM drop at the same savings"], [[a, fmt(b, 2)] for a, b in brow])]
    return "\n".join(out)


def _render_drift(res: Results, labels: dict[str, str]) -> str:
    plan = res.plan
    streams, trajs = res.streams["drift"], res.trajs["drift"]
    w = plan.drift_window
    steady = max(w, plan.n // 10)
    events = [(plan.shift_at, plan.lam_at, f"shift @{plan.shift_at:,}"),
              (plan.lam_at, plan.n, f"λ {plan.lam:g}→{plan.drift_lam:g} @{plan.lam_at:,}")]
    keys = [k for k in DRIFT_KEYS if k in trajs[plan.seeds[0]]] + ["best-static-phase", "best-static"]
    labels = labels | {"best-static-phase": "best static arm of each phase (hindsight)",
                       "best-static": "best static arm over the whole stream (hindsight)"}
    h, rows = analysis.drift_rows(streams, trajs, keys, labels, events, window=w, steady=steady, x=0.01,
                                  step=max(50, w // 4))
    return "\n".join([
        "### Drift: domain shift, then a λ change\n",
        f"At request {plan.shift_at:,} the mix becomes {DRIFT_MIX} with difficulty logit +{DRIFT_DIFFICULTY}; "
        f"at {plan.lam_at:,} `set_lambda({plan.drift_lam:g})`. Regret = r_oracle − r_policy (per-request oracle "
        f"at the λ in force), seed mean. Steady regret: mean over the last {steady:,} requests of the phase; "
        f"dip: mean regret over the first {w:,} requests after the event minus the steady regret; recovery: "
        f"requests after the event until the trailing-{w:,} regret is within X = 0.01 of the steady regret "
        f"(windows entirely after the event, so {w:,} is the shortest measurable).\n",
        md_table(h, rows)])


def summary_json(res: Results) -> dict:
    out: dict = {"plan": {k: getattr(res.plan, k) for k in ("n", "seeds", "lam", "drift_lam", "held_n", "window",
                                                              "search_n", "matched_n", "sections")},
                 "lam_star": res.lam_star, "search": res.search, "wall_s": res.wall_s, "sections": {}}
    for section, per_seed in res.trajs.items():
        if section == "search":
            continue
        for seed, trajs in per_seed.items():
            stream = res.streams[section][seed]
            for key, t in trajs.items():
                entry = out["sections"].setdefault(section, {}).setdefault(key, {"label": t.name, "seeds": {}})
                entry["seeds"][str(seed)] = {
                    "mean_reward": float(t.rewards(stream).mean()), "em": float(t.em.mean()),
                    "tokens": float(t.tokens.mean()), "revealed": t.revealed, "wall_s": t.wall_s,
                    "store": t.store or None,
                    "curve": None if t.curve is None else {"at": t.curve.at, "value": t.curve.value,
                                                           "greedy": t.curve.greedy},
                }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run (~1 min): 4,000 requests, 2 seeds")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (0..k-1); default 3 (quick: 2)")
    ap.add_argument("--requests", type=int, default=None, help="requests per stream; default 50,000 (quick: 4,000)")
    ap.add_argument("--lam", type=float, default=0.2, help="λ of the main scenario (default 0.2)")
    ap.add_argument("--sections", default="", help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--protos", default="", help="comma-separated prototypes for the 'prototypes' section "
                    f"(default {','.join(PROTO_KEYS)}; also nested-g20, plain-g20, nested-graph-g20, "
                    "nested-iw10, nested-graph-iw5/10/20)")
    ap.add_argument("--features-version", type=int, default=2, choices=(1, 2),
                    help="FeatureConfig.version of the learners' features (default 2; 1 = before issue 9)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes (default 2)")
    ap.add_argument("--plots", default=str(ROOT / "docs" / "img"), help="directory for the PNGs ('' = none)")
    ap.add_argument("--markdown", default="", help="also write the tables to this file")
    ap.add_argument("--json", default="", help="also write per-seed figures to this JSON file")
    args = ap.parse_args(argv)
    plan = plan_from_args(args)
    command = "python benchmarks/learning.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                       else sys.argv[1:]))
    print(f"$ {command.strip()}", flush=True)
    print(f"plan: {plan}", flush=True)
    res = run_benchmark(plan, log=lambda m: print(m, flush=True))
    text = render(res, command.strip())
    print("\n" + text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(summary_json(res), indent=1))
    if args.plots:
        _plots(res, Path(args.plots))
    print(f"\ntotal wall time {res.wall_s:.0f} s", flush=True)
    return 0


def _plots(res: Results, out: Path) -> None:
    from benchmarks.learning_lib import plots

    plan, labels = res.plan, _labels()
    if "main" in res.trajs and res.helds:
        trajs = res.trajs["main"]
        keys = [k for k in ("plain", "nested", "native", "thompson", "fullinfo", "nested-graph")
                if k in trajs[plan.seeds[0]] and trajs[plan.seeds[0]][k].curve]
        cs = analysis.curve_stats(res.helds, trajs, keys, plan.lam)
        if cs is not None:
            path = out / "learning_curve.png"
            plots.learning_curve(path, cs, res.streams["main"], trajs, keys, labels, lam=plan.lam,
                                 window=max(200, min(2000, plan.n // 10)))
            print(f"wrote {path}")
    if "drift" in res.trajs:
        path = out / "drift.png"
        keys = [k for k in DRIFT_KEYS if k in res.trajs["drift"][plan.seeds[0]]]
        events = [(plan.shift_at, "domain shift"), (plan.lam_at, f"λ → {plan.drift_lam:g}")]
        plots.drift(path, res.streams["drift"], res.trajs["drift"], keys, labels, events, window=plan.drift_window)
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
