"""A stop rule learned from the probe signal itself.

At every probe the rule reads the probe's own signals -- the trial answer's
confidence and its change since the previous probe, how many consecutive
probes gave this answer, whether the answer just changed, the position
(thinking tokens, probe index, every token spent so far) -- and the request's
context (a numeric vector the caller builds: domain one-hot, a difficulty
estimate). From them three small models estimate

* ``p_now``: the probability that the trial answer at this probe is correct;
* ``p_end``: the probability that the answer at the end of the reasoning is correct;
* ``rest``: the tokens thinking on to the end still costs (probes included).

The rule stops at the first probe where the gain of thinking on is not worth
its cost: ``p_end − p_now <= level · λ · rest / token_scale``. λ and the
arm's aggressiveness ``level`` (:attr:`stopbandit.bandit.arms.Arm.learned`)
enter only at decision time, so moving λ needs no retraining. The estimate is
myopic (to the end of the reasoning, not to the next probe); it reads only
probes up to the current one, so where a learned arm stops on a run is
decided by the probes before that stop, and a lenient trace reveals it exactly,
like every other stop rule of :mod:`stopbandit.bandit.stoprule`.

Labels come from traced runs that reached the end of the reasoning:
``graded`` -- a probe's trial answer (and the final answer) against the
reference answer; ``agreement`` -- against the run's own final answer, when
no reference is known (then ``p_end`` is 1 by construction and the rule
learns to stop once the answer has converged).

The models are L2-regularised logistic regressions (``p_now``, ``p_end``) and
a least-squares fit of ``log1p(rest)``, fitted by Newton steps in numpy.
:meth:`LearnedStop.fit` is also the online update: each model keeps the
precision (inverse covariance) of its weights, and a new batch is fitted with
the current weights as the prior mean and that precision as the prior's
(a Laplace approximation; for ``rest`` it is exact recursive least squares),
so training batch after batch approximates one fit on all of them instead of
forgetting the earlier batches. The state is plain JSON
(:meth:`LearnedStop.to_json`), stored next to the heads in snapshots.

:func:`stop_context` is the context every part of the package builds from a
request's feature dict (the Selector, the gateway, ``replay train``), so a rule
trained on one is read the same way by the others.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stopbandit.errors import InputError

LABELS: tuple[str, ...] = ("graded", "agreement")
PROBE_FEATURES: tuple[str, ...] = (
    "bias", "confidence", "logit_confidence", "confidence_change", "streak", "changed",
    "offset_k", "log_offset", "probe_index", "spent_k",
    "confidence_ge_0.9", "confidence_ge_0.95", "confidence_ge_0.98", "confidence_sq", "running_max",
    "confidence_x_streak", "confidence_x_progress",
)
_FORMAT = 1
MAX_CONTEXT = 1024
"""Most context columns a rule may read (a stored rule is refused beyond it: its matrices grow as the square)."""
CONTEXT_DOMAIN_BUCKETS = 8
CONTEXT_FEATURES: tuple[str, ...] = tuple(f"domain#{i}" for i in range(CONTEXT_DOMAIN_BUCKETS)) + (
    "diff", "len", "prior")
"""Columns of :func:`stop_context`: the domain hashed into 8 one-hot buckets, the difficulty estimate,
the log prompt length / 8 and the domain's miss-rate prior (0.5 when absent)."""


def _bucket(domain: str) -> int:
    return int.from_bytes(hashlib.sha1(domain.encode("utf-8")).digest()[:4], "big") % CONTEXT_DOMAIN_BUCKETS


def stop_context(features: Mapping[str, object] | None) -> np.ndarray:
    """The learned rule's context row (``len(CONTEXT_FEATURES)`` floats) of a request's feature dict.

    The domain goes through a stable hash (sha1), so a row means the same in every process and
    after a restart; a missing or non-numeric feature reads as its neutral value.
    """
    row = np.zeros(len(CONTEXT_FEATURES))
    feats = features if isinstance(features, Mapping) else {}
    dom = feats.get("domain")
    if isinstance(dom, str) and dom:
        row[_bucket(dom)] = 1.0

    def num(name: str, default: float) -> float:
        v = feats.get(name)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else default

    row[CONTEXT_DOMAIN_BUCKETS] = num("diff", 0.0)
    row[CONTEXT_DOMAIN_BUCKETS + 1] = num("len", 0.0) / 8.0
    row[CONTEXT_DOMAIN_BUCKETS + 2] = num("prior", 0.5)
    return row


