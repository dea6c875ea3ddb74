"""Online λ control on the simulator: a token budget and an EM floor, through a domain-mix shift.

Real serving stack: ``Selector`` (VW heads, SquareCB) on a SQLite replay store
in a temporary directory, wrapped in ``ControlledSelector`` with a
``LambdaController`` and the guardrail's 2 % full-arm holdout (monitor only
unless ``--enforce``: the runs measure the controller, and the guardrail's
verdicts are printed); every λ move is a logged ``set_lambda``. Traffic: the calibrated simulator, every request's
probe trace passed to ``reward``. At ``--shift-at`` the domain mix turns to
harder, longer traffic (math 45 %, code 35 %, science 15 %, trivia 5 %).
The policy starts untrained at λ = ``--lam0`` and the controller is on from
the first request.

Acceptance (the issue's wording, measured here on the served traffic, holdout
included):

* token budget B: the trailing 2,000-request mean of tokens is within ±5 % of
  B from some request ``n_settle`` ≤ 5,000 on, and stays within ±5 % through
  the shift to the end of the run;
* EM floor F: after the warm-up (``--warmup``, 5,000), the EM of every
  2,000-request window (sliding, step 1) is ≥ F − 0.01.

Criteria on every sliding window are met by pure noise only some of the
time: ``benchmarks/window_noise.py`` gives how often an i.i.d. stream with
its mean exactly on target leaves the band (the yardstick in
docs/benchmarks.md).

Prints one line of figures per run and writes ``lambda_budget.png`` /
``lambda_floor.png`` into ``--img``. Two more scenarios: ``offline`` (``lambda
target`` on a 10,000-request log, then the realized tokens/EM of the next
5,000 requests at the picked λ) and ``guardrail`` (fixed λ = 0.1, the
``--holdout`` share, default guardrail settings, math degraded ×0.15 on
requests [10,000, 50,000) of 70,000).

Reference runs (``--hindsight``): for every seed and target, the same
Selector and stream with the controller off and λ held constant per phase
(before / after the shift), each constant found by a short secant search so
that, in hindsight, the phase's mean tokens sit on B (or its EM on the
floor's setpoint). They show how far a perfectly tuned constant λ gets on
the 2,000-window criteria; an i.i.d. resampling of their outcomes at exactly
the target mean (``oracle``) gives the pure sampling noise floor.

    python benchmarks/lambda_control.py --seeds 0,1,2 --jobs 2
    python benchmarks/lambda_control.py --seeds 0,1,2 --jobs 2 --hindsight
    python benchmarks/lambda_control.py --seeds 0,1,2 --jobs 2 --mix-ff on     # domain-mix feed-forward
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WINDOW = 2000
SHIFT_MIX = {"math": 0.45, "code": 0.35, "science": 0.15, "trivia": 0.05}


@dataclass
class Run:
    scenario: str
    seed: int
    target: float
    tokens: np.ndarray
    em: np.ndarray
    lam: np.ndarray
    routes: dict[str, int]
    transitions: list[tuple[int, str, str, float]]
    moves: int
    seconds: float
    lambda_rows: int
    fallback: tuple[str, ...]
    domains: np.ndarray | None = None  # (n,) domain of each request (str)
    lams: tuple[float, float] | None = None  # constant λ before / after the shift (hindsight runs)


def trailing(x: np.ndarray, w: int = WINDOW) -> np.ndarray:
    """Mean of x[i−w+1 … i] for i ≥ w−1 (NaN before)."""
    c = np.concatenate(([0.0], np.cumsum(x, dtype=np.float64)))
    out = np.full(x.shape, np.nan)
    out[w - 1:] = (c[w:] - c[:-w]) / w
    return out


def one_run(scenario: str, seed: int, n: int, shift_at: int, budget: float, floor: float, lam0: float,
            holdout: float, margin: float, enforce: bool, interval: int | None, ki: float | None = None,
            ff: dict | None = None, floor_margin: float | None = None,
            lams: tuple[float, float] | None = None) -> Run:
    """One run; ``lams`` = (λ before, λ after the shift): the controller is off and λ is held at those."""
    from stopbandit import Selector
    from stopbandit.control import ControlledSelector, ControllerConfig, GuardrailConfig, LambdaController, Target
    from stopbandit.sim import DomainShift, SimConfig, Simulator, run

    target = Target.token_budget(budget) if scenario == "budget" else Target.em_floor(floor, floor_margin)
    with tempfile.TemporaryDirectory() as tmp:
        sel = Selector.open(f"sqlite:///{tmp}/replay.db", lam=lam0 if lams is None else lams[0], seed=seed)
        guard = GuardrailConfig(holdout_share=holdout, margin=margin, enforce=enforce) if holdout > 0 else None
        cfg = ControllerConfig(**{"ki": ki, **({} if interval is None else {"interval": interval}), **(ff or {})})
        controller = LambdaController(target, cfg) if lams is None else None
        cs = ControlledSelector(sel, controller=controller, guardrail=guard, seed=seed, owns_selector=True)
        schedule = (DomainShift(at=shift_at, mix=SHIFT_MIX),) if shift_at < n else ()
        sim = Simulator(SimConfig(schedule=schedule), seed=100 + seed)
        tokens = np.empty(n)
        em = np.empty(n)
        lam = np.empty(n)
        domains = np.empty(n, dtype=object)
        transitions: list[tuple[int, str, str, float]] = []
        seen = 0
        t0 = time.perf_counter()
        for i, r in enumerate(sim.stream(n)):
            if lams is not None and i == shift_at:
                sel.set_lambda(lams[1], reason="benchmark: hindsight λ after the shift", who="benchmark")
            d = cs.choose(r.prompt, domain=r.domain, request_id=r.request_id)
            o = run(r, d.arm)
            cs.reward(d.decision_id, em=o.em, tokens=o.tokens, trace=o.trace, reference=r.reference)
            tokens[i], em[i], lam[i], domains[i] = o.tokens, o.em, d.lam, r.domain
            if cs.guardrail is not None and i % 100 == 0:
                tr = cs.guardrail.transitions()
                transitions += [(i, t.domain, t.to, round(t.check.relative_loss, 3)) for t in tr[seen:]]
                seen = len(tr)
        seconds = time.perf_counter() - t0
        h = cs.health()
        cs.flush()
        rows = len(sel.store.lambda_history(100_000))
        cs.close()
    return Run(scenario, seed, budget if scenario == "budget" else floor, tokens, em, lam, h.routes, transitions,
               h.controller.moves if h.controller else 0, seconds, rows, h.fallback, domains.astype(str), lams)


def phases(n: int, shift_at: int, warmup: int) -> list[tuple[int, int]]:
    """Request ranges a hindsight λ is tuned on: [warm-up, shift) and [shift, n), or [warm-up, n) without a shift."""
    return [(warmup, shift_at), (shift_at, n)] if shift_at < n else [(warmup, n)]


def phase_goal(scenario: str, budget: float, floor: float, floor_margin: float | None = None) -> float:
    """What a hindsight phase mean is put on: B (tokens) or the floor's setpoint (EM)."""
    from stopbandit.control import Target

    return budget if scenario == "budget" else Target.em_floor(floor, floor_margin).setpoint


