"""Candidate library changes, tried from the benchmark without touching ``stopbandit/``.

* :class:`NestedSquareCB` -- SquareCB that knows which arms a run of the
  greedy arm reveals (every stricter arm, through its probe trace). Those arms
  are observed on every request anyway, so exploring them buys nothing:
  ``mode="graph"`` gives them no exploration mass and keeps inverse-gap
  weighting on the arms the greedy run does *not* reveal (the more lenient
  ones) -- the idea of SquareCB on feedback graphs (Zhang et al. 2023,
  "Practical Contextual Bandits with Feedback Graphs", arXiv 2302.08631).
  ``mode="lenient"`` goes further: all the mass SquareCB would spend exploring
  moves to the most lenient arm, whose trace reveals every arm (the
  "explore lenient arms when traces are on" rule). With ``mode="graph"`` and
  no traces this is plain SquareCB.
* :func:`latent_difficulty` -- the simulator's true latent difficulty as a
  caller feature (``features=`` of ``Selector.choose``). Not deployable: it
  measures what a perfect difficulty estimate would be worth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from stopbandit.bandit.arms import ArmSet
from stopbandit.bandit.exploration import Exploration
from stopbandit.errors import ConfigError
from stopbandit.sim import SimRequest

MODES = ("graph", "lenient")


@dataclass(frozen=True)
class NestedSquareCB(Exploration):
    """Inverse-gap weighting over the arms the greedy arm's trace does not reveal.

    ``reveals[i]``: indices of the arms a run of arm ``i`` reveals (itself
    included), as :meth:`ArmSet.revealed_by` gives them.
    """

    reveals: tuple[tuple[int, ...], ...]
    lenient: int
    gamma_scale: float = 5.0
    gamma_exponent: float = 0.5
    mode: str = "graph"
    name: ClassVar[str] = "nested-squarecb"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"exploration.mode must be one of {list(MODES)}, got {self.mode!r}")
        if not (math.isfinite(self.gamma_scale) and self.gamma_scale > 0):
            raise ConfigError(f"exploration.gamma_scale must be > 0, got {self.gamma_scale!r}")
        if not (math.isfinite(self.gamma_exponent) and 0 <= self.gamma_exponent <= 1):
            raise ConfigError(f"exploration.gamma_exponent must be in [0, 1], got {self.gamma_exponent!r}")

    @classmethod
    def for_arms(cls, arms: ArmSet, **kwargs: Any) -> NestedSquareCB:
        return cls(tuple(tuple(arms.revealed_by(i)) for i in range(len(arms))), arms.most_conservative(), **kwargs)

    def _probabilities(self, scores: list[float], t: int) -> list[float]:
        k = len(scores)
        best = max(range(k), key=scores.__getitem__)  # ties: lowest index, as SquareCB
        gamma = self.gamma_scale * t**self.gamma_exponent
        top = scores[best]
        free = set(self.reveals[best])  # observed whenever the greedy arm runs
        p = [0.0 if a in free else 1.0 / (k + gamma * (top - s)) for a, s in enumerate(scores)]
        if self.mode == "lenient":
            mass = math.fsum(p)
            p = [0.0] * k
            p[self.lenient] = mass
        p[best] = 0.0
        p[best] = 1.0 - math.fsum(p)
        return p

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, "gamma_scale": self.gamma_scale,
                "gamma_exponent": self.gamma_exponent}


def latent_difficulty(request: SimRequest) -> dict[str, float]:
    """The simulator's ground-truth difficulty as an extra feature (an upper bound, not deployable)."""
    return {"xdiff": round(request.difficulty, 4)}


__all__ = ["MODES", "NestedSquareCB", "latent_difficulty"]