def probe_features(offset: np.ndarray, confidence: np.ndarray, tokens: np.ndarray, streak: np.ndarray,
                   start: np.ndarray, count: np.ndarray, context: np.ndarray) -> np.ndarray:
    """Per flat probe, the rule's features: float64 ``(P, len(PROBE_FEATURES) + C)``.

    ``offset``/``confidence``/``tokens``/``streak``: per flat probe (``P``), runs
    one after another; ``start``/``count``: each run's first flat index and
    number of probes (``E``); ``context``: ``(E, C)``.
    """
    n = offset.size
    event = np.repeat(np.arange(count.size), count)
    first = np.zeros(n, dtype=bool)
    first[start[count > 0]] = True
    conf = np.clip(confidence.astype(np.float64), 0.0, 1.0)
    conf = np.where(np.isnan(conf), 0.0, conf)
    prev = np.concatenate(([0.0], conf[:-1])) if n else conf
    dconf = np.where(first, 0.0, conf - prev)
    index = np.arange(n) - np.repeat(start, count)
    cums = np.concatenate(([0], np.cumsum(tokens)))
    before = cums[:-1] - np.repeat(cums[start], count)  # probe tokens of this run before this probe
    spent = offset + before + tokens
    eps = 1e-4
    running = np.maximum.accumulate(conf + 2.0 * event) - 2.0 * event if n else conf  # per-run running max
    lc = np.log((conf + eps) / (1.0 - conf + eps))
    cols = [
        np.ones(n), conf, lc / 5.0, dconf, np.minimum(streak, 6) / 6.0,
        ((streak == 1) & ~first).astype(np.float64), offset / 1000.0, np.log1p(offset) / 8.0,
        np.minimum(index, 40) / 20.0, spent / 1000.0,
        (conf >= 0.9).astype(np.float64), (conf >= 0.95).astype(np.float64), (conf >= 0.98).astype(np.float64),
        conf**2, running, conf * np.minimum(streak, 6) / 6.0, conf * np.log1p(offset) / 8.0,
    ]
    ctx = np.asarray(context, dtype=np.float64).reshape(count.size, -1)[event] if n else np.zeros((0, 0))
    return np.column_stack(cols + [ctx]) if ctx.size else np.column_stack(cols) if n else np.zeros((0, len(cols)))