HINDSIGHT_SLOPE = {"budget": -1.1, "floor": -0.4}
"""d(mean)/dλ relative to the goal, the prior slope of the secant search (see ``DEFAULT_KI``)."""


def hindsight_run(scenario: str, seed: int, guess: tuple[float, float], warmup: int, iters: int, tol: float,
                  *common) -> tuple[Run, list[tuple[tuple[float, float], list[float]]]]:
    """Constant λ per phase, found by a secant search on each phase's mean; the run closest to the goal.

    Both phases are updated from the same run at each iteration (the second
    phase depends on the first one's λ only through what the policy learned).
    Returns the best run and the search history ((λ1, λ2), relative errors).
    """
    n, shift_at, budget, floor = common[0], common[1], common[2], common[3]
    goal = phase_goal(scenario, budget, floor, common[11])
    ranges = phases(n, shift_at, warmup)
    lams = [min(2.0, max(0.0, g)) for g in guess[: len(ranges)]]
    history: list[tuple[tuple[float, float], list[float]]] = []
    best: tuple[float, Run] | None = None
    for _ in range(iters):
        pair = (lams[0], lams[-1])
        r = one_run(scenario, seed, *common, lams=pair)
        x = r.tokens if scenario == "budget" else r.em
        errs = [float(x[a:b].mean()) / goal - 1.0 for a, b in ranges]
        history.append((pair, errs))
        worst = max(abs(e) for e in errs)
        if best is None or worst < best[0]:
            best = (worst, r)
        if worst < tol:
            return r, history
        for k in range(len(ranges)):
            slope = HINDSIGHT_SLOPE[scenario]
            if len(history) >= 2:
                (l_prev, e_prev), (l_now, e_now) = history[-2], history[-1]
                dl = (l_now[0], l_now[1])[k] - (l_prev[0], l_prev[1])[k]
                if abs(dl) > 1e-4 and (e_now[k] - e_prev[k]) / dl < 0:
                    slope = (e_now[k] - e_prev[k]) / dl
            step = max(-0.3, min(0.3, -errs[k] / slope))
            lams[k] = min(2.0, max(0.0, lams[k] + step))
    return best[1] if best is not None else r, history


