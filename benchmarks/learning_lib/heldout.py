"""Low-noise learning curves: the value of a learner's current policy on a fixed held-out set.

The online (realised) reward of a window of ``w`` requests is noisy (one
request's reward has a standard deviation near 0.45), and it mixes learning
with exploration. At checkpoints we therefore also evaluate the policy as it
stands on a fixed set of held-out requests (another simulator seed) whose
every arm's outcome is known, exactly, with no sampling:

* ``value`` -- the expected reward of the probability vector the policy would
  serve (exploration included): ``mean_i Σ_a p_a(x_i) · r_a(x_i)``;
* ``greedy`` -- the reward of its top-scoring arm, ``mean_i r_{argmax}(x_i)``.

The same held-out requests serve every learner, checkpoint and seed, so
comparisons between them are paired. Nothing here learns: features are
extracted with the learner's own extractor (its per-domain prior as it stands)
and the policy only predicts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from stopbandit.bandit.policy import Policy
from stopbandit.bandit.vw import shared_line
from stopbandit.features.extract import FeatureExtractor
from stopbandit.sim import SimRequest

from .streams import Stream


@dataclass
class Curve:
    """Held-out values at checkpoints (request counts), arrays of shape (n_checkpoints,)."""

    at: list[int] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    greedy: list[float] = field(default_factory=list)

    def add(self, at: int, value: float, greedy: float) -> None:
        self.at.append(int(at))
        self.value.append(float(value))
        self.greedy.append(float(greedy))


def policy_value(extractor: FeatureExtractor, policy: Policy, held: Stream, lam: float,
                 extra_features: Callable[[SimRequest], dict[str, float]] | None = None) -> tuple[float, float]:
    """(expected reward with exploration, greedy reward) of ``policy`` on ``held`` at λ = ``lam``."""
    r = held.em - lam * held.tokens / held.token_scale
    value = greedy = 0.0
    for i, req in enumerate(held.requests):
        extra = extra_features(req) if extra_features is not None else None
        probs, scores = policy.decide(shared_line(extractor.extract(req.prompt, req.domain, extra)), lam)
        value += float(np.dot(probs, r[i]))
        greedy += float(r[i, int(np.argmax(scores))])
    return value / held.n, greedy / held.n


def arm_values(held: Stream, lam: float) -> np.ndarray:
    """Held-out mean reward of each static arm at λ, shape (K,)."""
    return (held.em - lam * held.tokens / held.token_scale).mean(axis=0)


def oracle_value(held: Stream, lam: float) -> float:
    return float((held.em - lam * held.tokens / held.token_scale).max(axis=1).mean())


__all__ = ["Curve", "arm_values", "oracle_value", "policy_value"]
