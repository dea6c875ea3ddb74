"""Exploration rules: turn per-arm reward scores into a probability vector.

Every rule goes through :meth:`Exploration.probabilities`, which enforces the
invariant OPE depends on — a finite, non-negative vector summing to 1 — and
calls one private hook. The chosen arm's propensity is read from this vector.

* SquareCB (Foster & Rakhlin 2020, "Beyond UCB", arXiv 2002.04926; VW's
  ``--squarecb``): inverse-gap weighting, p_a = 1 / (K + γ·(r̂* − r̂_a)) for
  a ≠ a*, the rest on a*. γ_t = γ₀ · t^ρ grows with the number of rewards
  seen, so exploration fades as the heads get better. VW defaults to γ₀ = 10,
  ρ = 0.5; we default to γ₀ = 5: on the per-cell test stream
  (tests/bandit/envs.py) γ₀ = 10 locked out the best arm of a cell on 2 of 8
  seeds by 5,000 requests, γ₀ = 5 on none of 10. Gaps are in reward units
  (EM − λ·tokens/scale).
* ε-greedy: ε spread uniformly, 1 − ε on the best.
* Softmax: p ∝ exp(r̂ / τ).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from stopbandit.errors import ConfigError, StopbanditError


class Exploration(ABC):
    """Base: validate and normalise what the hook returns."""

    name: ClassVar[str]

    def probabilities(self, scores: Sequence[float], t: int) -> list[float]:
        """Probability vector (K,) over arms from reward scores (K,) after ``t`` rewards.

        Plain Python floats: for the handful of arms a request has, this is
        several times faster than NumPy's per-call overhead on the serving path.
        """
        p = self._probabilities([float(s) for s in scores], max(int(t), 1))
        total = math.fsum(p)
        if not total > 0 or not all(x >= 0.0 and math.isfinite(x) for x in p):
            raise StopbanditError(f"{self.name} produced an invalid probability vector {p!r}")
        return [x / total for x in p]

    def probabilities_batch(self, scores: np.ndarray, t: int) -> np.ndarray:
        """Row-wise probabilities for an (n, K) score matrix (offline evaluation, sweeps)."""
        return np.asarray([self.probabilities(row, t) for row in np.asarray(scores, dtype=float)])

    @abstractmethod
    def _probabilities(self, scores: list[float], t: int) -> list[float]: ...

    @abstractmethod
    def to_dict(self) -> dict[str, Any]: ...


def _best(scores: list[float]) -> int:
    # ties go to the lowest index; arms are listed most lenient first by convention
    return max(range(len(scores)), key=scores.__getitem__)


@dataclass(frozen=True)
class SquareCB(Exploration):
    gamma_scale: float = 5.0
    gamma_exponent: float = 0.5
    name: ClassVar[str] = "squarecb"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.gamma_scale) and self.gamma_scale > 0):
            raise ConfigError(f"exploration.gamma_scale must be > 0, got {self.gamma_scale!r}")
        if not (math.isfinite(self.gamma_exponent) and 0 <= self.gamma_exponent <= 1):
            raise ConfigError(f"exploration.gamma_exponent must be in [0, 1], got {self.gamma_exponent!r}")

    def _probabilities(self, scores: list[float], t: int) -> list[float]:
        k = len(scores)
        best = _best(scores)
        gamma = self.gamma_scale * t**self.gamma_exponent
        top = scores[best]
        p = [1.0 / (k + gamma * (top - s)) for s in scores]
        p[best] = 0.0
        p[best] = 1.0 - math.fsum(p)
        return p

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "gamma_scale": self.gamma_scale, "gamma_exponent": self.gamma_exponent}


@dataclass(frozen=True)
class EpsilonGreedy(Exploration):
    epsilon: float = 0.05
    name: ClassVar[str] = "epsilon"

    def __post_init__(self) -> None:
        if not (0.0 <= self.epsilon <= 1.0):
            raise ConfigError(f"exploration.epsilon must be in [0, 1], got {self.epsilon!r}")

    def _probabilities(self, scores: list[float], t: int) -> list[float]:
        k = len(scores)
        p = [self.epsilon / k] * k
        p[_best(scores)] += 1.0 - self.epsilon
        return p

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "epsilon": self.epsilon}


@dataclass(frozen=True)
class Softmax(Exploration):
    temperature: float = 0.02
    name: ClassVar[str] = "softmax"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"exploration.temperature must be > 0, got {self.temperature!r}")

    def _probabilities(self, scores: list[float], t: int) -> list[float]:
        top = max(scores)
        return [math.exp((s - top) / self.temperature) for s in scores]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "temperature": self.temperature}


EXPLORATIONS: dict[str, type[Exploration]] = {c.name: c for c in (SquareCB, EpsilonGreedy, Softmax)}


def exploration_from_config(cfg: Mapping[str, Any] | None) -> Exploration:
    """``{"name": "squarecb", ...params}`` → an Exploration; errors name the bad key."""
    if cfg is None:
        return SquareCB()
    cfg = dict(cfg)
    name = cfg.pop("name", "squarecb")
    if name not in EXPLORATIONS:
        raise ConfigError(f"exploration.name must be one of {sorted(EXPLORATIONS)}, got {name!r}")
    cls = EXPLORATIONS[name]
    allowed = {f for f in cls.__dataclass_fields__ if f != "name"}
    unknown = set(cfg) - allowed
    if unknown:
        raise ConfigError(f"exploration {name!r}: unknown parameter(s) {sorted(unknown)}; allowed {sorted(allowed)}")
    for k, v in cfg.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"exploration.{k} must be a number, got {v!r}")
    return cls(**{k: float(v) for k, v in cfg.items()})


__all__ = ["EXPLORATIONS", "EpsilonGreedy", "Exploration", "Softmax", "SquareCB", "exploration_from_config"]
