"""Coverage of the OPE intervals, and how much graph feedback narrows them.

A synthetic world whose truth is exact: requests come in ``--types`` context
types (uniform), each with a per-arm EM probability and mean token count; the
four default arms (full, careful, balanced, aggressive) are nested the way
early stopping nests them (one uniform decides EM for every arm of a request,
so a stricter arm is right only if the more lenient ones are; one log-normal
length factor scales every arm's tokens). The reward models (``em_hat``,
``tokens_hat``) are the truth plus a fixed per-(type, arm) error, so DR is not
handed a perfect model. A trace of the logged arm reveals every stricter arm
(``reveal_matrix(ArmSet(DEFAULT_ARMS))``).

Logging policy (``--logging``):

* ``mix`` (default): a softmax over random per-type scores mixed with
  ``--explore`` (default 30%) uniform exploration -- every arm is logged
  about a quarter of the time;
* ``squarecb``: what a serving Selector logs -- the library's SquareCB
  (γ₀ = 5, after ``--t`` rewards, default 1000) on a learned-like score (the
  true per-type reward at λ = 0.25 plus N(0, 0.05) error): mostly the greedy
  arm, the others by inverse gap;
* ``graph-squarecb``: the same with ``SquareCB(nested=True)`` (graph-aware
  exploration with traces on): arms the greedy arm's trace reveals get
  probability 0, so plain IPS/DR cannot see them at all (unsupported) while
  the graph estimators still do through the reveal probability ``q``.

Reported, over ``--seeds`` worlds of ``--events`` logged events each:

1. coverage of the 95% normal intervals (target >= 90%) of DR and SNIPS (and
   the others for reference) for a learned-like candidate (90% greedy on a
   noisy reward score, 10% uniform), for EM, tokens and reward (λ = 0.25);
2. the median interval width of DR, GraphDR and GraphChainDR for the static
   "always arm k" candidates at the same log size, the ratio to DR (target >=
   2x narrower for the stricter arms) and their coverage, next to the
   full-information floor: the width of the mean of arm k's *true* outcome
   over the same events, as if every arm were observed on every event. No
   unbiased estimator can be narrower than that (the variance of a sample
   mean of fully observed outcomes is the efficiency bound), so DR / floor
   caps the ratio any estimator can reach.

Run: ``python benchmarks/ope_coverage.py`` (defaults: 200 seeds, 5000 events).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time

import numpy as np

from stopbandit.bandit.arms import DEFAULT_ARMS, ArmSet
from stopbandit.bandit.exploration import SquareCB
from stopbandit.replay.ope import (
    IPS,
    SNIPS,
    DirectMethod,
    DoublyRobust,
    GraphChainDR,
    GraphDR,
    GraphIPS,
    LoggedData,
    SwitchDR,
    reveal_matrix,
)

ARMS = ArmSet(DEFAULT_ARMS)
NAMES = ARMS.names
K = len(ARMS)
STRICTNESS = np.linspace(0.0, 1.0, K)  # full ... aggressive
TOKEN_FRAC = np.array([1.0, 0.75, 0.55, 0.35])
SIGMA = 0.3
LAM, SCALE = 0.25, 1000.0
REVEALS = reveal_matrix(ARMS)  # [j, k]: a trace of arm j reveals arm k (k at most as lenient as j)
LOGGINGS = ("mix", "squarecb", "graph-squarecb")


def logging_probs(kind: str, rng: np.random.Generator, p: np.ndarray, mean_tok: np.ndarray, explore: float,
                  t: int) -> np.ndarray:
    """(m_types, K) logging probabilities of each context type (see the module docstring)."""
    m_types = p.shape[0]
    z = rng.normal(0, 1, (m_types, K))
    if kind == "mix":
        return (1 - explore) * np.exp(z) / np.exp(z).sum(axis=1, keepdims=True) + explore / K
    learned = p - LAM * mean_tok / SCALE + 0.05 * z  # a learned model's scores: truth plus error
    rule = SquareCB(nested=kind == "graph-squarecb").for_arms(ARMS)
    return rule.probabilities_batch(learned, t)


def sample_actions(rng: np.random.Generator, mu: np.ndarray) -> np.ndarray:
    """One arm per row of ``mu`` (n, K); an arm with probability 0 is never drawn."""
    c = np.cumsum(mu, axis=1)
    last = mu.shape[1] - 1 - np.argmax(mu[:, ::-1] > 0, axis=1)  # last arm with positive probability
    c[np.arange(mu.shape[1])[None, :] >= last[:, None]] = 1.0
    return np.argmax(rng.random(mu.shape[0])[:, None] < c, axis=1)


def world(seed: int, n: int, m_types: int, explore: float = 0.3, logging: str = "mix", rewards_seen: int = 1000):
    """(data with the learned-like candidate, truth dict {metric: value}, per-arm truth {metric: (K,)},
    true outcomes of every arm {metric: (n, K)})."""
    rng = np.random.default_rng(seed)
    diff = rng.uniform(0, 1, m_types)
    p = np.clip(0.92 - 0.2 * diff[:, None] - 0.45 * diff[:, None] * STRICTNESS[None, :], 0.02, 0.98)
    length = 300 + 1700 * diff
    mean_tok = length[:, None] * TOKEN_FRAC[None, :] * math.exp(SIGMA**2 / 2)
    mu_t = logging_probs(logging, rng, p, mean_tok, explore, rewards_seen)
    score = p - LAM * mean_tok / SCALE + rng.normal(0, 0.05, (m_types, K))
    pi_t = np.full((m_types, K), 0.1 / K)
    pi_t[np.arange(m_types), score.argmax(axis=1)] += 0.9

    truth = {
        "em": float((pi_t * p).sum(axis=1).mean()),
        "tokens": float((pi_t * mean_tok).sum(axis=1).mean()),
    }
    truth["reward"] = truth["em"] - LAM * truth["tokens"] / SCALE
    per_arm = {"em": p.mean(axis=0), "tokens": mean_tok.mean(axis=0)}

    t = rng.integers(0, m_types, n)
    u = rng.random(n)
    g = np.exp(rng.normal(0, SIGMA, n))
    em_all = (u[:, None] < p[t]).astype(float)
    tok_all = np.round(length[t, None] * TOKEN_FRAC[None, :] * g[:, None])
    mu = mu_t[t]
    actions = sample_actions(rng, mu)
    rows = np.arange(n)
    em_hat = np.clip(p + rng.normal(0, 0.1, (m_types, K)), 0, 1)[t]
    tokens_hat = (mean_tok * (1 + rng.normal(0, 0.2, (m_types, K))))[t]
    reveals = REVEALS[actions]
    data = LoggedData(
        actions=actions, logging_probs=mu, candidate_probs=pi_t[t],
        em=em_all[rows, actions], tokens=tok_all[rows, actions], em_hat=em_hat, tokens_hat=tokens_hat,
        revealed_em=np.where(reveals, em_all, np.nan), revealed_tokens=np.where(reveals, tok_all, np.nan),
    )
    return data, truth, per_arm, {"em": em_all, "tokens": tok_all}


STATIC_ESTIMATORS = ("DR", "GraphDR", "GraphChainDR")


def _z(alpha: float = 0.05) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - alpha / 2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--types", type=int, default=30)
    parser.add_argument("--logging", choices=LOGGINGS, default="mix", help="logging policy (default mix)")
    parser.add_argument("--explore", type=float, default=0.3,
                        help="uniform share mixed into the 'mix' logging policy (default 0.3)")
    parser.add_argument("--t", type=int, default=1000, help="rewards seen by the SquareCB logging policies "
                        "(γ = 5·√t; default 1000)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    z = _z()

    coverage_estimators = [DoublyRobust(), SNIPS(), IPS(), SwitchDR(), GraphDR(REVEALS), GraphChainDR(REVEALS),
                           GraphIPS(REVEALS), DirectMethod()]
    static_estimators = [DoublyRobust(), GraphDR(REVEALS), GraphChainDR(REVEALS)]
    metrics = ("em", "tokens", "reward")
    hits = {(e.name, m): 0 for e in coverage_estimators for m in metrics}
    width = {(e.name, m): [] for e in coverage_estimators for m in metrics}
    unsup = {e.name: [] for e in coverage_estimators}
    names = (*STATIC_ESTIMATORS, "floor")
    arm_width = {(a, e, m): [] for a in NAMES for e in names for m in ("em", "tokens")}
    arm_hits = {(a, e, m): 0 for a in NAMES for e in names for m in ("em", "tokens")}
    arm_unsup = {a: [] for a in NAMES}
    mean_mu, mean_q = np.zeros(K), np.zeros(K)

    for seed in range(args.seeds):
        data, truth, per_arm, outcomes = world(seed, args.events, args.types, args.explore, args.logging, args.t)
        mean_mu += data.logging_probs.mean(axis=0) / args.seeds
        mean_q += (data.logging_probs @ REVEALS.astype(float)).mean(axis=0) / args.seeds
        for est in coverage_estimators:
            res = est.estimate_metrics(data, lam=LAM, token_scale=SCALE)
            unsup[est.name].append(res["em"].unsupported_share)
            for m in metrics:
                hits[(est.name, m)] += res[m].covers(truth[m])
                width[(est.name, m)].append(res[m].width)
        for k, name in enumerate(NAMES):
            probs = np.zeros((data.n, K))
            probs[:, k] = 1.0
            fixed = data.with_candidate(probs)
            arm_unsup[name].append(float((data.logging_probs[:, k] <= 0).mean()))
            for m in ("em", "tokens"):
                for est in static_estimators:
                    e = est.estimate(fixed, m)
                    arm_width[(name, est.name, m)].append(e.width)
                    arm_hits[(name, est.name, m)] += e.covers(float(per_arm[m][k]))
                full = outcomes[m][:, k]  # every event's true outcome of arm k: the full-information floor
                half = z * full.std(ddof=1) / math.sqrt(full.shape[0])
                arm_width[(name, "floor", m)].append(2 * half)
                arm_hits[(name, "floor", m)] += abs(full.mean() - per_arm[m][k]) <= half
    elapsed = time.perf_counter() - started

    s = args.seeds
    se = math.sqrt(0.95 * 0.05 / s)
    cmd = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    setting = (f"logging mix: softmax over random scores + {args.explore:g} uniform" if args.logging == "mix" else
               f"logging {args.logging}: γ₀ = 5 after t = {args.t} rewards on a learned-like score")
    print(f"command: `{cmd}`  ({s} seeds x {args.events} events, {args.types} context types, {setting}, "
          f"{elapsed:.1f} s)\n")
    print("mean logging probability μ per arm: " + ", ".join(f"{n} {p:.3f}" for n, p in zip(NAMES, mean_mu)))
    print("mean reveal probability q per arm:  " + ", ".join(f"{n} {p:.3f}" for n, p in zip(NAMES, mean_q)) + "\n")
    print(f"#### Coverage of 95% normal intervals, learned-like candidate (binomial s.e. at 95%: {100 * se:.1f} pts)\n")
    print("| estimator | EM coverage | tokens coverage | reward (λ=0.25) coverage | median EM width | "
          "median tokens width | unsupported events |")
    print("|---|---|---|---|---|---|---|")
    for est in coverage_estimators:
        n_ = est.name
        print(f"| {n_} | {100 * hits[(n_, 'em')] / s:.1f}% | {100 * hits[(n_, 'tokens')] / s:.1f}% | "
              f"{100 * hits[(n_, 'reward')] / s:.1f}% | {np.median(width[(n_, 'em')]):.4f} | "
              f"{np.median(width[(n_, 'tokens')]):.1f} | {100 * np.mean(unsup[n_]):.1f}% |")
    for m, fmt_w in (("em", "{:.4f}"), ("tokens", "{:.1f}")):
        label = "EM" if m == "em" else "tokens"
        print(f"\n#### Static arms, {label}: median 95% interval width at equal log size (ratio to DR; coverage)\n")
        print("| arm (lenient → strict) | DR | GraphDR | GraphChainDR | full-information floor | "
              "events DR cannot see (μ = 0) |")
        print("|---|---|---|---|---|---|")
        for name in NAMES:
            dr = np.median(arm_width[(name, "DR", m)])
            cells = []
            for e in names:
                w = np.median(arm_width[(name, e, m)])
                cov = 100 * arm_hits[(name, e, m)] / s
                ratio = "" if e == "DR" else f" ({dr / w:.2f}x)"
                cells.append(f"{fmt_w.format(w)}{ratio}; {cov:.1f}%")
            print(f"| {name} | " + " | ".join(cells) + f" | {100 * np.mean(arm_unsup[name]):.1f}% |")
    dr_ok = min(hits[("DR", m)] for m in metrics) / s >= 0.90
    sn_ok = min(hits[("SNIPS", m)] for m in metrics) / s >= 0.90
    strict = NAMES[K // 2:]
    verdicts = []
    blind = {n: float(np.mean(arm_unsup[n])) for n in strict if np.mean(arm_unsup[n]) > 0}
    if blind:  # DR's width there is the model's, not the data's: no ratio to report
        verdicts.append("graph estimators vs DR on the stricter arms: not comparable, DR cannot see "
                        + ", ".join(f"{n} on {100 * v:.0f}% of events" for n, v in blind.items())
                        + " (biased: coverage " + ", ".join(
                            f"{n} {100 * arm_hits[(n, 'DR', 'em')] / s:.0f}% EM / "
                            f"{100 * arm_hits[(n, 'DR', 'tokens')] / s:.0f}% tokens" for n in blind) + ")")
    for e in ("GraphDR", "GraphChainDR") if not blind else ():
        ratios = {(n, m): np.median(arm_width[(n, "DR", m)]) / np.median(arm_width[(n, e, m)])
                  for n in strict for m in ("em", "tokens")}
        cov_ok = all(arm_hits[(n, e, m)] / s >= 0.90 for n in strict for m in ("em", "tokens"))
        worst = min(ratios, key=ratios.get)
        verdicts.append(f"{e} >= 2x narrower than DR on the stricter arms ({', '.join(strict)}): "
                        f"{'met' if min(ratios.values()) >= 2.0 else 'MISSED'} (lowest {ratios[worst]:.2f}x, "
                        f"{worst[0]} {worst[1]}), coverage >= 90%: {'met' if cov_ok else 'MISSED'}")
    caps = {(n, m): np.median(arm_width[(n, "DR", m)]) / np.median(arm_width[(n, "floor", m)])
            for n in strict for m in ("em", "tokens") if n not in blind}
    print(f"\ntargets: DR coverage >= 90%: {'met' if dr_ok else 'MISSED'}; SNIPS coverage >= 90%: "
          f"{'met' if sn_ok else 'MISSED'}; " + "; ".join(verdicts))
    if caps:
        print("largest ratio to DR any unbiased estimator can reach (DR / full-information floor): "
              + ", ".join(f"{n} {m} {v:.2f}x" for (n, m), v in caps.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
