"""Coverage of the OPE intervals, and how much graph feedback narrows them.

A synthetic world whose truth is exact: requests come in ``--types`` context
types (uniform), each with a per-arm EM probability and mean token count; the
four default arms (full, careful, balanced, aggressive) are nested the way
early stopping nests them (one uniform decides EM for every arm of a request,
so a stricter arm is right only if the more lenient ones are; one log-normal
length factor scales every arm's tokens). The logging policy is a softmax over
random per-type scores mixed with ``--explore`` (default 30%) uniform exploration; the reward models
(``em_hat``, ``tokens_hat``) are the truth plus a fixed per-(type, arm) error,
so DR is not handed a perfect model. A trace of the logged arm reveals every
stricter arm (``reveal_matrix(ArmSet(DEFAULT_ARMS))``).

Reported, over ``--seeds`` worlds of ``--events`` logged events each:

1. coverage of the 95% normal intervals (target >= 90%) of DR and SNIPS (and
   the others for reference) for a learned-like candidate (90% greedy on a
   noisy reward score, 10% uniform), for EM, tokens and reward (λ = 0.25);
2. the median interval width of DR and GraphDR for the static "always arm k"
   candidates at the same log size, and the ratio (target >= 2x narrower for
   the stricter arms), with GraphDR's coverage.

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
from stopbandit.replay.ope import (
    IPS,
    SNIPS,
    DirectMethod,
    DoublyRobust,
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


def world(seed: int, n: int, m_types: int, explore: float = 0.3):
    """(data with the learned-like candidate, truth dict {metric: value}, per-arm truth {metric: (K,)})."""
    rng = np.random.default_rng(seed)
    diff = rng.uniform(0, 1, m_types)
    p = np.clip(0.92 - 0.2 * diff[:, None] - 0.45 * diff[:, None] * STRICTNESS[None, :], 0.02, 0.98)
    length = 300 + 1700 * diff
    mean_tok = length[:, None] * TOKEN_FRAC[None, :] * math.exp(SIGMA**2 / 2)
    z = rng.normal(0, 1, (m_types, K))
    mu_t = (1 - explore) * np.exp(z) / np.exp(z).sum(axis=1, keepdims=True) + explore / K
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
    actions = np.minimum((rng.random(n)[:, None] > np.cumsum(mu, axis=1)).sum(axis=1), K - 1)
    rows = np.arange(n)
    em_hat = np.clip(p + rng.normal(0, 0.1, (m_types, K)), 0, 1)[t]
    tokens_hat = (mean_tok * (1 + rng.normal(0, 0.2, (m_types, K))))[t]
    reveals = REVEALS[actions]
    data = LoggedData(
        actions=actions, logging_probs=mu, candidate_probs=pi_t[t],
        em=em_all[rows, actions], tokens=tok_all[rows, actions], em_hat=em_hat, tokens_hat=tokens_hat,
        revealed_em=np.where(reveals, em_all, np.nan), revealed_tokens=np.where(reveals, tok_all, np.nan),
    )
    return data, truth, per_arm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--types", type=int, default=30)
    parser.add_argument("--explore", type=float, default=0.3,
                        help="uniform share mixed into the logging policy (default 0.3)")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    coverage_estimators = [DoublyRobust(), SNIPS(), IPS(), SwitchDR(), GraphDR(REVEALS), GraphIPS(REVEALS),
                           DirectMethod()]
    metrics = ("em", "tokens", "reward")
    hits = {(e.name, m): 0 for e in coverage_estimators for m in metrics}
    width = {(e.name, m): [] for e in coverage_estimators for m in metrics}
    arm_width = {(name, est, m): [] for name in NAMES for est in ("DR", "GraphDR") for m in ("em", "tokens")}
    arm_hits = {(name, est, m): 0 for name in NAMES for est in ("DR", "GraphDR") for m in ("em", "tokens")}
    mean_mu = np.zeros(K)

    for seed in range(args.seeds):
        data, truth, per_arm = world(seed, args.events, args.types, args.explore)
        mean_mu += data.logging_probs.mean(axis=0) / args.seeds
        for est in coverage_estimators:
            res = est.estimate_metrics(data, lam=LAM, token_scale=SCALE)
            for m in metrics:
                hits[(est.name, m)] += res[m].covers(truth[m])
                width[(est.name, m)].append(res[m].width)
        for k, name in enumerate(NAMES):
            probs = np.zeros((data.n, K))
            probs[:, k] = 1.0
            fixed = data.with_candidate(probs)
            for est in (DoublyRobust(), GraphDR(REVEALS)):
                for m in ("em", "tokens"):
                    e = est.estimate(fixed, m)
                    arm_width[(name, est.name, m)].append(e.width)
                    arm_hits[(name, est.name, m)] += e.covers(float(per_arm[m][k]))
    elapsed = time.perf_counter() - started

    s = args.seeds
    se = math.sqrt(0.95 * 0.05 / s)
    cmd = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    print(f"command: `{cmd}`  ({s} seeds x {args.events} events, {args.types} context types, "
          f"logging exploration {args.explore:g}, {elapsed:.1f} s)\n")
    print("mean logging probability per arm: "
          + ", ".join(f"{n} {p:.3f}" for n, p in zip(NAMES, mean_mu)) + "\n")
    print(f"### Coverage of 95% normal intervals, learned-like candidate (binomial s.e. at 95%: {100 * se:.1f} pts)\n")
    print("| estimator | EM coverage | tokens coverage | reward (λ=0.25) coverage | median EM width | "
          "median tokens width |")
    print("|---|---|---|---|---|---|")
    for est in coverage_estimators:
        n_ = est.name
        print(f"| {n_} | {100 * hits[(n_, 'em')] / s:.1f}% | {100 * hits[(n_, 'tokens')] / s:.1f}% | "
              f"{100 * hits[(n_, 'reward')] / s:.1f}% | {np.median(width[(n_, 'em')]):.4f} | "
              f"{np.median(width[(n_, 'tokens')]):.1f} |")
    print("\n### Static arms: DR vs GraphDR at equal log size (median 95% interval width)\n")
    print("| arm (lenient → strict) | DR EM width | GraphDR EM width | ratio | DR tokens width | "
          "GraphDR tokens width | ratio | GraphDR coverage EM / tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for name in NAMES:
        de, ge = np.median(arm_width[(name, "DR", "em")]), np.median(arm_width[(name, "GraphDR", "em")])
        dt, gt = np.median(arm_width[(name, "DR", "tokens")]), np.median(arm_width[(name, "GraphDR", "tokens")])
        ce = 100 * arm_hits[(name, "GraphDR", "em")] / s
        ct = 100 * arm_hits[(name, "GraphDR", "tokens")] / s
        print(f"| {name} | {de:.4f} | {ge:.4f} | {de / ge:.2f}x | {dt:.1f} | {gt:.1f} | {dt / gt:.2f}x | "
              f"{ce:.1f}% / {ct:.1f}% |")
    dr_ok = min(hits[("DR", m)] for m in metrics) / s >= 0.90
    sn_ok = min(hits[("SNIPS", m)] for m in metrics) / s >= 0.90
    strict = NAMES[K // 2:]
    ratio_ok = all(
        np.median(arm_width[(n, "DR", m)]) / np.median(arm_width[(n, "GraphDR", m)]) >= 2.0
        for n in strict for m in ("em", "tokens")
    )
    print(f"\ntargets: DR coverage >= 90%: {'met' if dr_ok else 'MISSED'}; SNIPS coverage >= 90%: "
          f"{'met' if sn_ok else 'MISSED'}; GraphDR >= 2x narrower on the stricter arms ({', '.join(strict)}): "
          f"{'met' if ratio_ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
