"""Off-policy evaluation (OPE): what a candidate stopping policy would have scored on the log.

Every decision in the replay store carries the full logging probability
vector, so the value of any other policy ``π`` can be estimated from the log
without running it. All estimators share one typed input, :class:`LoggedData`,
and one output, :class:`Estimate` (value, confidence interval, effective sample
size, largest importance weight, share of events outside the logging policy's
support, warnings).

Notation (per event ``i`` of ``n``; arms ``k`` of ``K``): ``μ_ik`` logging
probabilities, ``a_i`` the logged arm, ``π_ik`` the candidate's probabilities,
``r_i`` the logged outcome of the chosen metric, ``r̂_ik`` a model's prediction
of it, ``w_i = π_{i,a_i} / μ_{i,a_i}`` the importance weight.

* ``DirectMethod``: ``Σ_k π_ik r̂_ik`` (model only; as biased as the model, and
  its interval ignores that bias).
* ``IPS``: ``w_i r_i`` (Horvitz & Thompson 1952): unbiased on support, high variance.
* ``SNIPS``: ``Σ w_i r_i / Σ w_i`` (Swaminathan & Joachims, NeurIPS 2015):
  bounded by the outcomes, O(1/n) bias.
* ``DoublyRobust``: ``Σ_k π_ik r̂_ik + w_i (r_i − r̂_{i,a_i})`` (Dudík, Langford &
  Li, ICML 2011, arXiv 1103.4601): unbiased with any model.
* ``SwitchDR``: DR whose correction is dropped where ``w_i > τ`` (DM there)
  (Wang, Agarwal & Dudík, ICML 2017, arXiv 1612.01205).
* ``GraphIPS`` / ``GraphDR`` / ``GraphChainDR``: graph feedback, below.

Graph feedback (nested probe traces). A probe trace of a lenient run reveals
the exact outcome of every stricter arm (``stopbandit.bandit.trace``). With
``reveals[j, k]`` = "a run of arm ``j`` reveals arm ``k``" (see
:func:`reveal_matrix`), arm ``k`` is observed at event ``i`` with probability
``q_ik = Σ_j μ_ij reveals[j, k]`` ≥ ``μ_ik``, and

    GraphIPS:  V̂_i = Σ_k π_ik · 1[reveals[a_i, k]] · r_ik / q_ik
    GraphDR:   V̂_i = Σ_k π_ik · (r̂_ik + 1[reveals[a_i, k]] · (r_ik − r̂_ik) / q_ik)

are unbiased (the side-observation weighting of Mannor & Shamir, NeurIPS 2011,
and Alon et al., SIAM J. Comput. 2017, arXiv 1409.8428, applied to evaluation).
Because ``q_ik`` sums the probabilities of every arm at least as lenient as
``k``, the weights of strict arms shrink, and so do the intervals.

``GraphChainDR`` goes further on nested arms. The outcomes of one request
are missing in a *monotone* pattern: whenever arm ``k`` is observed, every
stricter arm is too (the strictest arm on every traced event). So arm ``k``'s
residual can be corrected in steps along its chain of stricter arms
``k = c_0, c_1, …, c_L`` (:func:`reveal_chains`), each step weighted by the
observation probability of its own level, with ``e_ik = r_ik − r̂_ik``:

    GraphChainDR:  V̂_i = Σ_k π_ik · (r̂_ik + Σ_l 1[obs_i c_l] · (e_{i,c_l} − e_{i,c_{l+1}}) / q_{i,c_l})
                   with e_{c_{L+1}} = 0

Unbiased for any model (given the context and every potential outcome the
expectation of each step is ``e_{c_l} − e_{c_{l+1}}``, and the sum telescopes
to ``e_k``): the augmented IPW estimator of monotone coarsening (Robins &
Rotnitzky 1992; Tsiatis 2006, "Semiparametric Theory and Missing Data", ch. 9;
Bang & Robins 2005) with the stricter arms' observed residuals as the
regression at each level. When consecutive arms err together (the same answer
and most of the same tokens), ``e_{c_l} − e_{c_{l+1}}`` is small and so is the
interval; with uncorrelated residuals it can be wider than GraphDR's, so both
are kept. Like GraphDR it is exact-linear in the outcomes (the λ sweep holds)
and uses no fit of its own (chunked and one-shot estimates agree).

Trace-free fallback. An event whose revealed row is all NaN (no probe trace:
an old decoder, an adapter that cannot probe) gets the plain IPS / DR
contribution; the ``fallback_share`` of the estimate reports how many. This is
unbiased as long as whether a trace exists does not depend on the logged arm.
An event whose trace lacks an arm that ``reveals`` says it covers (a partial
trace) also falls back, and the estimate warns: that choice depends on the
logged arm, so it can bias the estimate. Values revealed for arms that
``reveals[a_i]`` does not cover are ignored (their observation probability is
unknown).

Per-event contributions. Every estimator reduces the log to a per-event
numerator ``num_i`` (linear in the outcomes) and denominator ``den_i`` (1 for
all but SNIPS, independent of the outcomes); the value is ``Σ num / Σ den``.
Its CLT interval uses the contributions ``ψ_i = V̂ + (num_i − V̂ den_i) / mean(den)``
(the influence function; ``mean(ψ) = V̂`` exactly, and for linear estimators
``ψ_i = num_i``). Linearity in the outcomes means the reward contributions at any
λ are ``em − λ·tokens/token_scale`` of the EM and token contributions, for SNIPS
too (its denominator does not depend on the metric): :meth:`Estimator.reward_curve`
and :meth:`Estimator.estimate_metrics` reuse one pass.

Streaming. :meth:`Estimator.accumulate` reduces a chunk to an
:class:`Accumulator` (count, means and co-moments of ``num``/``den``, weight
sums, max weight, support counts); accumulators merge exactly (Chan et al.'s
pairwise update) and :meth:`Accumulator.finalize` gives the same estimate as
the one-shot path, so a million events can be evaluated in bounded memory.

>>> import numpy as np
>>> data = LoggedData(
...     actions=np.array([0, 1, 0, 1]),
...     logging_probs=np.full((4, 2), 0.5),
...     candidate_probs=np.tile([1.0, 0.0], (4, 1)),
...     em=np.array([1.0, 0.0, 1.0, 1.0]),
...     tokens=np.array([900.0, 300.0, 1100.0, 400.0]),
... )
>>> est = IPS().estimate(data, metric="em")
>>> est.value, est.max_weight, est.ess
(1.0, 2.0, 2.0)
>>> IPS().estimate(data, metric="reward", lam=0.5, token_scale=1000.0).value
0.5
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np

from stopbandit.errors import ConfigError, InputError

if TYPE_CHECKING:  # pragma: no cover
    from stopbandit.bandit.arms import ArmSet

PROB_TOL = 1e-6
"""Tolerance of a probability row's sum around 1."""