def oracle_noise(r: Run, scenario: str, shift_at: int, warmup: int, goal: float, reps: int = 200,
                 seed: int = 0) -> dict[str, float]:
    """The sampling noise floor: i.i.d. resamples of each phase's outcomes at exactly the goal mean.

    Budget: tokens resampled per phase and rescaled to mean B; the share of
    resampled runs whose 2,000-windows (ending after request 5,000) leave ±5 %
    at least once, and the median of their largest deviation. Floor: EM drawn
    i.i.d. Bernoulli(setpoint); the share of runs with a window (starting
    after the warm-up) below F − 1 point, and the median of the minimum.
    """
    rng = np.random.default_rng(seed)
    n = len(r.tokens)
    ranges = [(0, shift_at), (shift_at, n)] if shift_at < n else [(0, n)]
    worst = np.empty(reps)
    for j in range(reps):
        if scenario == "budget":
            x = np.empty(n)
            for a, b in ranges:
                src = r.tokens[max(a, 5000 if a == 0 else a):b]
                x[a:b] = rng.choice(src, size=b - a) * (goal / src.mean())
            worst[j] = np.nanmax(np.abs(trailing(x) / goal - 1.0)[5000:])
        else:
            x = (rng.random(n) < goal).astype(float)
            worst[j] = np.nanmin(trailing(x)[warmup + WINDOW - 1:])
    if scenario == "budget":
        return {"oracle_p_leave_5pct": float(np.mean(worst > 0.05)), "oracle_median_max_dev": float(np.median(worst))}
    return {"oracle_p_below_floor_minus_1pt": float(np.mean(worst < r.target - 0.01)),
            "oracle_median_min_window_em": float(np.median(worst))}


