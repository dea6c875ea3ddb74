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
a least-squares fit of ``log1p(rest)``, fitted by Newton steps in numpy;
:meth:`LearnedStop.update` refits on a new batch with the current weights as
the prior mean (online training from traced rewards). The state is plain JSON
(:meth:`LearnedStop.to_json`), stored next to the heads in snapshots.
"""

from __future__ import annotations

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


def _newton_logistic(x: np.ndarray, y: np.ndarray, prior: np.ndarray, l2: float, steps: int = 12) -> np.ndarray:
    w = prior.copy()
    eye = l2 * np.eye(x.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        grad = x.T @ (p - y) + l2 * (w - prior)
        hess = (x * (p * (1 - p))[:, None]).T @ x + eye
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-6:
            break
    return w


def _ridge(x: np.ndarray, y: np.ndarray, prior: np.ndarray, l2: float) -> np.ndarray:
    a = x.T @ x + l2 * np.eye(x.shape[1])
    return np.linalg.solve(a, x.T @ y + l2 * prior)


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
                 weights: Mapping[str, Sequence[float]] | None = None, rows: int = 0) -> None:
        if isinstance(context_size, bool) or not isinstance(context_size, int) or context_size < 0:
            raise InputError(f"learned stop: context_size must be an integer >= 0, got {context_size!r}")
        if label not in LABELS:
            raise InputError(f"learned stop: label must be one of {list(LABELS)}, got {label!r}")
        if not (isinstance(l2, (int, float)) and math.isfinite(l2) and l2 > 0):
            raise InputError(f"learned stop: l2 must be a finite number > 0, got {l2!r}")
        self.context_size, self.label, self.l2, self.rows = context_size, label, float(l2), int(rows)
        width = len(PROBE_FEATURES) + context_size
        w = {k: np.zeros(width) for k in ("now", "end", "rest")}
        w["end"][0] = 1.0 if label == "agreement" else 0.0
        w["rest"][0] = 6.0
        if weights is not None:
            for k in w:
                v = np.asarray(weights.get(k, ()), dtype=np.float64)
                if v.shape != (width,) or not np.isfinite(v).all():
                    raise InputError(f"learned stop: weights[{k!r}] must be {width} finite numbers, got shape {v.shape}")
                w[k] = v
        self.w = w

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
        """Whether each probe stops each level: bool ``(P, len(levels))``; a level 0 never fires."""
        levels = np.asarray(levels, dtype=np.float64)
        if features.shape[0] == 0:
            return np.zeros((0, levels.size), dtype=bool)
        p_now, p_end, rest = self.estimates(features)
        gain = (p_end - p_now)[:, None]
        cost = (lam * rest / token_scale)[:, None] * levels[None, :]
        return (gain <= cost) & (levels[None, :] > 0)

    def fit(self, data: StopData) -> LearnedStop:
        """Fit on ``data`` from the current weights as the prior mean (online: one call per traced batch)."""
        x = np.asarray(data.features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.width:
            raise InputError(f"learned stop: features must have {self.width} columns, got shape {x.shape}")
        if x.shape[0] == 0:
            return self
        self.w["now"] = _newton_logistic(x, np.asarray(data.correct_now, float), self.w["now"], self.l2)
        if self.label == "graded":
            self.w["end"] = _newton_logistic(x, np.asarray(data.correct_end, float), self.w["end"], self.l2)
        self.w["rest"] = _ridge(x, np.log1p(np.maximum(np.asarray(data.rest, float), 0.0)), self.w["rest"], self.l2)
        self.rows += int(x.shape[0])
        return self

    def to_json(self) -> dict[str, Any]:
        return {"format": _FORMAT, "context_size": self.context_size, "label": self.label, "l2": self.l2,
                "rows": self.rows, "weights": {k: [float(v) for v in w] for k, w in self.w.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LearnedStop:
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise InputError(f"learned stop: expected a table with format {_FORMAT}, got {data!r:.120}")
        try:
            return cls(int(data["context_size"]), str(data["label"]), float(data["l2"]), data["weights"],
                       int(data["rows"]))
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


__all__ = ["LABELS", "PROBE_FEATURES", "LearnedInputs", "LearnedStop", "StopData", "probe_features"]