def _newton_logistic(x: np.ndarray, y: np.ndarray, prior: np.ndarray, precision: np.ndarray,
                     steps: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """MAP weights under a Gaussian prior (mean ``prior``, ``precision``) and the posterior precision there."""
    w = prior.copy()
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        grad = x.T @ (p - y) + precision @ (w - prior)
        hess = (x * (p * (1 - p))[:, None]).T @ x + precision
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-6:
            break
    p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
    return w, (x * (p * (1 - p))[:, None]).T @ x + precision


def _ridge(x: np.ndarray, y: np.ndarray, prior: np.ndarray, precision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = x.T @ x + precision
    return np.linalg.solve(a, x.T @ y + precision @ prior), a


@dataclass(frozen=True, slots=True)
class StopData:
    """Training rows: probe features and their labels (``correct_now``, ``correct_end``, ``rest`` tokens)."""

    features: np.ndarray
    correct_now: np.ndarray
    correct_end: np.ndarray
    rest: np.ndarray


class LearnedStop:
    """The three models of the rule (see the module docstring); ``context_size`` = columns of the context."""

    def __init__(self, context_size: int, label: str = "graded", l2: float = 1.0,
                 weights: Mapping[str, Sequence[float]] | None = None, rows: int = 0,
                 precision: Mapping[str, Sequence[Sequence[float]]] | None = None) -> None:
        if isinstance(context_size, bool) or not isinstance(context_size, int) or not 0 <= context_size <= MAX_CONTEXT:
            raise InputError(f"learned stop: context_size must be an integer in [0, {MAX_CONTEXT}], got {context_size!r}")
        if label not in LABELS:
            raise InputError(f"learned stop: label must be one of {list(LABELS)}, got {label!r}")
        if not (isinstance(l2, (int, float)) and math.isfinite(l2) and l2 > 0):
            raise InputError(f"learned stop: l2 must be a finite number > 0, got {l2!r}")
        self.context_size, self.label, self.l2, self.rows = context_size, label, float(l2), int(rows)
        width = len(PROBE_FEATURES) + context_size
        w = {k: np.zeros(width) for k in ("now", "end", "rest")}
        # agreement labels: the final answer agrees with itself, so p_end is 1 (the logit at the clip, σ(30))
        w["end"][0] = 30.0 if label == "agreement" else 0.0
        w["rest"][0] = 6.0
        if weights is not None:
            for k in w:
                v = np.asarray(weights.get(k, ()), dtype=np.float64)
                if v.shape != (width,) or not np.isfinite(v).all():
                    raise InputError(f"learned stop: weights[{k!r}] must be {width} finite numbers, got shape {v.shape}")
                w[k] = v
        self.w = w
        prec = {k: self.l2 * np.eye(width) for k in w}
        if precision is not None:
            for k in prec:
                m = np.asarray(precision.get(k, ()), dtype=np.float64)
                if m.shape != (width, width) or not np.isfinite(m).all():
                    raise InputError(f"learned stop: precision[{k!r}] must be a {width}x{width} matrix of finite "
                                     f"numbers, got shape {m.shape}")
                prec[k] = m
        self.precision = prec

    def copy(self) -> LearnedStop:
        """An independent copy (a serving rule is replaced by an updated copy, never changed in place)."""
        out = LearnedStop(self.context_size, self.label, self.l2, None, self.rows)
        out.w = {k: v.copy() for k, v in self.w.items()}
        out.precision = {k: v.copy() for k, v in self.precision.items()}
        return out

    @property
    def width(self) -> int:
        return len(PROBE_FEATURES) + self.context_size

    @property
    def trained(self) -> bool:
        return self.rows > 0

    def estimates(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(p_now, p_end, rest)`` per row of ``features``."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.width:
            raise InputError(f"learned stop: features must have {self.width} columns, got shape {x.shape}")
        p_now = 1.0 / (1.0 + np.exp(-np.clip(x @ self.w["now"], -30, 30)))
        p_end = 1.0 / (1.0 + np.exp(-np.clip(x @ self.w["end"], -30, 30)))
        rest = np.expm1(np.clip(x @ self.w["rest"], 0.0, 12.0))
        return p_now, p_end, rest

    def fires(self, features: np.ndarray, levels: np.ndarray, lam: float, token_scale: float) -> np.ndarray:
        """Whether each probe stops each level: bool ``(P, len(levels))``; a level 0 never fires.

        An untrained rule (no rows yet) never fires: until traces have taught it, a learned arm
        stops on its other conditions only, instead of on the guesses of blank weights.
        """
        levels = np.asarray(levels, dtype=np.float64)
        if features.shape[0] == 0 or not self.trained:
            return np.zeros((features.shape[0], levels.size), dtype=bool)
        p_now, p_end, rest = self.estimates(features)
        gain = (p_end - p_now)[:, None]
        cost = (lam * rest / token_scale)[:, None] * levels[None, :]
        return (gain <= cost) & (levels[None, :] > 0)

    def fit(self, data: StopData) -> LearnedStop:
        """Fit on ``data`` with the current weights and precision as the prior (online: one call per batch)."""
        x = np.asarray(data.features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.width:
            raise InputError(f"learned stop: features must have {self.width} columns, got shape {x.shape}")
        if x.shape[0] == 0:
            return self
        w, p = self.w, self.precision
        w["now"], p["now"] = _newton_logistic(x, np.asarray(data.correct_now, float), w["now"], p["now"])
        if self.label == "graded":
            w["end"], p["end"] = _newton_logistic(x, np.asarray(data.correct_end, float), w["end"], p["end"])
        w["rest"], p["rest"] = _ridge(x, np.log1p(np.maximum(np.asarray(data.rest, float), 0.0)), w["rest"],
                                      p["rest"])
        self.rows += int(x.shape[0])
        return self

    def to_json(self) -> dict[str, Any]:
        return {"format": _FORMAT, "context_size": self.context_size, "label": self.label, "l2": self.l2,
                "rows": self.rows, "weights": {k: [float(v) for v in w] for k, w in self.w.items()},
                "precision": {k: [[float(v) for v in row] for row in m] for k, m in self.precision.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LearnedStop:
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise InputError(f"learned stop: expected a table with format {_FORMAT}, got {data!r:.120}")
        try:
            return cls(int(data["context_size"]), str(data["label"]), float(data["l2"]), data["weights"],
                       int(data["rows"]), data.get("precision"))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"learned stop: malformed state: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class LearnedInputs:
    """What the stop-rule kernel needs to evaluate learned arms: the rule, λ, the runs' context ``(E, C)``."""

    rule: LearnedStop
    lam: float
    context: np.ndarray
    token_scale: float = 1000.0

    def __post_init__(self) -> None:
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or not math.isfinite(self.lam) \
                or self.lam < 0:
            raise InputError(f"learned stop: lam must be a finite number >= 0, got {self.lam!r}")
        if not (isinstance(self.token_scale, (int, float)) and self.token_scale > 0):
            raise InputError(f"learned stop: token_scale must be > 0, got {self.token_scale!r}")
        ctx = np.asarray(self.context, dtype=np.float64)
        if ctx.ndim == 1:
            ctx = ctx.reshape(1, -1)
        if ctx.ndim != 2 or ctx.shape[1] != self.rule.context_size:
            raise InputError(f"learned stop: context must have {self.rule.context_size} columns per run, "
                             f"got shape {ctx.shape}")
        object.__setattr__(self, "context", ctx)


__all__ = ["CONTEXT_FEATURES", "LABELS", "PROBE_FEATURES", "LearnedInputs", "LearnedStop", "StopData",
           "probe_features", "stop_context"]