def offline_run(seed: int, budget: float, floor: float, lam0: float, n_log: int = 10_000, n_check: int = 5_000) -> dict:
    """``lambda target`` end to end: log ``n_log`` requests at λ0, snapshot, pick λ offline, serve ``n_check`` more.

    Returns the offline prediction (point and 95 % interval) and the realized mean over the next requests,
    for the token budget and for the EM floor (each from the same log).
    """
    from stopbandit import Selector
    from stopbandit.control.cli_commands import target_lambda
    from stopbandit.sim import Simulator, run

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/replay.db"
        sel = Selector.open(url, lam=lam0, seed=seed)
        sim = Simulator(seed=200 + seed)
        for r in sim.stream(n_log):
            d = sel.choose(r.prompt, domain=r.domain, request_id=r.request_id)
            o = run(r, d.arm)
            sel.reward(d.decision_id, em=o.em, tokens=o.tokens, trace=o.trace, reference=r.reference)
        sel.snapshot()
        sel.flush()
        for kind, value in (("token_budget", budget), ("em_floor", floor)):
            t = target_lambda(sel.store, lambdas="0:1.5:0.05", **{kind: value})
            p = t["picked"]
            sel.set_lambda(p["lam"], reason=f"benchmark: lambda target {kind}={value:g}")
            tok, em = [], []
            for r in sim.stream(n_check):
                d = sel.choose(r.prompt, domain=r.domain, request_id=r.request_id)
                o = run(r, d.arm)
                sel.reward(d.decision_id, em=o.em, tokens=o.tokens, trace=o.trace, reference=r.reference)
                tok.append(o.tokens)
                em.append(o.em)
            out[kind] = {"target": value, "lam": p["lam"], "estimator": t["estimator"], "events": t["events"],
                         "pred_tokens": (p["tokens"]["value"], p["tokens"]["ci_low"], p["tokens"]["ci_high"]),
                         "pred_em": (p["em"]["value"], p["em"]["ci_low"], p["em"]["ci_high"]),
                         "real_tokens": float(np.mean(tok)), "real_tokens_se": float(np.std(tok) / np.sqrt(len(tok))),
                         "real_em": float(np.mean(em)), "real_em_se": float(np.std(em) / np.sqrt(len(em)))}
        sel.close()
    return out


def guardrail_run(seed: int, holdout: float, n: int = 70_000, start: int = 10_000, end: int = 50_000,
                  em_factor: float = 0.15, lam: float = 0.1) -> dict:
    """The guardrail at a realistic holdout share, default test settings: math degraded on [start, end)."""
    from stopbandit import Selector
    from stopbandit.control import ControlledSelector, GuardrailConfig
    from stopbandit.sim import Simulator, run

    with tempfile.TemporaryDirectory() as tmp:
        sel = Selector.open(f"sqlite:///{tmp}/replay.db", lam=lam, seed=seed)
        cs = ControlledSelector(sel, guardrail=GuardrailConfig(holdout_share=holdout), seed=seed, owns_selector=True)
        clean, bad = Simulator(seed=300 + seed), Simulator(seed=300 + seed)
        bad.degrade("math", from_request=start, em_factor=em_factor)
        events, seen = [], 0
        em_math = np.zeros(n)
        is_math = np.zeros(n, dtype=bool)
        for i, (rc, rb) in enumerate(zip(clean.stream(n), bad.stream(n))):
            r = rb if start <= i < end else rc
            d = cs.choose(r.prompt, domain=r.domain, request_id=r.request_id)
            o = run(r, d.arm)
            cs.reward(d.decision_id, em=o.em, tokens=o.tokens, trace=o.trace, reference=r.reference)
            is_math[i], em_math[i] = r.domain == "math", o.em
            tr = cs.guardrail.transitions()
            for t in tr[seen:]:
                events.append((i, t.domain, t.to, round(t.check.relative_loss, 3), round(t.check.z, 2),
                               t.check.n_pairs))
            seen = len(tr)
        h = cs.health()
        cs.close()
    return {"seed": seed, "holdout": holdout, "start": start, "end": end, "events": events, "routes": h.routes}


def budget_figures(r: Run, shift_at: int, tol: float = 0.05) -> dict[str, float]:
    """``first_in_band``: first request whose trailing-2000 mean is within ±tol of the budget; ``in_band_after``:
    share of trailing-2000 windows in band from then on; ``max_dev_2000`` / ``max_dev_5000``: largest relative
    deviation of a trailing 2,000 / 5,000 window ending after request 5,000 (resp. 7,000);
    ``max_dev_after_shift``: the same for the 2,000-windows ending within 5,000 requests after the shift;
    ``noise_sd_2000``: standard error of a 2,000-request mean from the per-request spread (the noise floor)."""
    m = trailing(r.tokens)
    dev = np.abs(m / r.target - 1.0)
    ok = dev <= tol
    ok[: WINDOW - 1] = False
    first = int(np.argmax(ok)) if ok.any() else -1
    dev5 = np.abs(trailing(r.tokens, 5000) / r.target - 1.0)
    n = len(r.tokens)
    out = {
        "first_in_band": first,
        "in_band_after": float(ok[first:].mean()) if first >= 0 else float("nan"),
        "max_dev_2000": float(np.nanmax(dev[5000:])),
        "max_dev_5000": float(np.nanmax(dev5[7000:])),
        "noise_sd_2000": float(r.tokens[5000:].std() / np.sqrt(WINDOW) / r.target),
        "mean_tokens_after_5000": float(r.tokens[5000:].mean()),
        "em_after_5000": float(r.em[5000:].mean()),
        "lam_end": float(r.lam[-1]),
    }
    if shift_at < n:
        out.update({
            "max_dev_after_shift": float(np.nanmax(dev[shift_at:shift_at + 5000])),
            "mean_tokens_pre": float(r.tokens[5000:shift_at].mean()),
            "mean_tokens_post": float(r.tokens[shift_at + 2000:].mean()),
            "em_pre": float(r.em[5000:shift_at].mean()),
            "em_post": float(r.em[shift_at + 2000:].mean()),
            "lam_pre": float(r.lam[shift_at - 1]),
        })
    return out


