"""Calibration of the EM head as a probability: Platt (logistic) recalibration, Brier score, reliability table.

DM and DR read the model's P(EM | x, a) as a probability. An online
logistic regression trained on a sparse binary reward (a click rate of a
few per mille) is far off in level even when it ranks contexts well: DM
then reports the model's level, not the policy's value. The fix is a
two-parameter logistic recalibration fitted on the training part,

    P_cal = sigmoid(a · logit(P) + b),

by Newton's method on the cross-entropy (EM in [0, 1] is the label, so
aggregated rewards are handled as the mean of binary labels). It is stored
in the snapshot's metadata (``em_calibration``) and applied by
:class:`stopbandit.replay.candidates.HeadsModel` to every prediction DM/DR use.

How well a model's P(EM) matches the log is measured on the logged arm of
each event: the Brier score ``mean((P − EM)²)`` and a reliability table (ten
equal-width bins of P: events, mean P, mean EM). :class:`CalibrationAcc`
sums these per chunk and merges exactly, like the estimators' accumulators,
so the figures are the same whatever the number of worker processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from stopbandit import validation
from stopbandit.errors import InputError

BINS = 10
EPS = 1e-6
METHOD = "platt"


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(q) - np.log1p(-q)


def fit_platt(p: np.ndarray, y: np.ndarray, *, iterations: int = 50, ridge: float = 1e-6) -> dict[str, Any]:
    """``{"method": "platt", "a": …, "b": …, "n": …}`` minimising the cross-entropy of sigmoid(a·logit(p) + b) to y.

    Newton's method (IRLS) on two parameters, with a tiny ridge so that a
    log where every prediction is the same still gives a finite slope.
    """
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if p.shape != y.shape or p.ndim != 1 or p.size == 0:
        raise InputError(f"calibration needs equal, non-empty vectors of predictions and outcomes, got {p.shape} "
                         f"and {y.shape}")
    if not (np.isfinite(p).all() and np.isfinite(y).all()) or y.min() < 0.0 or y.max() > 1.0:
        raise InputError("calibration needs finite predictions and outcomes in [0, 1]")
    x = _logit(p)
    design = np.stack([x, np.ones_like(x)], axis=1)
    theta = np.array([1.0, 0.0])
    for _ in range(iterations):
        z = design @ theta
        mu = 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))
        grad = design.T @ (mu - y) + ridge * theta
        w = mu * (1.0 - mu)
        hess = (design * w[:, None]).T @ design + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta = theta - step
        if float(np.abs(step).max()) < 1e-10:
            break
    return {"method": METHOD, "a": float(theta[0]), "b": float(theta[1]), "n": int(p.size)}


def check(calibration: Any) -> dict[str, Any] | None:
    """A stored calibration (snapshot metadata), validated; None when absent."""
    if calibration is None:
        return None
    if not isinstance(calibration, Mapping) or calibration.get("method") != METHOD:
        raise InputError(f"em_calibration must be an object with method {METHOD!r}, got {calibration!r:.120}")
    a, b = calibration.get("a"), calibration.get("b")
    for name, v in (("a", a), ("b", b)):
        validation.real(v, f"em_calibration.{name}")
    return dict(calibration)


def apply(p: np.ndarray, calibration: Mapping[str, Any] | None) -> np.ndarray:
    """``p`` recalibrated (unchanged when ``calibration`` is None)."""
    if calibration is None:
        return p
    z = float(calibration["a"]) * _logit(p) + float(calibration["b"])
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))


@dataclass
class CalibrationAcc:
    """Sums for the Brier score and the reliability table of predictions against outcomes (mergeable)."""

    n: np.ndarray
    sum_p: np.ndarray
    sum_y: np.ndarray
    sq_err: float = 0.0

    @classmethod
    def empty(cls) -> CalibrationAcc:
        return cls(np.zeros(BINS, dtype=np.int64), np.zeros(BINS), np.zeros(BINS))

    @classmethod
    def of(cls, p: np.ndarray, y: np.ndarray) -> CalibrationAcc:
        p = np.asarray(p, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        bins = np.minimum((p * BINS).astype(np.int64), BINS - 1)
        return cls(np.bincount(bins, minlength=BINS).astype(np.int64), np.bincount(bins, p, minlength=BINS),
                   np.bincount(bins, y, minlength=BINS), float(np.sum((p - y) ** 2)))

    def merge(self, other: CalibrationAcc) -> CalibrationAcc:
        return CalibrationAcc(self.n + other.n, self.sum_p + other.sum_p, self.sum_y + other.sum_y,
                              self.sq_err + other.sq_err)

    def report(self) -> dict[str, Any]:
        """``{"events", "brier", "mean_prediction", "mean_em", "reliability": [{bin, events, mean_prediction, mean_em}]}``."""
        total = int(self.n.sum())
        rows = []
        for i in range(BINS):
            k = int(self.n[i])
            rows.append({"bin": [i / BINS, (i + 1) / BINS], "events": k,
                         "mean_prediction": float(self.sum_p[i] / k) if k else None,
                         "mean_em": float(self.sum_y[i] / k) if k else None})
        return {
            "events": total,
            "brier": self.sq_err / total if total else None,
            "mean_prediction": float(self.sum_p.sum() / total) if total else None,
            "mean_em": float(self.sum_y.sum() / total) if total else None,
            "reliability": rows,
        }


def reliability_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """The reliability table as text rows (bins with events only), for the command line."""
    out = []
    for r in report["reliability"]:
        if r["events"]:
            out.append([f"[{r['bin'][0]:.1f}, {r['bin'][1]:.1f})", str(r["events"]), f"{r['mean_prediction']:.4f}",
                        f"{r['mean_em']:.4f}"])
    return out


__all__ = ["BINS", "METHOD", "CalibrationAcc", "apply", "check", "fit_platt", "reliability_rows"]
