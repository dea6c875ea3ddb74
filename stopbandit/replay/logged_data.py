"""The input of off-policy evaluation: :class:`LoggedData` (validated arrays) and the :class:`Metric` estimated.

Every estimator of :mod:`stopbandit.replay.ope` takes the same typed input:
arrays of logged actions ``(n,)``, logging and candidate probabilities
``(n, K)``, observed EM and tokens ``(n,)``, optional model predictions
``(n, K)`` and the outcomes a probe trace revealed ``(n, K)`` (NaN where
unknown). The checks here run once per chunk, so the estimators trust them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from stopbandit import validation
from stopbandit.errors import ConfigError, InputError

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
        object.__setattr__(self, "lam", validation.within(self.lam, "lam", low=0.0, numpy=True))
        object.__setattr__(
            self, "token_scale", validation.within(self.token_scale, "token_scale", low=0.0, low_open=True, numpy=True)
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
        validation.positive_ints("chunk ", size=size)
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


__all__ = ["CI_METHODS", "LOW_ESS_SHARE", "METRICS", "PROB_TOL", "LoggedData", "Metric"]