def floor_figures(r: Run, shift_at: int, warmup: int) -> dict[str, float]:
    m = trailing(r.em)
    after = m[warmup + WINDOW - 1:]  # windows that start at or after the warm-up
    worst = int(np.nanargmin(after)) + warmup + WINDOW - 1
    out = {
        "min_window_em": float(np.nanmin(after)),
        "min_window_end": worst,
        "share_windows_below_floor": float(np.mean(after < r.target)),
        "share_windows_below_floor_minus_1pt": float(np.mean(after < r.target - 0.01)),
        "em_after_warmup": float(r.em[warmup:].mean()),
        "mean_tokens_after_warmup": float(r.tokens[warmup:].mean()),
        "lam_end": float(r.lam[-1]),
    }
    if shift_at < len(r.em):
        out.update({
            "em_pre": float(r.em[warmup:shift_at].mean()),
            "em_post": float(r.em[shift_at + 2000:].mean()),
            "mean_tokens_pre": float(r.tokens[warmup:shift_at].mean()),
            "mean_tokens_post": float(r.tokens[shift_at + 2000:].mean()),
            "lam_pre": float(r.lam[shift_at - 1]),
        })
    return out


def save(r: Run, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, tokens=r.tokens, em=r.em, lam=r.lam,
                        domains=r.domains if r.domains is not None else np.array([], dtype=str))


