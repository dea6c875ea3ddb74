"""Conservative exploration against a baseline arm, on the simulator.

Real serving stack: ``Selector`` (VW heads, SquareCB) on a SQLite replay store
in a temporary directory; the calibrated simulator's requests go through
``choose``, the chosen arm is run, and the outcome goes back through ``reward``
with its probe trace. Because the simulator can run every arm on every
request (``outcome_table``), the baseline's and every static arm's reward are
known on exactly the requests served.

Per λ and seed, two runs on the same stream: ``plain`` (today's SquareCB) and
``conservative`` (``[exploration] baseline = --baseline``, ``max_loss =
--max-loss`` per request). Printed per run:

* ``min_win``: the lowest (served − baseline) mean reward over the
  1,000-request windows after the first (the budget asks for ≥ −max_loss);
* ``run − best ± ci``: served reward over the whole run minus the best static
  arm's in hindsight (positive: ahead), with the 95 % half-width of that mean
  difference from the paired per-request differences;
* ``restricted``: decisions whose exploration the budget cut down, and the
  rule's final lower bounds on Σ (served − baseline), over the run and over
  its last window, next to the realized sums;
* ``greedy-best(held-out)``: the greedy policy's value at the end of the run
  minus the best static arm's, both on the held-out requests: what the
  learned policy itself gains per request once learned;
* ``to90``: requests until the greedy policy's held-out value (a fixed
  1,000-request held-out set from another seed, scored every ``--every``
  requests) first reaches 90 % of the way from the fresh policy's value to the
  plain run's final value (the reachable gap of that λ and seed); ``-`` if
  never within the run.

Per λ and seed the ``headroom`` line says what per-request choice can gain
at all over the best static arm on those requests: the best arm per domain
(a policy that only knows the domain) and the per-request oracle. Where the
per-domain headroom is about zero and the plain run is behind too, no
exploring learner can be ahead of the best static arm: the loss is the price
of learning, not of the budget.

``--calibration overthinking`` runs the simulator's overthinking calibration
(``SimConfig.named``); ``--runs conservative`` skips the plain run (then
``to90`` is not measured); ``--runs`` with no name prints only the headroom lines.

Usage: ``python benchmarks/conservative.py --requests 4000 --seeds 0 1 --lams 0.1 0.2 0.3 0.5 1``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stopbandit.bandit.arms import ArmSet
from stopbandit.bandit.conservative import ConservativeConfig
from stopbandit.bandit.vw import shared_line
from stopbandit.serving.selector import Selector
from stopbandit.sim import SimConfig, Simulator, outcome_table, run


@dataclass
class RunResult:
    served: np.ndarray
    curve: list[tuple[int, float]]
    budget: object


def greedy_value(sel: Selector, heldout, table_rewards: np.ndarray, lam: float) -> float:
    lines = [shared_line(sel.extractor.extract(r.prompt, r.domain, None)) for r in heldout]
    em, tok = sel.policy.predict_heads_batch(lines)
    pick = (em - lam * tok / sel.config.token_scale).argmax(axis=1)
    return float(table_rewards[np.arange(len(heldout)), pick].mean())


def one_run(lam: float, seed: int, n: int, conservative: ConservativeConfig | None, heldout, held_rewards,
            every: int, sim: SimConfig) -> RunResult:
    with tempfile.TemporaryDirectory() as d:
        kw = {"conservative": conservative} if conservative is not None else {}
        sel = Selector.open(f"sqlite:///{Path(d) / 'c.db'}", lam=lam, seed=seed, snapshot=None, follow=False, **kw)
        try:
            reqs = Simulator(sim, seed=seed).take(n)
            served = np.empty(n)
            curve = [(0, greedy_value(sel, heldout, held_rewards, lam))]
            for i, r in enumerate(reqs):
                dec = sel.choose(r.prompt, domain=r.domain)
                out = run(r, dec.arm)
                sel.reward(dec.decision_id, em=out.em, tokens=out.tokens, trace=out.trace, reference=r.reference)
                served[i] = out.em - lam * out.tokens / sel.config.token_scale
                if (i + 1) % every == 0:
                    curve.append((i + 1, greedy_value(sel, heldout, held_rewards, lam)))
            return RunResult(served, curve, sel.budget())
        finally:
            sel.close()


def to_target(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((t for t, v in curve if v >= target), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--lams", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5, 1.0])
    ap.add_argument("--baseline", default="careful")
    ap.add_argument("--max-loss", type=float, default=0.01)
    ap.add_argument("--audit", type=float, default=ConservativeConfig.audit)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--calibration", default="conservative")
    ap.add_argument("--runs", nargs="*", default=["plain", "conservative"], choices=["plain", "conservative"],
                    help="which runs (none: only the headroom lines)")
    args = ap.parse_args()
    cons = ConservativeConfig(args.baseline, max_loss=args.max_loss, audit=args.audit)
    sim = SimConfig.named(args.calibration)
    print(f"requests={args.requests} seeds={args.seeds} baseline={args.baseline} max_loss={args.max_loss} "
          f"audit={args.audit} calibration={args.calibration}")
    print("lam  seed  run           served  baseline  best(arm)           min_win   run-best ± ci      to90   "
          "greedy-best(held-out)  restricted")
    for lam in args.lams:
        for seed in args.seeds:
            heldout = Simulator(sim, seed=10_000 + seed).take(1000)
            t0 = time.perf_counter()
            res = {}
            for name, c in (("plain", None), ("conservative", cons)):
                if name in args.runs:
                    res[name] = one_run(lam, seed, args.requests, c, heldout,
                                        _rewards(heldout, lam), args.every, sim)
            reqs = Simulator(sim, seed=seed).take(args.requests)
            arms = ArmSet.of()
            table = outcome_table(reqs, arms.arms)
            rewards = table.em - lam * table.tokens / 1000.0
            b = arms.index(args.baseline)
            best = int(rewards.mean(axis=0).argmax())
            print(f"# headroom over {arms[best].name}: best arm per domain "
                  f"{_domain_ceiling(reqs, rewards) - rewards[:, best].mean():+.4f}, per-request oracle "
                  f"{rewards.max(axis=1).mean() - rewards[:, best].mean():+.4f}", flush=True)
            ref = res.get("plain")
            target = None if ref is None else ref.curve[0][1] + 0.9 * (ref.curve[-1][1] - ref.curve[0][1])
            for name, r in res.items():
                wins = [float(r.served[w:w + 1000].mean() - rewards[w:w + 1000, b].mean())
                        for w in range(1000, args.requests, 1000)]
                t90 = None if target is None else to_target(r.curve, target)
                restricted = getattr(r.budget, "restricted", "-")
                if r.budget is not None:  # the bounds the rule used vs the realized Σ (served − baseline)
                    diff = r.served - rewards[:, b]
                    w = cons.window or args.requests
                    restricted = (f"{restricted}  LB {r.budget.lower_bound:+.1f} vs realized {float(diff.sum()):+.1f}"
                                  f"; last window LB {r.budget.window_lower_bound:+.1f} vs "
                                  f"{float(diff[-w:].sum()):+.1f}")
                # the learned greedy policy at the end against the best static arm, on the held-out requests
                held_best = float(_rewards(heldout, lam).mean(axis=0).max())
                restricted = f"{r.curve[-1][1] - held_best:+.4f}  {restricted}"
                paired = r.served - rewards[:, best]
                ci = 1.96 * float(paired.std(ddof=1)) / np.sqrt(len(paired))
                print(f"{lam:<4} {seed:<5} {name:<13} {r.served.mean():.4f}  {rewards[:, b].mean():.4f}    "
                      f"{rewards[:, best].mean():.4f} ({arms[best].name:<10}) {min(wins) if wins else float('nan'):+.4f}  "
                      f"{paired.mean():+.4f} ± {ci:.4f}  {t90 if t90 is not None else '-':<6} "
                      f"{restricted}", flush=True)
            print(f"# λ={lam} seed={seed}: {time.perf_counter() - t0:.0f} s", flush=True)


def _domain_ceiling(reqs, rewards: np.ndarray) -> float:
    """Mean reward of the best arm per domain in hindsight (a policy that knows only the domain)."""
    domains = np.array([r.domain for r in reqs])
    return float(sum(rewards[domains == d].mean(axis=0).max() * (domains == d).sum() for d in set(domains))
                 / len(reqs))


def _rewards(reqs, lam: float) -> np.ndarray:  # the calibration is in the requests
    table = outcome_table(reqs, ArmSet.of().arms)
    return table.em - lam * table.tokens / 1000.0


if __name__ == "__main__":
    main()
