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
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar, cast

import numpy as np

from stopbandit import validation
from stopbandit.errors import ConfigError, InputError

if TYPE_CHECKING:  # pragma: no cover
    from stopbandit.bandit.arms import ArmSet

from stopbandit.replay.accumulator import DM_NAME, Accumulator, Estimate, _Parts
from stopbandit.replay.logged_data import CI_METHODS, LoggedData, Metric

_MATCH_TOL = 1e-6


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
        alpha = validation.alpha(alpha)
        if ci_method not in CI_METHODS:
            raise ConfigError(f"ci_method must be one of {list(CI_METHODS)}, got {ci_method!r}")
        parts = self._checked_parts(data, m)
        est = Accumulator._from_parts(self, m, parts).finalize(alpha)
        if ci_method == "bootstrap":
            validation.within(n_boot, "n_boot", low=10, integral=True)
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
        alpha = validation.alpha(alpha)
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
        alpha = validation.alpha(alpha)
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

    name: ClassVar[str] = DM_NAME
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