METRICS = ("em", "tokens", "reward")
CI_METHODS = ("normal", "bootstrap")
LOW_ESS_SHARE = 0.1
"""An ESS below this share of the events is reported as a warning."""

_MATCH_TOL = 1e-6


# --------------------------------------------------------------------------- metric


@dataclass(frozen=True, slots=True)
class Metric:
    """Which outcome is evaluated: ``em``, ``tokens`` or ``reward = em − lam·tokens/token_scale``.

    ``lam`` and ``token_scale`` only matter for ``reward`` (they are dropped,
    set to None, for the other two).
    """

    kind: str
    lam: float | None = None
    token_scale: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in METRICS:
            raise ConfigError(f"metric must be one of {list(METRICS)}, got {self.kind!r}")
        if self.kind != "reward":
            object.__setattr__(self, "lam", None)
            object.__setattr__(self, "token_scale", None)
            return
        if self.lam is None:
            raise ConfigError(
                "metric='reward' needs lam (reward = em − lam·tokens/token_scale); "
                "pass lam=..., or use metric='em' / metric='tokens'"
            )
        object.__setattr__(self, "lam", _check_real("lam", self.lam, low=0.0))
        object.__setattr__(
            self, "token_scale", _check_real("token_scale", self.token_scale, low=0.0, low_open=True)
        )

    @classmethod
    def of(cls, metric: str | Metric, lam: float | None = None, token_scale: float = 1000.0) -> Metric:
        if isinstance(metric, Metric):
            return metric
        if not isinstance(metric, str):
            raise ConfigError(f"metric must be one of {list(METRICS)} or a Metric, got {metric!r}")
        return cls(metric, lam, token_scale)

    @property
    def coef(self) -> float:
        """The token coefficient ``lam / token_scale`` (0 unless ``reward``)."""
        return 0.0 if self.kind != "reward" else float(self.lam) / float(self.token_scale)  # type: ignore[arg-type]


def _check_real(name: str, value: object, *, low: float | None = None, low_open: bool = False,
                high: float | None = None, high_open: bool = False) -> float:
    """``value`` as a float, or a ConfigError naming ``name``, the expected range and the value."""
    expected = "a finite number"
    if low is not None and high is not None:
        expected += f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        expected += f" {'>' if low_open else '>='} {low:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be {expected}, got {value!r}")
    v = float(value)
    ok = math.isfinite(v)
    if low is not None:
        ok = ok and (v > low if low_open else v >= low)
    if high is not None:
        ok = ok and (v < high if high_open else v <= high)
    if not ok:
        raise ConfigError(f"{name} must be {expected}, got {value!r}")
    return v


def _check_alpha(alpha: object) -> float:
    return _check_real("alpha", alpha, low=0.0, low_open=True, high=1.0, high_open=True)


# --------------------------------------------------------------------------- input


def _float_array(name: str, value: object, shape: tuple[int, ...], *, allow_nan: bool = False) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64)  # copy: the caller's array stays theirs
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be an array of numbers, got {type(value).__name__}: {exc}") from None
    if arr.shape != shape:
        raise InputError(f"{name} must have shape {shape}, got {arr.shape}")
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        what = "finite or NaN" if allow_nan else "finite"
        raise InputError(f"{name} must be {what}; {name}{list(idx)} = {float(arr[idx])!r}")
    arr.setflags(write=False)
    return arr


