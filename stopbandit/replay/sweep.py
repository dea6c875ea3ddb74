"""Offline λ sweep: the EM / token trade-off of the learned heads at every λ, from the log.

The policy scores an arm with ``EM̂ − λ·tokenŝ/token_scale``, so one pair of
heads defines a whole family of policies, one per λ. For each λ of a list the
sweep (:func:`stopbandit.replay.evaluation.sweep_log`, one streaming pass)
builds that policy's probabilities on the logged events with
:func:`policy_scores` and :func:`greedy_probs` (or the serving exploration
rule), evaluates its mean EM and mean tokens off-policy, and returns one
:class:`SweepPoint` per λ. This module holds the parts: the points trace a
Pareto front that :func:`plot_pareto` draws next to the fixed arms, and
:func:`pick_lambda` turns a token budget or an EM floor into a λ.

>>> parse_lambdas("0:0.2:0.05")
[0.0, 0.05, 0.1, 0.15, 0.2]
>>> greedy_probs(np.array([[0.5, 0.5, 0.2]])).tolist()
[[1.0, 0.0, 0.0]]
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stopbandit import validation
from stopbandit.bandit.reward import reward
from stopbandit.errors import ConfigError, InputError
from stopbandit.replay.ope import Estimate

if TYPE_CHECKING:  # pragma: no cover
    from stopbandit.bandit.arms import ArmSet

MAX_LAMBDAS = 10_000
TIE_TOL = 1e-12
"""Scores within this of the best count as a tie (floating noise in ``em − λ·tokens/scale``)."""



@dataclass(frozen=True, slots=True)
class SweepPoint:
    """The candidate policy at one λ: its mean EM, mean tokens and mean reward, each with an interval."""

    lam: float
    em: Estimate
    tokens: Estimate
    reward: Estimate


# --------------------------------------------------------------------------- λ lists


def parse_lambdas(spec: str) -> list[float]:
    """λ values from ``"start:stop:step"`` (stop inclusive), ``"a,b,c"`` or ``"a"``.

    Values are rounded to 12 decimals (``0:1:0.1`` gives ``0.3``, not
    ``0.30000000000000004``), must be finite and >= 0, at most 10,000 of them.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"lambdas must be 'start:stop:step' or a comma-separated list, got {spec!r}")
    text = spec.strip()

    def num(part: str, what: str) -> float:
        return validation.number_text(part.strip(), f"lambdas {spec!r}: {what}", error=ConfigError)

    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ConfigError(f"lambdas range must be 'start:stop:step' (three numbers), got {spec!r}")
        start, stop, step = (num(p, w) for p, w in zip(parts, ("start", "stop", "step")))
        if step <= 0:
            raise ConfigError(f"lambdas {spec!r}: step must be > 0, got {step:g}")
        if stop < start:
            raise ConfigError(f"lambdas {spec!r}: stop {stop:g} is below start {start:g}")
        count = math.floor((stop - start) / step + 1e-9) + 1
        if count > MAX_LAMBDAS:
            raise ConfigError(f"lambdas {spec!r} gives {count} values, more than {MAX_LAMBDAS}")
        values = [round(start + i * step, 12) for i in range(count)]
    else:
        values = [round(num(p, "value"), 12) for p in text.split(",")]
        if len(values) > MAX_LAMBDAS:
            raise ConfigError(f"lambdas {spec!r} has {len(values)} values, more than {MAX_LAMBDAS}")
    negative = [v for v in values if v < 0]
    if negative:
        raise ConfigError(f"lambdas {spec!r}: λ must be >= 0, got {negative[0]:g}")
    return values


# --------------------------------------------------------------------------- candidate policy


def lenience_rank(arms: ArmSet) -> np.ndarray:
    """(K,) tie-break rank per arm: 0 for the most lenient (highest threshold, then largest cap, then agreement window).

    Equally lenient arms keep their index order.
    """
    order = sorted(range(len(arms)), key=lambda i: (*(-v for v in arms[i].lenience()), i))
    rank = np.empty(len(arms), dtype=np.int64)
    rank[order] = np.arange(len(arms))
    return rank


