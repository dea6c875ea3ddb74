"""The λ sweep computed in memory, one estimator call per point: the reference the streaming sweep is checked against.

:func:`stopbandit.replay.evaluation.sweep_log` is the library's sweep (one
streaming pass, chunk by chunk, any number of processes). These functions
compute the same points on one in-memory :class:`LoggedData` with the
estimators' one-shot ``estimate``: the tests check the library against them
and use them to check the sweep's arithmetic by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from stopbandit.errors import ConfigError, InputError
from stopbandit.replay.ope import DoublyRobust, Estimate, Estimator, LoggedData
from stopbandit.replay.sweep import SweepPoint, greedy_probs, policy_scores

ProbsFn = Callable[[np.ndarray], np.ndarray]


def sweep(
    data: LoggedData,
    lambdas: Sequence[float],
    *,
    token_scale: float = 1000.0,
    estimator: Estimator | None = None,
    probs_fn: ProbsFn | None = None,
    tie_rank: Sequence[int] | np.ndarray | None = None,
    alpha: float = 0.05,
    em_hat: np.ndarray | None = None,
    tokens_hat: np.ndarray | None = None,
) -> list[SweepPoint]:
    """Evaluate the heads' policy at every λ in ``lambdas`` (one :class:`SweepPoint` each).

    ``em_hat`` / ``tokens_hat`` (n, K): the heads' predictions that define the
    policy (default: the ones in ``data``, which DR-type estimators also use
    as their model). ``probs_fn(scores) -> probs`` maps (n, K) scores to (n, K)
    probabilities (the serving exploration rule); without it the policy is
    greedy with ties to ``tie_rank``. ``estimator`` defaults to
    :class:`~stopbandit.replay.ope.DoublyRobust`. The reward estimate of each
    point is ``em − λ·tokens/token_scale`` of the same per-event contributions.
    """
    if not isinstance(data, LoggedData):
        raise InputError(f"sweep needs a LoggedData, got {type(data).__name__}")
    est = DoublyRobust() if estimator is None else estimator
    if not isinstance(est, Estimator):
        raise ConfigError(f"estimator must be an Estimator instance, got {est!r}")
    if probs_fn is not None and not callable(probs_fn):
        raise ConfigError(f"probs_fn must be callable (scores -> probs), got {probs_fn!r}")
    lams = [_check_lambda(v) for v in lambdas]
    if not lams:
        raise ConfigError("lambdas is empty: give at least one λ")
    shape = (data.n, data.n_arms)
    heads = {}
    for name, given, fallback in (("em_hat", em_hat, data.em_hat), ("tokens_hat", tokens_hat, data.tokens_hat)):
        value = fallback if given is None else given
        if value is None:
            raise InputError(f"sweep needs {name} (n, K) head predictions: pass {name}= or put it in the LoggedData")
        arr = np.asarray(value, dtype=np.float64)
        if arr.shape != shape or not np.isfinite(arr).all():
            raise InputError(f"{name} must be a finite array of shape {shape}, got shape {arr.shape}")
        heads[name] = arr
    points = []
    for lam in lams:
        scores = policy_scores(heads["em_hat"], heads["tokens_hat"], lam, token_scale)
        probs = greedy_probs(scores, tie_rank=tie_rank) if probs_fn is None else probs_fn(scores)
        try:
            cand = data.with_candidate(probs)
        except InputError as exc:
            raise InputError(f"candidate probabilities at λ={lam:g} are invalid: {exc}") from None
        res = est.estimate_metrics(cand, lam, token_scale, alpha)
        points.append(SweepPoint(lam, res["em"], res["tokens"], res["reward"]))
    return points


def _check_lambda(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"each λ must be a number >= 0, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ConfigError(f"each λ must be a finite number >= 0, got {value!r}")
    return v


def fixed_arm_estimates(
    data: LoggedData,
    names: Sequence[str],
    *,
    estimator: Estimator | None = None,
    alpha: float = 0.05,
) -> dict[str, tuple[Estimate, Estimate]]:
    """``{name: (em, tokens)}`` of the static policies "always arm k" (``names[k]`` names arm k)."""
    if len(names) != data.n_arms:
        raise ConfigError(f"names must name all {data.n_arms} arms, got {len(names)}: {list(names)}")
    est = DoublyRobust() if estimator is None else estimator
    out = {}
    for k, name in enumerate(names):
        probs = np.zeros((data.n, data.n_arms))
        probs[:, k] = 1.0
        cand = data.with_candidate(probs)
        out[name] = (est.estimate(cand, "em", alpha=alpha), est.estimate(cand, "tokens", alpha=alpha))
    return out
