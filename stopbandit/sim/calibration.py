"""Calibration figures: static arms versus the per-request oracle.

For a batch of requests and a set of arms this measures what the module
docstring of :mod:`stopbandit.sim` quotes and the tests assert:

* per static arm: mean EM, mean tokens (probe tokens included), token savings
  ``1 − tokens/tokens_ref`` and EM loss ``em_ref − em`` against the most lenient
  arm (``full`` in the default set), and EM by difficulty tercile (where the
  loss concentrates);
* per λ: the per-request oracle that picks, with hindsight,
  ``argmax_a EM_a − λ·tokens_a/token_scale`` (the reward of the design document),
  with its EM, tokens, savings and mean reward next to the best static arm's.
  This is the ceiling a contextual policy over these arms can approach
  (cf. ThinkBrake's hindsight stop, arXiv 2510.00546).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stopbandit import validation
from stopbandit.bandit.arms import Arm, ArmSet
from stopbandit.errors import ConfigError, InputError
from stopbandit.sim.answers import REFERENCE
from stopbandit.sim.outcome import outcome_table
from stopbandit.sim.request import SimRequest, answer_codes


@dataclass(frozen=True, slots=True)
class ArmFigures:
    """One static arm over the batch. ``em_by_tercile``: EM on the easiest, middle, hardest third."""

    name: str
    em: float
    tokens: float
    savings: float
    em_loss: float
    em_by_tercile: tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class OracleFigures:
    """The per-request hindsight oracle at one λ, next to the best static arm at that λ."""

    lam: float
    em: float
    tokens: float
    savings: float
    reward: float
    best_static: str
    best_static_reward: float
    choice_shares: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Calibration:
    """Figures of one batch; ``reference`` names the arm savings and losses are measured against."""

    n_requests: int
    reference: str
    mean_think_len: float
    arms: tuple[ArmFigures, ...]
    oracles: tuple[OracleFigures, ...]

    def arm(self, name: str) -> ArmFigures:
        for a in self.arms:
            if a.name == name:
                return a
        raise ConfigError(f"no arm named {name!r} in this calibration; arms: {[a.name for a in self.arms]}")

    def format(self) -> str:
        """A plain-text table (what the module docstring quotes)."""
        lines = [
            f"{self.n_requests} requests, mean full reasoning {self.mean_think_len:.0f} tokens; "
            f"savings and loss vs {self.reference!r}",
            f"{'arm':<12}{'EM':>7}{'tokens':>9}{'saved':>8}{'EM loss':>9}   EM by difficulty tercile",
        ]
        for a in self.arms:
            terc = " / ".join(f"{v:.3f}" for v in a.em_by_tercile)
            lines.append(
                f"{a.name:<12}{a.em:>7.3f}{a.tokens:>9.1f}{a.savings:>8.1%}{a.em_loss * 100:>8.1f}p   {terc}"
            )
        for o in self.oracles:
            lines.append(
                f"oracle λ={o.lam:<5g} EM {o.em:.3f} tokens {o.tokens:.1f} saved {o.savings:.1%} "
                f"reward {o.reward:.3f} (best static {o.best_static!r} {o.best_static_reward:.3f})"
            )
        return "\n".join(lines)


def calibrate(
    requests: Sequence[SimRequest],
    arms: Sequence[Arm] | ArmSet | None = None,
    lambdas: Sequence[float] = (0.2, 0.3),
    token_scale: float = 1000.0,
) -> Calibration:
    """Measure static arms and the per-request oracle on ``requests`` (default arms when None)."""
    arm_set = ArmSet.of(arms)
    reqs = list(requests)
    if len(reqs) < 3:
        raise InputError(f"requests: need at least 3 to measure terciles, got {len(reqs)}")
    if not (isinstance(token_scale, (int, float)) and token_scale > 0):
        raise ConfigError(f"token_scale must be > 0, got {token_scale!r}")
    for lam in lambdas:
        validation.within(lam, "lambdas: each λ", low=0, numpy=True)
    table = outcome_table(reqs, arm_set)
    em, tokens = table.em, table.tokens.astype(float)
    ref = arm_set.most_conservative()
    ref_em, ref_tokens = em[:, ref].mean(), tokens[:, ref].mean()
    difficulty = np.array([r.difficulty for r in reqs])
    tercile = np.digitize(difficulty, np.quantile(difficulty, [1 / 3, 2 / 3]))
    arm_figs = tuple(
        ArmFigures(
            name=a.name,
            em=float(em[:, j].mean()),
            tokens=float(tokens[:, j].mean()),
            savings=float(1.0 - tokens[:, j].mean() / ref_tokens),
            em_loss=float(ref_em - em[:, j].mean()),
            em_by_tercile=tuple(float(em[tercile == t, j].mean()) for t in range(3)),  # type: ignore[arg-type]
        )
        for j, a in enumerate(arm_set)
    )
    rows = np.arange(len(reqs))
    oracles = []
    for lam in lambdas:
        reward = em - lam * tokens / token_scale
        best = reward.argmax(axis=1)
        static = reward.mean(axis=0)
        oracles.append(
            OracleFigures(
                lam=float(lam),
                em=float(em[rows, best].mean()),
                tokens=float(tokens[rows, best].mean()),
                savings=float(1.0 - tokens[rows, best].mean() / ref_tokens),
                reward=float(reward[rows, best].mean()),
                best_static=arm_set[int(static.argmax())].name,
                best_static_reward=float(static.max()),
                choice_shares=tuple(float(v) for v in np.bincount(best, minlength=len(arm_set)) / len(reqs)),
            )
        )
    return Calibration(
        n_requests=len(reqs),
        reference=arm_set[ref].name,
        mean_think_len=float(np.mean([r.think_len for r in reqs])),
        arms=arm_figs,
        oracles=tuple(oracles),
    )


@dataclass(frozen=True, slots=True)
class Ceilings:
    """The figures the literature publishes, measured on a batch (EM in points, savings of reasoning tokens).

    ``deer_*``: a DEER threshold (``deer_threshold``) against full reasoning.
    ``hindsight_*``: the per-request hindsight stop (ThinkBrake's oracle): at the
    first probe whose trial answer is correct, else at the first probe (every
    answer of that request is wrong, so the earliest stop is the best one).
    """

    full_em: float
    deer_threshold: float
    deer_gain: float
    deer_savings: float
    hindsight_gain: float
    hindsight_savings: float


def published_ceilings(requests: Sequence[SimRequest], deer_threshold: float = 0.95) -> Ceilings:
    """Measure :class:`Ceilings` on ``requests`` (reasoning tokens only, as DEER and ThinkBrake count them)."""
    reqs = list(requests)
    if not reqs:
        raise InputError("requests: need at least 1 request, got 0")
    arms = (Arm("full", 1.01), Arm("deer", deer_threshold))
    table = outcome_table(reqs, arms)
    full_em, full_think = float(table.em[:, 0].mean()), float(table.think_tokens[:, 0].mean())
    hind_em = np.empty(len(reqs))
    hind_think = np.empty(len(reqs))
    for i, r in enumerate(reqs):
        offs = r.probe_offsets
        codes = answer_codes(offs, r.settle_offset, r.relapse_offset, r.solvable, r.segment_answer[1 : r.n_probes + 1])
        right = np.flatnonzero(codes == REFERENCE)
        if right.size:
            hind_em[i], hind_think[i] = 1.0, float(offs[right[0]])
        elif offs.size:
            hind_em[i], hind_think[i] = 0.0, float(offs[0])
        else:
            hind_em[i], hind_think[i] = float(table.em[i, 0]), float(r.think_len)
    return Ceilings(
        full_em=full_em,
        deer_threshold=float(deer_threshold),
        deer_gain=float(table.em[:, 1].mean() - full_em) * 100,
        deer_savings=float(1.0 - table.think_tokens[:, 1].mean() / full_think),
        hindsight_gain=float(hind_em.mean() - full_em) * 100,
        hindsight_savings=float(1.0 - hind_think.mean() / full_think),
    )


__all__ = ["ArmFigures", "Calibration", "Ceilings", "OracleFigures", "calibrate", "published_ceilings"]