def greedy_probs(scores: np.ndarray, *, tie_rank: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """(n, K) one-hot probabilities of the best-scoring arm per row.

    Ties (within ``TIE_TOL``) go to the arm with the lowest ``tie_rank``
    (default: the first arm; pass :func:`lenience_rank` to prefer the most lenient).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 1:
        raise InputError(f"scores must be a 2-D array (n, K), got shape {s.shape}")
    if not np.isfinite(s).all():
        raise InputError("scores must be finite (check em_hat / tokens_hat)")
    k = s.shape[1]
    rank = np.arange(k) if tie_rank is None else np.asarray(tie_rank)
    if rank.shape != (k,) or sorted(rank.tolist()) != list(range(k)):
        raise ConfigError(f"tie_rank must be a permutation of 0..{k - 1}, got {rank.tolist()}")
    tied = s >= s.max(axis=1, keepdims=True) - TIE_TOL
    best = np.argmin(np.where(tied, rank[None, :], k), axis=1)
    out = np.zeros_like(s)
    out[np.arange(s.shape[0]), best] = 1.0
    return out


def policy_scores(em_hat: np.ndarray, tokens_hat: np.ndarray, lam: float, token_scale: float) -> np.ndarray:
    """(n, K) serving scores: :func:`stopbandit.bandit.reward.reward` of the predicted EM and tokens."""
    return reward(np.asarray(em_hat), np.asarray(tokens_hat), lam, token_scale)


# --------------------------------------------------------------------------- sweep


# --------------------------------------------------------------------------- picking λ


def pick_lambda(
    points: Sequence[SweepPoint],
    token_budget: float | None = None,
    em_floor: float | None = None,
    *,
    conservative: bool = False,
) -> float | None:
    """The λ that meets a target, or None when no point does. Give exactly one target.

    ``token_budget``: the λ with the largest EM whose mean tokens stay within
    the budget (ties: fewer tokens, then smaller λ). ``em_floor``: the λ with
    the fewest mean tokens whose EM reaches the floor (ties: higher EM, then
    smaller λ). ``conservative=True`` judges by the interval bounds (tokens'
    upper bound, EM's lower bound) instead of the point estimates.
    """
    if (token_budget is None) == (em_floor is None):
        raise ConfigError(
            f"give exactly one of token_budget or em_floor, got token_budget={token_budget!r}, em_floor={em_floor!r}"
        )
    if token_budget is not None:
        budget = validation.within(token_budget, "token_budget", low=0.0, numpy=True, wrong_type="a number")
        ok = [p for p in points if (p.tokens.ci_high if conservative else p.tokens.value) <= budget]
        if not ok:
            return None
        return min(ok, key=lambda p: (-p.em.value, p.tokens.value, p.lam)).lam
    floor = validation.within(em_floor, "em_floor", low=0.0, high=1.0, numpy=True, wrong_type="a number")
    ok = [p for p in points if (p.em.ci_low if conservative else p.em.value) >= floor]
    if not ok:
        return None
    return min(ok, key=lambda p: (p.tokens.value, -p.em.value, p.lam)).lam


# --------------------------------------------------------------------------- plot


def plot_pareto(
    points: Sequence[SweepPoint],
    fixed_arms: Mapping[str, tuple[Estimate, Estimate]],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """Draw EM against mean tokens with intervals both ways; return the written path.

    The λ sweep is one line (points annotated with their λ, skipping labels
    that would overlap), ``fixed_arms`` (``{name: (em, tokens)}``, e.g. from
    :func:`stopbandit.replay.evaluation.sweep_log`: full reasoning and the static arms) are
    labelled squares. Uses the Agg canvas directly: no pyplot, no global state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not points and not fixed_arms:
        raise InputError("plot_pareto needs sweep points or fixed arms to draw")
    fig = Figure(figsize=(7.5, 5.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if points:
        x = np.array([p.tokens.value for p in points])
        y = np.array([p.em.value for p in points])
        ax.errorbar(
            x, y, xerr=_err([p.tokens for p in points]), yerr=_err([p.em for p in points]),
            fmt="o-", ms=4, lw=1.2, capsize=2, color="tab:blue", ecolor="tab:blue", alpha=0.9,
            label=f"learned policy, λ sweep ({points[0].em.estimator})",
        )
        # label λ where the line has moved far enough from the last label to stay readable
        span_x = max(float(np.ptp(x)), 1e-12)
        span_y = max(float(np.ptp(y)), 1e-12)
        last: tuple[float, float] | None = None
        for i, p in enumerate(points):
            if last is None or max(abs(x[i] - last[0]) / span_x, abs(y[i] - last[1]) / span_y) > 0.08:
                ax.annotate(f"λ={p.lam:g}", (x[i], y[i]), textcoords="offset points", xytext=(5, 5),
                            fontsize=7, color="tab:blue")
                last = (x[i], y[i])
    for j, (name, (em, tok)) in enumerate(fixed_arms.items()):
        ax.errorbar(
            [tok.value], [em.value], xerr=_err([tok]), yerr=_err([em]), fmt="s", ms=6, capsize=3,
            color=f"C{(j + 1) % 10}", label=f"fixed arm: {name}",
        )
        ax.annotate(name, (tok.value, em.value), textcoords="offset points", xytext=(6, -11), fontsize=8)
    ax.set_xlabel("mean tokens per request")
    ax.set_ylabel("exact match (EM)")
    level = points[0].em.alpha if points else next(iter(fixed_arms.values()))[0].alpha
    ax.set_title(title or f"EM vs tokens, off-policy estimates with {100 * (1 - level):g}% intervals")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    out = Path(path)
    fig.savefig(out, bbox_inches="tight")
    return out


def _err(ests: Sequence[Estimate]) -> np.ndarray:
    lo = np.array([e.value - e.ci_low for e in ests])
    hi = np.array([e.ci_high - e.value for e in ests])
    both = np.vstack([lo, hi])
    return np.where(np.isfinite(both), np.maximum(both, 0.0), 0.0)


__all__ = [
    "SweepPoint",
    "greedy_probs",
    "lenience_rank",
    "parse_lambdas",
    "pick_lambda",
    "plot_pareto",
    "policy_scores",
]
