"""The output of off-policy evaluation: per-event contributions reduced to mergeable accumulators, then estimates.

An estimator reduces a chunk of :class:`~stopbandit.replay.logged_data.LoggedData`
to an :class:`Accumulator` (sums of the per-event contributions and of their
squares, plus the diagnostics); accumulators merge exactly, so a streaming,
multi-process or distributed pass all reduce to the same merge, and
:meth:`Accumulator.finalize` turns one into an :class:`Estimate` (value,
interval, effective sample size, weights, warnings).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from stopbandit import validation
from stopbandit.errors import ConfigError, InputError

from stopbandit.replay.logged_data import LOW_ESS_SHARE, Metric

if TYPE_CHECKING:  # pragma: no cover
    from stopbandit.replay.ope import Estimator

DM_NAME = "DM"
"""The direct method's name (:class:`stopbandit.replay.ope.DirectMethod`), whose interval ignores model bias."""

# --------------------------------------------------------------------------- output


@dataclass(frozen=True, slots=True)
class Estimate:
    """One estimate of a candidate policy's mean ``metric`` per event.

    ``ci_low``/``ci_high``: the ``1 − alpha`` interval (``ci_method``: ``normal``,
    the CLT on per-event contributions, or ``bootstrap``, percentile over
    resampled events). ``ess``: effective sample size ``(Σw)²/Σw²`` of the
    importance weights (for graph estimators the per-event weight
    ``Σ_k π_ik·1[revealed]/q_ik``; for DM, the IPS weights, as a diagnostic of
    the distance between the policies). ``unsupported_share``: share of events
    where the candidate puts mass on an arm the logging policy could not
    observe. ``fallback_share``: share of events a graph estimator evaluated
    without a trace (plain IPS/DR). ``warnings``: human-readable problems,
    empty when there are none.
    """

    value: float
    ci_low: float
    ci_high: float
    ci_method: str
    alpha: float
    std_err: float
    n: int
    ess: float
    max_weight: float
    unsupported_share: float
    estimator: str
    metric: str
    lam: float | None = None
    token_scale: float | None = None
    fallback_share: float = 0.0
    warnings: tuple[str, ...] = ()

    @property
    def ci(self) -> tuple[float, float]:
        return (self.ci_low, self.ci_high)

    @property
    def width(self) -> float:
        return self.ci_high - self.ci_low

    def covers(self, truth: float) -> bool:
        return bool(self.ci_low <= truth <= self.ci_high)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite floats become None)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def summary(self) -> str:
        """One line for people: ``DR reward = 0.5120 [0.4900, 0.5340] ...``."""
        level = f"{100 * (1 - self.alpha):g}%"
        metric = self.metric if self.lam is None else f"reward(λ={self.lam:g}, scale={self.token_scale:g})"
        return (
            f"{self.estimator} {metric} = {self.value:.4f} [{self.ci_low:.4f}, {self.ci_high:.4f}] "
            f"({level} {self.ci_method}, n={self.n}, ESS={self.ess:.1f}, max w={self.max_weight:.3g})"
        )


@dataclass(frozen=True, slots=True)
class _Parts:
    """Per-event pieces of an estimate: value = Σ num / Σ den (den None = all ones)."""

    num: np.ndarray
    den: np.ndarray | None
    weights: np.ndarray
    unsupported: np.ndarray
    fallback: np.ndarray
    partial: np.ndarray

    def combine(self, other: _Parts, coef: float) -> _Parts:
        """``self − coef · other`` (same event, same weights): the reward from EM and tokens."""
        return _Parts(self.num - coef * other.num, self.den, self.weights, self.unsupported,
                      self.fallback, self.partial)


# --------------------------------------------------------------------------- accumulator