def plot(runs: list[Run], scenario: str, shift_at: int, warmup: int, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 6.0), dpi=120)
    FigureCanvasAgg(fig)
    top, bottom = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    target = runs[0].target
    x = np.arange(len(runs[0].tokens))
    for j, r in enumerate(runs):
        series = trailing(r.tokens) if scenario == "budget" else trailing(r.em)
        top.plot(x, series, lw=1.0, color=f"C{j}", label=f"seed {r.seed}")
        bottom.plot(x, r.lam, lw=0.8, color=f"C{j}")
    if scenario == "budget":
        top.axhspan(target * 0.95, target * 1.05, color="tab:green", alpha=0.15, label="budget ±5%")
        top.axhline(target, color="tab:green", lw=1)
        top.set_ylabel(f"tokens, trailing {WINDOW} mean")
        top.axvline(5000, color="grey", ls=":", lw=1)
        shift = f"domain-mix shift at {shift_at}" if shift_at < len(x) else "no shift"
        top.set_title(f"token budget {target:g}: controller on from request 0; {shift}")
    else:
        top.axhline(target, color="tab:red", lw=1, label=f"floor {target:g}")
        top.axhline(target - 0.01, color="tab:red", ls="--", lw=1, label="floor − 1 point")
        top.axvline(warmup, color="grey", ls=":", lw=1)
        top.set_ylabel(f"EM, trailing {WINDOW} mean")
        shift = f"domain-mix shift at {shift_at}" if shift_at < len(x) else "no shift"
        top.set_title(f"EM floor {target:g}: warm-up {warmup}; {shift}")
    for ax in (top, bottom):
        if shift_at < len(x):
            ax.axvline(shift_at, color="black", ls="--", lw=1)
        ax.grid(True, alpha=0.3)
    bottom.set_ylabel("λ")
    bottom.set_xlabel("request")
    top.legend(fontsize=7, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=30_000)
    ap.add_argument("--shift-at", type=int, default=15_000)
    ap.add_argument("--warmup", type=int, default=5_000)
    ap.add_argument("--budget", type=float, default=650.0)
    ap.add_argument("--floor", type=float, default=0.64)
    ap.add_argument("--floor-margin", type=float, default=None,
                    help="Setpoint margin above the EM floor (default: Target.em_floor's, 2 standard errors of a "
                         "2,000-window).")
    ap.add_argument("--lam0", type=float, default=0.2)
    ap.add_argument("--holdout", type=float, default=0.02)
    ap.add_argument("--margin", type=float, default=0.10, help="Guardrail margin (relative EM loss tolerated).")
    ap.add_argument("--enforce", action="store_true",
                    help="Let the guardrail force the full arm (default: monitor only, to measure the controller alone).")
    ap.add_argument("--holdouts", default="0.02,0.05,0.1", help="Holdout shares of the guardrail scenario (seed 0).")
    ap.add_argument("--interval", type=int, default=None,
                    help="Outcomes per controller step (default: ControllerConfig's, 100).")
    ap.add_argument("--ki", type=float, default=None, help="Integral gain (default: DEFAULT_KI of the target kind).")
    ap.add_argument("--feedforward", choices=("on", "off"), default=None,
                    help="Model-based feed-forward of the controller (default: ControllerConfig's default).")
    ap.add_argument("--contexts", type=int, default=None, help="Feed-forward: contexts in the model's window.")
    ap.add_argument("--bias-gain", type=float, default=None, help="Feed-forward: gain of the model-bias estimate.")
    ap.add_argument("--model-warmup", type=int, default=None, help="Feed-forward: outcomes before the model is used.")
    ap.add_argument("--calibration", type=int, default=None,
                    help="Feed-forward: rewarded contexts over which the heads are calibrated per domain.")
    ap.add_argument("--mix-ff", choices=("on", "off"), default=None,
                    help="Domain-mix feed-forward of the controller (default: ControllerConfig's default).")
    ap.add_argument("--mix-recent", type=int, default=None, help="Mix feed-forward: outcomes in the recent mix.")
    ap.add_argument("--mix-gain", type=float, default=None, help="Mix feed-forward: λ per unit relative mix error.")
    ap.add_argument("--mix-gate", type=float, default=None,
                    help="Mix feed-forward: shift detection threshold in standard deviations (0: always on).")
    ap.add_argument("--hindsight", action="store_true",
                    help="Also run the hindsight-λ reference (controller off, the best constant λ per phase).")
    ap.add_argument("--hindsight-iters", type=int, default=5, help="Runs per hindsight search (at most).")
    ap.add_argument("--hindsight-tol", type=float, default=0.002,
                    help="Stop the hindsight search when every phase mean is within this relative error.")
    ap.add_argument("--save", default=None, help="Directory for per-run arrays (npz: tokens, em, lam, domains).")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--scenarios", default="budget,floor")
    ap.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--img", default="docs/img")
    ap.add_argument("--tag", default="", help="Suffix of the plot file names (lambda_budget<tag>.png).")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    scenarios = [s.strip() for s in args.scenarios.split(",")]
    jobs = [(sc, s) for sc in scenarios if sc in ("budget", "floor") for s in seeds]
    ff = {k: v for k, v in (("feedforward", None if args.feedforward is None else args.feedforward == "on"),
                            ("contexts", args.contexts), ("bias_gain", args.bias_gain),
                            ("calibration", args.calibration), ("model_warmup", args.model_warmup),
                            ("mix_feedforward", None if args.mix_ff is None else args.mix_ff == "on"),
                            ("mix_recent", args.mix_recent), ("mix_gain", args.mix_gain),
                            ("mix_gate", args.mix_gate))
          if v is not None}
    common = (args.requests, args.shift_at, args.budget, args.floor, args.lam0, args.holdout, args.margin,
              args.enforce, args.interval, args.ki, ff, args.floor_margin)
    print(f"# {' '.join(sys.argv)}")
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(one_run, sc, s, *common) for sc, s in jobs]
        offline = [pool.submit(offline_run, s, args.budget, args.floor, args.lam0) for s in seeds] \
            if "offline" in scenarios else []
        guards = [pool.submit(guardrail_run, seeds[0], float(h)) for h in args.holdouts.split(",")] \
            if "guardrail" in scenarios else []
        runs = [f.result() for f in futures]
        hind: dict[tuple[str, int], object] = {}
        if args.hindsight:
            for r in runs:
                guess = tuple(float(r.lam[a:b].mean()) for a, b in phases(args.requests, args.shift_at,
                                                                          args.warmup))
                hind[(r.scenario, r.seed)] = pool.submit(hindsight_run, r.scenario, r.seed, guess, args.warmup,
                                                         args.hindsight_iters, args.hindsight_tol, *common)
            hind = {k: f.result() for k, f in hind.items()}
        offline_results = [f.result() for f in offline]
        guard_results = [f.result() for f in guards]
    print(f"# {len(runs)} runs of {args.requests} requests in {time.perf_counter() - t0:.0f} s")
    for seed, res in zip(seeds, offline_results):
        for kind, f in res.items():
            pt, pe = f["pred_tokens"], f["pred_em"]
            print(f"offline seed {seed} {kind}={f['target']:g}: λ={f['lam']:g} ({f['estimator']}, {f['events']} events); "
                  f"predicted tokens {pt[0]:.1f} [{pt[1]:.1f}, {pt[2]:.1f}], EM {pe[0]:.4f} [{pe[1]:.4f}, {pe[2]:.4f}]; "
                  f"realized next 5000: tokens {f['real_tokens']:.1f} ± {f['real_tokens_se']:.1f}, "
                  f"EM {f['real_em']:.4f} ± {f['real_em_se']:.4f}")
    for g in guard_results:
        print(f"guardrail seed {g['seed']} holdout {g['holdout']:g}, math degraded on [{g['start']}, {g['end']}): "
              f"transitions (request, domain, to, relative loss, z, pairs) {g['events']}; routes {g['routes']}")
    for sc in [s for s in scenarios if s in ("budget", "floor")]:
        rs = [r for r in runs if r.scenario == sc]
        print(f"\n## {sc}")
        for r in rs:
            figs = budget_figures(r, args.shift_at) if sc == "budget" else floor_figures(r, args.shift_at,
                                                                                          args.warmup)
            per_req = 1000 * r.seconds / args.requests
            print(f"seed {r.seed}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in figs.items())
                  + f", λ moves={r.moves}, λ rows={r.lambda_rows}, routes={r.routes}, guardrail transitions "
                    f"(request, domain, to, relative loss)={r.transitions}, "
                    f"{per_req:.2f} ms/request")
            if args.save:
                save(r, Path(args.save) / f"{sc}{args.tag}_seed{r.seed}.npz")
            if (sc, r.seed) in hind:
                h, history = hind[(sc, r.seed)]
                hf = budget_figures(h, args.shift_at) if sc == "budget" else floor_figures(h, args.shift_at,
                                                                                         args.warmup)
                goal = phase_goal(sc, args.budget, args.floor, args.floor_margin)
                hf.update(oracle_noise(h, sc, args.shift_at, args.warmup, goal, seed=r.seed))
                print(f"  hindsight seed {r.seed}: λ before/after shift = {h.lams[0]:.4f}/{h.lams[1]:.4f} "
                      f"(search: " + "; ".join(f"({a:.4f}, {b:.4f}) -> " + ", ".join(f"{e:+.4f}" for e in errs)
                                              for (a, b), errs in history) + "), "
                      + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in hf.items()))
                if args.save:
                    save(h, Path(args.save) / f"{sc}{args.tag}_hindsight_seed{r.seed}.npz")
        name = f"lambda_{sc}{args.tag}.png"
        print(f"wrote {plot(rs, sc, args.shift_at, args.warmup, Path(args.img) / name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
