"""Candidate library changes, tried from the benchmark without touching ``stopbandit/``.

* :class:`LenientSquareCB` -- the literal "explore lenient arms when traces are
  on" rule: every bit of mass SquareCB would spend exploring goes to the most
  lenient arm, whose trace reveals every arm. Measured against the library's
  graph-aware SquareCB (``SquareCB(nested=True)``, which explores only the
  arms the greedy arm's trace does not reveal, by inverse gap -- it started
  here as ``NestedSquareCB(mode="graph")`` and now lives in
  ``stopbandit/bandit/exploration.py``). Kept as a prototype because it did not
  beat the graph rule (``docs/benchmarks.md``).
* :func:`latent_difficulty` -- the simulator's true latent difficulty as a
  caller feature (``features=`` of ``Selector.choose``). Not deployable: it
  measures what a perfect difficulty estimate would be worth.
* :class:`FastHeadsPolicy` (``policy="heads-lr0.5"``) -- the heads at VW's
  default learning rate (``-l 0.5``), the library default before issue 9
  (``-l 0.25`` now; this was ``heads-lr0.25`` while the halved rate was the
  prototype), and :class:`LoggedWeightHeadsPolicy`
  (``policy="heads-lw3"``) -- the logged arm's update weighted 3, revealed
  arms 1 (issue 9: what keeps the nested learners below the full-information
  heads). :func:`register_policies` adds them to the library's ``POLICIES``
  registry under their names (the suite calls it before it opens a Selector
  on one), so the real Selector can run them; prototypes only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from collections.abc import Mapping

from stopbandit.bandit.arms import ArmSet
from stopbandit.bandit.exploration import Exploration, TraceShare, check_gamma
from stopbandit.bandit.policy import EM_ARGS, POLICIES, TOKEN_ARGS, HeadsPolicy
from stopbandit.sim import SimRequest


@dataclass(frozen=True)
class LenientSquareCB(Exploration):
    """SquareCB whose exploration mass, over the arms the greedy arm's trace does not reveal, all goes
    to the most lenient arm.

    ``reveals[i]``: indices of the arms a run of arm ``i`` reveals (itself
    included), as :meth:`ArmSet.revealed_by` gives them.
    """

    reveals: tuple[tuple[int, ...], ...]
    lenient: int
    gamma_scale: float = 5.0
    gamma_exponent: float = 0.5
    name: ClassVar[str] = "lenient-squarecb"

    def __post_init__(self) -> None:
        check_gamma(self.gamma_scale, self.gamma_exponent)

    @classmethod
    def of_arms(cls, arms: ArmSet, **kwargs: Any) -> LenientSquareCB:
        return cls(arms.reveals(), arms.most_conservative(), **kwargs)

    def _probabilities(self, scores: list[float], t: int, traces: TraceShare | None) -> list[float]:
        k = len(scores)
        best = max(range(k), key=scores.__getitem__)  # ties: lowest index, as SquareCB
        gamma = self.gamma_scale * t**self.gamma_exponent
        top = scores[best]
        free = set(self.reveals[best])  # observed whenever the greedy arm runs
        mass = math.fsum(0.0 if a in free else 1.0 / (k + gamma * (top - s)) for a, s in enumerate(scores))
        p = [0.0] * k
        p[self.lenient] = mass
        p[best] = 0.0
        p[best] = 1.0 - math.fsum(p)
        return p

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "gamma_scale": self.gamma_scale, "gamma_exponent": self.gamma_exponent}


def latent_difficulty(request: SimRequest) -> dict[str, float]:
    """The simulator's ground-truth difficulty as an extra feature (an upper bound, not deployable)."""
    return {"xdiff": round(request.difficulty, 4)}


def with_learning_rate(args: str, rate: float) -> str:
    """``args`` with its ``-l`` value replaced by ``rate`` (appended if it has none)."""
    kept = re.sub(r"\s-l\s+\S+", "", f" {args}").strip()
    return f"{kept} -l {rate}"


class FastHeadsPolicy(HeadsPolicy):
    """The heads at VW's default learning rate (0.5): the library before the halved rate became the default."""

    name = "heads-lr0.5"  # type: ignore[assignment]

    def __init__(self, arms: ArmSet, exploration: Exploration, token_scale: float,
                 blobs: Mapping[str, bytes] | None = None, args: Mapping[str, str] | None = None) -> None:
        super().__init__(arms, exploration, token_scale, blobs,
                         args or {"em": with_learning_rate(EM_ARGS, 0.5),
                                  "tokens": with_learning_rate(TOKEN_ARGS, 0.5)})


class LoggedWeightHeadsPolicy(HeadsPolicy):
    """Nested feedback with the logged arm's update weighted 3 and revealed arms 1."""

    name = "heads-lw3"  # type: ignore[assignment]
    logged_weight: float = 3.0

    def learn_revealed(self, shared: str, outcomes: Mapping[int, tuple[float, int]], logged: int,
                       prob: float, lam: float, *, weights: Mapping[int, float] | None = None) -> None:
        w = {a: (self.logged_weight if a == logged else 1.0) for a in outcomes}
        super().learn_revealed(shared, outcomes, logged, prob, lam, weights=w)


PROTOTYPE_POLICIES: dict[str, type[HeadsPolicy]] = {c.name: c for c in (FastHeadsPolicy, LoggedWeightHeadsPolicy)}


def register_policies() -> None:
    """Make the prototype policies known to ``Selector`` / ``make_policy`` in this process (idempotent)."""
    for name, cls in PROTOTYPE_POLICIES.items():
        POLICIES.setdefault(name, cls)


__all__ = ["FastHeadsPolicy", "LenientSquareCB", "LoggedWeightHeadsPolicy", "PROTOTYPE_POLICIES",
           "latent_difficulty", "register_policies", "with_learning_rate"]