@dataclass(frozen=True, slots=True)
class Accumulator:
    """Mergeable sufficient statistics of an estimate (bounded memory, exact merges).

    Holds the count, the means of ``num`` and ``den`` and their co-moments
    (``Σ(num−mean)²`` etc., merged with the pairwise update of Chan, Golub &
    LeVeque 1979, numerically safer than raw sums of squares), the sums of the
    weights and of their squares, the largest weight and the support counts.
    ``spec`` is the estimator's repr (its settings): only equal ones merge.
    """

    estimator: str
    metric: Metric
    n: int = 0
    mean_num: float = 0.0
    mean_den: float = 0.0
    m2_num: float = 0.0
    m2_cross: float = 0.0
    m2_den: float = 0.0
    sum_w: float = 0.0
    sum_w2: float = 0.0
    max_w: float = 0.0
    n_unsupported: int = 0
    n_fallback: int = 0
    n_partial: int = 0
    spec: str = ""

    @classmethod
    def _from_parts(cls, estimator: Estimator, metric: Metric, parts: _Parts) -> Accumulator:
        num = parts.num
        n = int(num.shape[0])
        den = np.ones(n) if parts.den is None else parts.den
        mn, md = float(num.mean()), float(den.mean())
        dn, dd = num - mn, den - md
        w = parts.weights
        return cls(
            estimator.name, metric, n, mn, md,
            float(dn @ dn), float(dn @ dd), float(dd @ dd),
            float(w.sum()), float(w @ w), float(w.max()),
            int(parts.unsupported.sum()), int(parts.fallback.sum()), int(parts.partial.sum()),
            repr(estimator),
        )

    def merge(self, other: Accumulator) -> Accumulator:
        """The statistics of both chunks together (order does not matter)."""
        if not isinstance(other, Accumulator):
            raise InputError(f"can only merge another Accumulator, got {type(other).__name__}")
        if (self.estimator, self.metric) != (other.estimator, other.metric) or (
            self.spec and other.spec and self.spec != other.spec
        ):
            raise ConfigError(
                f"cannot merge accumulators of different estimates: {self.spec or self.estimator}/{self.metric} "
                f"vs {other.spec or other.estimator}/{other.metric}"
            )
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        f = self.n * other.n / n
        d_num = other.mean_num - self.mean_num
        d_den = other.mean_den - self.mean_den
        return Accumulator(
            self.estimator, self.metric, n,
            self.mean_num + d_num * other.n / n,
            self.mean_den + d_den * other.n / n,
            self.m2_num + other.m2_num + d_num * d_num * f,
            self.m2_cross + other.m2_cross + d_num * d_den * f,
            self.m2_den + other.m2_den + d_den * d_den * f,
            self.sum_w + other.sum_w, self.sum_w2 + other.sum_w2, max(self.max_w, other.max_w),
            self.n_unsupported + other.n_unsupported, self.n_fallback + other.n_fallback,
            self.n_partial + other.n_partial, self.spec or other.spec,
        )

    @staticmethod
    def merge_all(accumulators: Iterable[Accumulator]) -> Accumulator:
        items = list(accumulators)
        if not items:
            raise InputError("merge_all needs at least one accumulator")
        out = items[0]
        for acc in items[1:]:
            out = out.merge(acc)
        return out

    def finalize(self, alpha: float = 0.05) -> Estimate:
        """The estimate with a normal (CLT) interval at level ``1 − alpha``."""
        alpha = validation.alpha(alpha)
        if self.n == 0:
            raise InputError("cannot finalize an empty accumulator (no events)")
        warnings: list[str] = []
        n = self.n
        if self.mean_den == 0:
            value = se = math.nan
            warnings.append(
                f"{self.estimator}: the candidate puts no probability on any logged arm "
                "(all importance weights are 0), so the self-normalised estimate is undefined"
            )
        else:
            value = self.mean_num / self.mean_den
            if n < 2:
                se = math.inf
                warnings.append(f"only {n} event: no confidence interval")
            else:
                ss = self.m2_num - 2 * value * self.m2_cross + value * value * self.m2_den
                var_psi = max(ss, 0.0) / ((n - 1) * self.mean_den**2)
                se = math.sqrt(var_psi / n)
        z = _normal_quantile(1 - alpha / 2)
        low, high = value - z * se, value + z * se
        if math.isnan(value):
            low = high = math.nan
        ess = self.sum_w**2 / self.sum_w2 if self.sum_w2 > 0 else 0.0
        warnings.extend(_support_warnings(self, ess))
        return Estimate(
            value=float(value), ci_low=float(low), ci_high=float(high), ci_method="normal",
            alpha=alpha, std_err=float(se), n=n, ess=float(ess), max_weight=float(self.max_w),
            unsupported_share=self.n_unsupported / n, estimator=self.estimator,
            metric=self.metric.kind, lam=self.metric.lam, token_scale=self.metric.token_scale,
            fallback_share=self.n_fallback / n, warnings=tuple(warnings),
        )


def clip_interval(metric: str, low: float, high: float) -> tuple[float, float]:
    """An EM interval clipped to [0, 1], where every policy's mean EM lies (the estimate itself is left as is:
    IPS can leave [0, 1] on few events, and that is information); other metrics unchanged. Reports use it;
    the estimators return the plain CLT/bootstrap interval."""
    if metric != "em" or math.isnan(low) or math.isnan(high):
        return low, high
    return min(max(low, 0.0), 1.0), min(max(high, 0.0), 1.0)


def _normal_quantile(q: float) -> float:
    """The standard normal's ``q`` quantile (``z`` of a two-sided interval).

    scipy is imported here, not at the top: importing it took about a second
    of every start that imports the estimators and never builds an interval
    (``stopbandit --help`` listing the replay group did).
    """
    from scipy import stats

    return float(stats.norm.ppf(q))


def _support_warnings(acc: Accumulator, ess: float) -> list[str]:
    out = []
    n = acc.n
    if acc.n_unsupported:
        out.append(
            f"UNSUPPORTED: in {acc.n_unsupported} of {n} events ({100 * acc.n_unsupported / n:.1f}%) the "
            "candidate puts probability on arms the logging policy never plays (probability 0); "
            f"{acc.estimator} cannot see their outcomes there: IPS/SNIPS leave them out, DM/DR rely on "
            "the model alone, so the estimate is biased"
        )
    if acc.n_partial:
        out.append(
            f"PARTIAL TRACES: {acc.n_partial} of {n} traced events lack an arm their trace should reveal; "
            f"{acc.estimator} used the plain (trace-free) contribution for them, which can bias the estimate"
        )
    if acc.estimator == DM_NAME:
        out.append(
            "MODEL ONLY: the DM interval reflects sampling noise of the model's predictions, not the "
            "model's bias; compare with DR before trusting it"
        )
    if 0 < ess < LOW_ESS_SHARE * n:
        out.append(
            f"LOW ESS: effective sample size {ess:.1f} is below {100 * LOW_ESS_SHARE:g}% of the {n} events "
            f"(max weight {acc.max_w:.3g}): the candidate is far from the logging policy, expect wide or "
            "undercovering intervals"
        )
    return out


__all__ = ["DM_NAME", "Accumulator", "Estimate", "clip_interval"]