def _check_range(name: str, arr: np.ndarray, low: float | None, high: float | None) -> None:
    with np.errstate(invalid="ignore"):
        bad = np.zeros(arr.shape, dtype=bool)
        if low is not None:
            bad |= arr < low
        if high is not None:
            bad |= arr > high
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise InputError(f"{name} must lie in [{lo}, {hi}]; {name}{list(idx)} = {float(arr[idx])!r}")


def _prob_matrix(name: str, value: object, shape: tuple[int, int]) -> np.ndarray:
    arr = _float_array(name, value, shape)
    _check_range(name, arr, 0.0, 1.0)
    sums = arr.sum(axis=1)
    off = np.abs(sums - 1.0) > PROB_TOL
    if off.any():
        i = int(np.argmax(off))
        raise InputError(f"{name}[{i}] must sum to 1 (± {PROB_TOL:g}), sums to {float(sums[i])!r}")
    return arr


@dataclass(frozen=True, slots=True, eq=False)
class LoggedData:
    """The log an estimator reads, validated once (arrays are copied and made read-only).

    Shapes: ``n`` events, ``K`` arms (arm order = action index everywhere).

    ``actions`` (n,) int: logged arm. ``logging_probs`` (n, K): the full logging
    probability vector of each decision (propensity = ``logging_probs[i, actions[i]]``,
    which must be > 0). ``candidate_probs`` (n, K): the evaluated policy's
    probabilities. ``em`` (n,) in [0, 1] and ``tokens`` (n,) >= 0: logged outcomes.
    ``em_hat`` / ``tokens_hat`` (n, K), optional: model predictions per arm, for
    DM / DR / Switch-DR / GraphDR (finite; not clipped here).
    ``revealed_em`` / ``revealed_tokens`` (n, K), optional and together: outcomes
    revealed by the probe trace, NaN where unknown (same NaN pattern in both).
    A row with any value is a traced event; its logged arm's entry must then
    equal ``em`` / ``tokens``. An all-NaN row is an untraced event.
    ``learnable`` (n,) bool, optional: the store's learnable flag (False for
    defaulted or late rewards). Estimators evaluate every event with the reward
    that was recorded; select with ``data.take(data.learnable)`` to restrict.
    """

    actions: np.ndarray
    logging_probs: np.ndarray
    candidate_probs: np.ndarray
    em: np.ndarray
    tokens: np.ndarray
    em_hat: np.ndarray | None = None
    tokens_hat: np.ndarray | None = None
    revealed_em: np.ndarray | None = None
    revealed_tokens: np.ndarray | None = None
    learnable: np.ndarray | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        actions = self._actions(self.actions)
        n = actions.shape[0]
        try:
            mu_shape = np.shape(self.logging_probs)
        except (TypeError, ValueError):  # ragged input
            mu_shape = ()
        if len(mu_shape) != 2 or mu_shape[1] < 1:
            raise InputError(f"logging_probs must be a 2-D array (n, K), got shape {mu_shape}")
        k = int(mu_shape[1])
        mu = _prob_matrix("logging_probs", self.logging_probs, (n, k))
        if (actions >= k).any():
            i = int(np.argmax(actions >= k))
            raise InputError(f"actions[{i}] = {int(actions[i])} is out of range for K={k} arms (0..{k - 1})")
        prop = mu[np.arange(n), actions]
        if (prop <= 0).any():
            i = int(np.argmax(prop <= 0))
            raise InputError(
                f"logging_probs[{i}, actions[{i}]={int(actions[i])}] = 0: a logged arm must have had "
                "positive logging probability"
            )
        set_(self, "actions", actions)
        set_(self, "logging_probs", mu)
        set_(self, "candidate_probs", _prob_matrix("candidate_probs", self.candidate_probs, (n, k)))
        em = _float_array("em", self.em, (n,))
        _check_range("em", em, 0.0, 1.0)
        tokens = _float_array("tokens", self.tokens, (n,))
        _check_range("tokens", tokens, 0.0, None)
        set_(self, "em", em)
        set_(self, "tokens", tokens)
        for name in ("em_hat", "tokens_hat"):
            value = getattr(self, name)
            if value is not None:
                set_(self, name, _float_array(name, value, (n, k)))
        self._revealed(n, k)
        if self.learnable is not None:
            lr = np.array(self.learnable)
            if lr.shape != (n,) or lr.dtype != np.bool_:
                raise InputError(f"learnable must be a bool array of shape ({n},), got {lr.dtype} {lr.shape}")
            lr.setflags(write=False)
            set_(self, "learnable", lr)

    @staticmethod
    def _actions(value: object) -> np.ndarray:
        try:
            raw = np.array(value)
        except (TypeError, ValueError) as exc:
            raise InputError(f"actions must be a 1-D integer array, got {type(value).__name__}: {exc}") from None
        if raw.ndim != 1:
            raise InputError(f"actions must be a 1-D integer array (n,), got shape {raw.shape}")
        if raw.shape[0] == 0:
            raise InputError("actions is empty: LoggedData needs at least one event")
        if raw.dtype == np.bool_ or raw.dtype.kind not in "iuf":
            raise InputError(f"actions must be integers, got dtype {raw.dtype}")
        if raw.dtype.kind == "f":
            bad = ~np.isfinite(raw) | (raw != np.round(raw))
            if bad.any():
                i = int(np.argmax(bad))
                raise InputError(f"actions must be integers; actions[{i}] = {raw[i].item()!r}")
        actions = raw.astype(np.int64)
        if (actions < 0).any():
            i = int(np.argmax(actions < 0))
            raise InputError(f"actions[{i}] = {int(actions[i])} is negative; arms are indexed from 0")
        actions.setflags(write=False)
        return actions

    def _revealed(self, n: int, k: int) -> None:
        rem, rtok = self.revealed_em, self.revealed_tokens
        if rem is None and rtok is None:
            return
        if rem is None or rtok is None:
            missing = "revealed_em" if rem is None else "revealed_tokens"
            raise InputError(f"revealed_em and revealed_tokens come together; {missing} is missing")
        rem = _float_array("revealed_em", rem, (n, k), allow_nan=True)
        rtok = _float_array("revealed_tokens", rtok, (n, k), allow_nan=True)
        _check_range("revealed_em", rem, 0.0, 1.0)
        _check_range("revealed_tokens", rtok, 0.0, None)
        nan_em, nan_tok = np.isnan(rem), np.isnan(rtok)
        if (nan_em != nan_tok).any():
            i, j = (int(x) for x in np.argwhere(nan_em != nan_tok)[0])
            raise InputError(
                f"revealed_em and revealed_tokens must be unknown (NaN) at the same places; "
                f"at [{i}, {j}] revealed_em = {float(rem[i, j])!r}, revealed_tokens = {float(rtok[i, j])!r}"
            )
        traced = ~nan_em.all(axis=1)
        rows = np.arange(n)
        own_em, own_tok = rem[rows, self.actions], rtok[rows, self.actions]
        no_own = traced & np.isnan(own_em)
        if no_own.any():
            i = int(np.argmax(no_own))
            raise InputError(
                f"revealed_em[{i}] has values but its logged arm {int(self.actions[i])} is NaN: a traced "
                "event must carry its own outcome (or be all NaN when it has no trace)"
            )
        with np.errstate(invalid="ignore"):
            bad = traced & ~(
                np.isclose(own_em, self.em, rtol=0, atol=_MATCH_TOL)
                & np.isclose(own_tok, self.tokens, rtol=_MATCH_TOL, atol=_MATCH_TOL)
            )
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(
                f"revealed outcome of the logged arm disagrees with the log at event {i}: "
                f"revealed (em={float(own_em[i])!r}, tokens={float(own_tok[i])!r}) vs logged "
                f"(em={float(self.em[i])!r}, tokens={float(self.tokens[i])!r})"
            )
        object.__setattr__(self, "revealed_em", rem)
        object.__setattr__(self, "revealed_tokens", rtok)

    # ----------------------------------------------------------------- views

    @property
    def n(self) -> int:
        return int(self.actions.shape[0])

    @property
    def n_arms(self) -> int:
        return int(self.logging_probs.shape[1])

    @property
    def propensities(self) -> np.ndarray:
        """(n,) logging probability of the logged arm."""
        return self.logging_probs[np.arange(self.n), self.actions]

    @property
    def traced(self) -> np.ndarray:
        """(n,) bool: events with a probe trace (any revealed value)."""
        if self.revealed_em is None:
            return np.zeros(self.n, dtype=bool)
        return ~np.isnan(self.revealed_em).all(axis=1)

    def __len__(self) -> int:
        return self.n

    def take(self, index: slice | np.ndarray | Sequence[int]) -> LoggedData:
        """The events selected by ``index`` (slice, integer indices or a bool mask), revalidated."""
        if isinstance(index, slice):
            sel: Any = index
        else:
            sel = np.asarray(index)
            if sel.dtype != np.bool_ and sel.dtype.kind not in "iu":
                raise InputError(f"take() needs a slice, integer indices or a bool mask, got dtype {sel.dtype}")
        kw = {f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[sel]) for f in fields(self)}
        return LoggedData(**kw)

    def chunks(self, size: int) -> Iterable[LoggedData]:
        """Consecutive chunks of at most ``size`` events (for :meth:`Estimator.accumulate`)."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"chunk size must be a positive integer, got {size!r}")
        for start in range(0, self.n, size):
            yield self.take(slice(start, start + size))

    def with_candidate(self, candidate_probs: object) -> LoggedData:
        """The same log with another candidate policy (only the new probabilities are validated)."""
        probs = _prob_matrix("candidate_probs", candidate_probs, (self.n, self.n_arms))
        new = object.__new__(LoggedData)
        for f in fields(self):
            object.__setattr__(new, f.name, getattr(self, f.name))
        object.__setattr__(new, "candidate_probs", probs)
        return new


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
        alpha = _check_alpha(alpha)
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
    if acc.estimator == DirectMethod.name:
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


# --------------------------------------------------------------------------- estimators


@dataclass(frozen=True, slots=True)
class _View:
    r: np.ndarray
    rhat: np.ndarray | None
    revealed: np.ndarray | None


def _view(data: LoggedData, kind: str, coef: float = 0.0) -> _View:
    if kind == "em":
        return _View(data.em, data.em_hat, data.revealed_em)
    if kind == "tokens":
        return _View(data.tokens, data.tokens_hat, data.revealed_tokens)
    rhat = None
    if data.em_hat is not None and data.tokens_hat is not None:
        rhat = data.em_hat - coef * data.tokens_hat
    rev = None
    if data.revealed_em is not None:
        rev = data.revealed_em - coef * data.revealed_tokens  # type: ignore[operator]
    return _View(data.em - coef * data.tokens, rhat, rev)


def _ips_weights(data: LoggedData) -> np.ndarray:
    rows = np.arange(data.n)
    return data.candidate_probs[rows, data.actions] / data.logging_probs[rows, data.actions]


def _unsupported(pi: np.ndarray, denom: np.ndarray) -> np.ndarray:
    return ((pi > 0) & (denom <= 0)).any(axis=1)


class Estimator(ABC):
    """Base of every estimator: the public methods validate, one private hook computes.

    A subclass sets ``name`` and ``needs_model`` and implements
    :meth:`_parts`, which must return a numerator linear in the outcome arrays
    of the view and a denominator / weights independent of them (the λ sweep
    relies on it).
    """

    name: ClassVar[str] = "?"
    needs_model: ClassVar[bool] = False

    # ----------------------------------------------------------------- public

    def estimate(
        self,
        data: LoggedData,
        metric: str | Metric = "reward",
        lam: float | None = None,
        token_scale: float = 1000.0,
        alpha: float = 0.05,
        *,
        ci_method: str = "normal",
        n_boot: int = 1000,
        seed: int | None = 0,
    ) -> Estimate:
        """Estimate the candidate's mean ``metric`` per event, with a ``1 − alpha`` interval.

        ``ci_method="bootstrap"`` resamples events ``n_boot`` times (seeded by
        ``seed``) and recomputes ``Σnum/Σden``: the percentile interval.
        """
        m = Metric.of(metric, lam, token_scale)
        alpha = _check_alpha(alpha)
        if ci_method not in CI_METHODS:
            raise ConfigError(f"ci_method must be one of {list(CI_METHODS)}, got {ci_method!r}")
        parts = self._checked_parts(data, m)
        est = Accumulator._from_parts(self, m, parts).finalize(alpha)
        if ci_method == "bootstrap":
            if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 10:
                raise ConfigError(f"n_boot must be an integer >= 10, got {n_boot!r}")
            low, high = _bootstrap(parts, alpha, n_boot, seed)
            est = replace(est, ci_low=low, ci_high=high, ci_method="bootstrap")
        return est

    def contributions(
        self, data: LoggedData, metric: str | Metric = "reward", lam: float | None = None,
        token_scale: float = 1000.0,
    ) -> np.ndarray:
        """(n,) per-event contributions ``ψ_i``: their mean is the estimate, their spread its interval."""
        m = Metric.of(metric, lam, token_scale)
        return _psi(self._checked_parts(data, m))

    def accumulate(
        self, chunk: LoggedData, metric: str | Metric = "reward", lam: float | None = None,
        token_scale: float = 1000.0,
    ) -> Accumulator:
        """Reduce one chunk of the log to mergeable statistics (see :class:`Accumulator`)."""
        m = Metric.of(metric, lam, token_scale)
        return Accumulator._from_parts(self, m, self._checked_parts(chunk, m))

    def estimate_metrics(
        self, data: LoggedData, lam: float, token_scale: float = 1000.0, alpha: float = 0.05
    ) -> dict[str, Estimate]:
        """``{"em", "tokens", "reward"}`` estimates from one pass (reward = em − lam·tokens/scale)."""
        m = Metric("reward", lam, token_scale)
        alpha = _check_alpha(alpha)
        em, tok = self._checked_parts(data, Metric("em")), self._checked_parts(data, Metric("tokens"))
        return {
            "em": Accumulator._from_parts(self, Metric("em"), em).finalize(alpha),
            "tokens": Accumulator._from_parts(self, Metric("tokens"), tok).finalize(alpha),
            "reward": Accumulator._from_parts(self, m, em.combine(tok, m.coef)).finalize(alpha),
        }

    def reward_curve(
        self, data: LoggedData, lams: Sequence[float], token_scale: float = 1000.0, alpha: float = 0.05
    ) -> list[Estimate]:
        """Reward estimates of this one candidate at every λ, from one EM and one token pass."""
        alpha = _check_alpha(alpha)
        metrics = [Metric("reward", lam, token_scale) for lam in lams]
        em, tok = self._checked_parts(data, Metric("em")), self._checked_parts(data, Metric("tokens"))
        return [Accumulator._from_parts(self, m, em.combine(tok, m.coef)).finalize(alpha) for m in metrics]

    # ----------------------------------------------------------------- hooks

    def _checked_parts(self, data: LoggedData, metric: Metric) -> _Parts:
        if not isinstance(data, LoggedData):
            raise InputError(f"{self.name} needs a LoggedData, got {type(data).__name__}")
        view = _view(data, metric.kind, metric.coef)
        if self.needs_model and view.rhat is None:
            missing = [f for f in ("em_hat", "tokens_hat") if getattr(data, f) is None
                       and (metric.kind == "reward" or f.startswith(metric.kind))]
            raise InputError(
                f"{self.name} needs model predictions {' and '.join(missing)} (n, K) for metric "
                f"{metric.kind!r}; the LoggedData has none"
            )
        return self._parts(data, view)

    @abstractmethod
    def _parts(self, data: LoggedData, view: _View) -> _Parts:
        """Per-event numerator (and denominator, weights, flags) for outcomes ``view``."""

    def _plain(self, data: LoggedData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w = _ips_weights(data)
        no = np.zeros(data.n, dtype=bool)
        return w, _unsupported(data.candidate_probs, data.logging_probs), no


def _psi(parts: _Parts) -> np.ndarray:
    num = parts.num
    if parts.den is None:
        return num.copy()
    d_mean = parts.den.mean()
    if d_mean == 0:
        return np.full_like(num, np.nan)
    value = num.sum() / parts.den.sum()
    return value + (num - value * parts.den) / d_mean


def _bootstrap(parts: _Parts, alpha: float, n_boot: int, seed: int | None) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    num, den = parts.num, parts.den
    n = num.shape[0]
    block = max(1, min(n_boot, 2_000_000 // max(n, 1)))
    values = []
    done = 0
    while done < n_boot:
        b = min(block, n_boot - done)
        idx = rng.integers(0, n, size=(b, n))
        s_num = num[idx].sum(axis=1)
        s_den = np.full(b, float(n)) if den is None else den[idx].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            values.append(np.where(s_den != 0, s_num / np.where(s_den != 0, s_den, 1), np.nan))
        done += b
    v = np.concatenate(values)
    if np.isnan(v).all():
        return math.nan, math.nan
    low, high = np.nanquantile(v, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


@dataclass(frozen=True)
class DirectMethod(Estimator):
    """DM: ``V̂_i = Σ_k π_ik r̂_ik``. Low variance; as biased as the model (Dudík et al. 2011).

    Its interval covers sampling noise only, never the model's bias (the estimate says so).
    """

    name: ClassVar[str] = "DM"
    needs_model: ClassVar[bool] = True

    def _parts(self, data: LoggedData, view: _View) -> _Parts:
        w, unsup, no = self._plain(data)
        num = (data.candidate_probs * cast(np.ndarray, view.rhat)).sum(axis=1)
        return _Parts(num, None, w, unsup, no, no)


@dataclass(frozen=True)
class IPS(Estimator):
    """IPS (Horvitz–Thompson): ``V̂_i = w_i r_i`` with ``w_i = π(a_i|x_i)/μ(a_i|x_i)``. Unbiased on support."""

    name: ClassVar[str] = "IPS"

    def _parts(self, data: LoggedData, view: _View) -> _Parts:
        w, unsup, no = self._plain(data)
        return _Parts(w * view.r, None, w, unsup, no, no)


@dataclass(frozen=True)
class SNIPS(Estimator):
    """Self-normalised IPS: ``Σ w_i r_i / Σ w_i`` (Swaminathan & Joachims, NeurIPS 2015).

    The interval uses the delta method (contributions ``V̂ + w_i (r_i − V̂)/mean(w)``).
    """

    name: ClassVar[str] = "SNIPS"

    def _parts(self, data: LoggedData, view: _View) -> _Parts:
        w, unsup, no = self._plain(data)
        return _Parts(w * view.r, w, w, unsup, no, no)


def _dr_num(data: LoggedData, view: _View, corr_w: np.ndarray) -> np.ndarray:
    rows = np.arange(data.n)
    rhat = cast(np.ndarray, view.rhat)  # present: needs_model is checked before _parts
    dm = (data.candidate_probs * rhat).sum(axis=1)
    return dm + corr_w * (view.r - rhat[rows, data.actions])


@dataclass(frozen=True)
class DoublyRobust(Estimator):
    """DR: ``V̂_i = Σ_k π_ik r̂_ik + w_i (r_i − r̂_{i,a_i})`` (Dudík, Langford & Li, ICML 2011).

    Unbiased whatever the model (on support); the model only changes the variance.
    """

    name: ClassVar[str] = "DR"
    needs_model: ClassVar[bool] = True

    def _parts(self, data: LoggedData, view: _View) -> _Parts:
        w, unsup, no = self._plain(data)
        return _Parts(_dr_num(data, view, w), None, w, unsup, no, no)


@dataclass(frozen=True)
class SwitchDR(Estimator):
    """Switch-DR (Wang, Agarwal & Dudík, ICML 2017): DR where ``w_i ≤ tau``, DM where ``w_i > tau``.

    ``V̂_i = Σ_k π_ik r̂_ik + 1[w_i ≤ τ] · w_i (r_i − r̂_{i,a_i})``. Dropping the large-weight
    corrections trades a bias (the model's error on those arms) for variance.
    ``tau = inf`` is DR. The default ``tau = 10`` keeps every correction whose
    logging probability is at least a tenth of the candidate's.
    """

    tau: float = 10.0
    name: ClassVar[str] = "SwitchDR"
    needs_model: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) or math.isnan(self.tau) \
                or self.tau <= 0:
            raise ConfigError(f"SwitchDR tau must be a number > 0 (inf = plain DR), got {self.tau!r}")

    def _parts(self, data: LoggedData, view: _View) -> _Parts:
        w, unsup, no = self._plain(data)
        return _Parts(_dr_num(data, view, np.where(w <= self.tau, w, 0.0)), None, w, unsup, no, no)


def _check_reveals(value: object) -> tuple[tuple[bool, ...], ...]:
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:  # pragma: no cover - numpy accepts nearly anything
        raise ConfigError(f"reveals must be a (K, K) boolean matrix: {exc}") from None
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 1:
        raise ConfigError(f"reveals must be a square (K, K) boolean matrix, got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if arr.dtype.kind not in "iuf" or not np.isin(arr, (0, 1)).all():
            raise ConfigError(f"reveals must hold booleans (or 0/1), got dtype {arr.dtype}")
        arr = arr.astype(bool)
    if not arr.diagonal().all():
        k = int(np.argmin(arr.diagonal()))
        raise ConfigError(f"reveals[{k}, {k}] must be True: a run of an arm always reveals its own outcome")
    return tuple(tuple(bool(x) for x in row) for row in arr)


def reveal_matrix(arms: ArmSet) -> np.ndarray:
    """(K, K) bool, ``[j, k]`` = a probe trace of arm ``j`` reveals arm ``k`` (``ArmSet.revealed_by``)."""
    k = len(arms)
    out = np.zeros((k, k), dtype=bool)
    for j in range(k):
        out[j, arms.revealed_by(j)] = True
    return out


@dataclass(frozen=True)
class _GraphBase(Estimator):
    """The graph-feedback estimators' shared setting (``reveals``, validated once) and observation weights."""

    reveals: tuple[tuple[bool, ...], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "reveals", _check_reveals(self.reveals))

    def _graph(self, data: LoggedData, view: _View):
        R = np.array(self.reveals, dtype=bool)
        if R.shape[0] != data.n_arms:
            raise InputError(f"{self.name}: reveals is {R.shape[0]}x{R.shape[0]} but the log has K={data.n_arms} arms")
        w_plain, unsup_plain, _ = self._plain(data)
        q = data.logging_probs @ R.astype(np.float64)  # (n, K): P(arm k observed | x_i)
        obs = R[data.actions]  # (n, K): arm k observed at event i (by the structure)
        traced = data.traced
        if view.revealed is not None:
            partial = traced & (obs & np.isnan(view.revealed)).any(axis=1)
        else:
            partial = np.zeros(data.n, dtype=bool)
        use = traced & ~partial
        fallback = ~use
        pi = data.candidate_probs
        ratio = np.zeros_like(pi)
        np.divide(pi * obs, q, out=ratio, where=q > 0)  # obs ⇒ q ≥ μ(a_i) > 0
        rev = np.zeros_like(pi) if view.revealed is None else np.where(obs, np.nan_to_num(view.revealed), 0.0)
        w = np.where(use, ratio.sum(axis=1), w_plain)
        unsup = np.where(use, _unsupported(pi, q), unsup_plain)
        return use, fallback, partial, ratio, rev, w, unsup


@dataclass(frozen=True)
class GraphIPS(_GraphBase):
    """Graph-feedback IPS: ``V̂_i = Σ_k π_ik · 1[reveals[a_i,k]] · r_ik / q_ik``, ``q_ik = Σ_j μ_ij reveals[j,k]``.

    Events without a (complete) trace get the plain IPS contribution ``w_i r_i``.
    ``reveals`` is a (K, K) boolean matrix, see :func:`reveal_matrix`.
    """

    name: ClassVar[str] = "GraphIPS"

    def _parts(self, data: LoggedData, view: _View) -> _Parts:
        use, fallback, partial, ratio, rev, w, unsup = self._graph(data, view)
        w_plain = _ips_weights(data)
        num = np.where(use, (ratio * rev).sum(axis=1), w_plain * view.r)
        return _Parts(num, None, w, unsup, fallback, partial)


@dataclass(frozen=True)
class GraphDR(_GraphBase):
    """Graph-feedback DR: ``V̂_i = Σ_k π_ik (r̂_ik + 1[reveals[a_i,k]] (r_ik − r̂_ik) / q_ik)``.

    Events without a (complete) trace get the plain DR contribution.
    """

    name: ClassVar[str] = "GraphDR"
    needs_model: ClassVar[bool] = True

    def _parts(self, data: LoggedData, view: _View) -> _Parts:
        use, fallback, partial, ratio, rev, w, unsup = self._graph(data, view)
        rhat = cast(np.ndarray, view.rhat)  # present: needs_model is checked before _parts
        dm = (data.candidate_probs * rhat).sum(axis=1)
        graph = dm + (ratio * (rev - rhat)).sum(axis=1)
        num = np.where(use, graph, _dr_num(data, view, _ips_weights(data)))
        return _Parts(num, None, w, unsup, fallback, partial)


def reveal_chains(reveals: object) -> tuple[tuple[int, ...], ...]:
    """For each arm ``k``: ``(k, c_1, …, c_L)``, each arm observed whenever the one before it is.

    ``c_{l+1}`` is, among the arms observed on every event that observes
    ``c_l`` (every arm revealing ``c_l`` reveals it), the one observed least
    often (the most lenient of them: the smallest step); ties go to the lowest
    index. For the default arms (lenient → strict) arm ``k``'s chain is
    ``k, k+1, …, K−1``.
    """
    R = np.array(_check_reveals(reveals), dtype=bool)
    k_arms = R.shape[0]
    observers = [frozenset(np.flatnonzero(R[:, m]).tolist()) for m in range(k_arms)]
    chains = []
    for k in range(k_arms):
        chain = [k]
        while True:
            cur = chain[-1]
            cands = [m for m in range(k_arms) if m not in chain and observers[cur] <= observers[m]]
            if not cands:
                break
            chain.append(min(cands, key=lambda m: (len(observers[m]), m)))
        chains.append(tuple(chain))
    return tuple(chains)


@dataclass(frozen=True)
class GraphChainDR(_GraphBase):
    """Graph-feedback DR corrected in steps along each arm's chain of stricter arms (module docstring).

    ``V̂_i = Σ_k π_ik (r̂_ik + Σ_l 1[obs_i c_l] (e_{i,c_l} − e_{i,c_{l+1}}) / q_{i,c_l})``, ``e = r − r̂``.
    Events without a (complete) trace get the plain DR contribution.
    """

    name: ClassVar[str] = "GraphChainDR"
    needs_model: ClassVar[bool] = True

    def _parts(self, data: LoggedData, view: _View) -> _Parts:
        use, fallback, partial, ratio, rev, w, unsup = self._graph(data, view)
        R = np.array(self.reveals, dtype=bool)
        q = data.logging_probs @ R.astype(np.float64)
        obs = R[data.actions]  # (n, K)
        rhat = cast(np.ndarray, view.rhat)
        resid = np.where(obs, rev - rhat, 0.0)  # e_ik where observed (rev is 0 elsewhere)
        inv_q = np.zeros_like(q)
        np.divide(obs, q, out=inv_q, where=obs & (q > 0))  # obs ⇒ q ≥ μ(a_i) > 0
        pi = data.candidate_probs
        graph = (pi * rhat).sum(axis=1)
        for k, chain in enumerate(reveal_chains(self.reveals)):
            if not pi[:, k].any():
                continue
            corr = np.zeros(data.n)
            for level, c in enumerate(chain):
                nxt = resid[:, chain[level + 1]] if level + 1 < len(chain) else 0.0
                corr += inv_q[:, c] * (resid[:, c] - nxt)
            graph += pi[:, k] * corr
        num = np.where(use, graph, _dr_num(data, view, _ips_weights(data)))
        return _Parts(num, None, w, unsup, fallback, partial)


ESTIMATORS: dict[str, type[Estimator]] = {
    "dm": DirectMethod,
    "ips": IPS,
    "snips": SNIPS,
    "dr": DoublyRobust,
    "switch-dr": SwitchDR,
    "graph-ips": GraphIPS,
    "graph-dr": GraphDR,
    "graph-chain-dr": GraphChainDR,
}
"""Estimators by the names the CLI accepts (``--estimators ips,snips,dr,dm``)."""


def make_estimator(name: str, *, reveals: object = None) -> Estimator:
    """The estimator called ``name`` (see :data:`ESTIMATORS`); graph estimators need ``reveals``."""
    key = name.strip().lower() if isinstance(name, str) else name
    cls = ESTIMATORS.get(key)  # type: ignore[arg-type]
    if cls is None:
        raise ConfigError(f"unknown estimator {name!r}; known estimators: {sorted(ESTIMATORS)}")
    if issubclass(cls, _GraphBase):
        if reveals is None:
            raise ConfigError(f"estimator {name!r} needs reveals (a (K, K) boolean matrix, see reveal_matrix)")
        return cls(reveals)  # type: ignore[call-arg]
    return cls()


__all__ = [
    "ESTIMATORS",
    "IPS",
    "SNIPS",
    "Accumulator",
    "DirectMethod",
    "DoublyRobust",
    "Estimate",
    "Estimator",
    "GraphChainDR",
    "GraphDR",
    "GraphIPS",
    "LoggedData",
    "Metric",
    "SwitchDR",
    "make_estimator",
    "reveal_chains",
    "reveal_matrix",
]
