"""Seeded request streams with every arm's outcome, and the λ in force per request.

Every policy of one seed plays exactly the same requests (paired
comparison): the stream is drawn once from ``Simulator(config, seed)`` and the
outcome of every arm on every request is computed once with
:func:`stopbandit.sim.outcome_table` -- the oracle, the static arms and the
hindsight baselines read it; the learners run :func:`stopbandit.sim.run` on
the arm they chose (the same numbers, plus the probe trace).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from stopbandit.bandit.arms import DEFAULT_ARMS, ArmSet
from stopbandit.sim import DomainShift, SimConfig, SimRequest, Simulator, outcome_table

ARMS = ArmSet(DEFAULT_ARMS)
TOKEN_SCALE = 1000.0


@dataclass(frozen=True)
class Shift:
    """A picklable description of a :class:`DomainShift` (whose mix is a read-only mapping)."""

    at: int
    mix: tuple[tuple[str, float], ...] | None = None
    difficulty_shift: float | None = None

    @classmethod
    def of(cls, at: int, mix: Mapping[str, float] | None = None, difficulty_shift: float | None = None) -> Shift:
        return cls(at, None if mix is None else tuple(sorted(mix.items())), difficulty_shift)

    def to_domain_shift(self) -> DomainShift:
        return DomainShift(self.at, None if self.mix is None else dict(self.mix), self.difficulty_shift)


@dataclass(frozen=True)
class Scenario:
    """What a run plays: ``n`` requests at λ = ``lam``, with optional drift.

    ``lam_changes``: (request index, new λ) pairs, applied with ``set_lambda``
    just before that request. ``shifts``: simulator domain shifts.
    """

    name: str
    n: int
    lam: float
    lam_changes: tuple[tuple[int, float], ...] = ()
    shifts: tuple[Shift, ...] = ()

    def sim_config(self) -> SimConfig:
        return SimConfig(schedule=tuple(s.to_domain_shift() for s in self.shifts))

    def events(self) -> list[tuple[int, str]]:
        """(request index, label) of every drift event, in order."""
        out = [(s.at, "domain shift") for s in self.shifts]
        out += [(at, f"λ → {v:g}") for at, v in self.lam_changes]
        return sorted(out)


@dataclass
class Stream:
    """One seed's requests and the outcome of every arm on each.

    ``em``/``tokens``: shape (n, K) in ``ARMS`` order; ``lam``: shape (n,), the
    λ in force at each request.
    """

    seed: int
    requests: list[SimRequest]
    em: np.ndarray
    tokens: np.ndarray
    lam: np.ndarray
    lam_changes: Mapping[int, float] = field(default_factory=dict)
    token_scale: float = TOKEN_SCALE
    shift_at: tuple[int, ...] = ()

    def phases(self) -> list[tuple[int, int]]:
        """[lo, hi) of each stretch between drift events (domain shifts and λ changes)."""
        cuts = sorted({0, self.n, *(c for c in (*self.lam_changes, *self.shift_at) if 0 < c < self.n)})
        return list(zip(cuts, cuts[1:]))

    def best_static_per_phase(self) -> np.ndarray:
        """Arm index per request: the static arm with the best mean reward over its phase (hindsight)."""
        r = self.rewards()
        out = np.empty(self.n, np.int64)
        for lo, hi in self.phases():
            out[lo:hi] = int(r[lo:hi].mean(axis=0).argmax())
        return out

    @property
    def n(self) -> int:
        return len(self.requests)

    def rewards(self) -> np.ndarray:
        """Reward of every arm on every request, shape (n, K): EM − λ·tokens/token_scale."""
        return self.em - self.lam[:, None] * self.tokens / self.token_scale

    def oracle_arms(self) -> np.ndarray:
        """Per-request hindsight-best arm, shape (n,); ties go to the most lenient (lowest index)."""
        return self.rewards().argmax(axis=1)

    def head(self, n: int) -> Stream:
        """The first ``n`` requests (λ changes past ``n`` dropped)."""
        return Stream(self.seed, self.requests[:n], self.em[:n], self.tokens[:n], self.lam[:n],
                      {k: v for k, v in self.lam_changes.items() if k < n}, self.token_scale,
                      tuple(a for a in self.shift_at if a < n))


def lam_schedule(n: int, lam: float, changes: Sequence[tuple[int, float]]) -> np.ndarray:
    """λ in force at each of ``n`` requests, shape (n,)."""
    out = np.full(n, float(lam))
    for at, value in sorted(changes):
        out[at:] = float(value)
    return out


def make_stream(scenario: Scenario, seed: int) -> Stream:
    """Draw ``scenario.n`` requests of simulator seed ``seed`` and tabulate every arm's outcome."""
    requests = Simulator(scenario.sim_config(), seed=seed).take(scenario.n)
    table = outcome_table(requests, ARMS)
    return Stream(
        seed=seed,
        requests=requests,
        em=table.em,
        tokens=table.tokens,
        lam=lam_schedule(scenario.n, scenario.lam, scenario.lam_changes),
        lam_changes=dict(scenario.lam_changes),
        shift_at=tuple(s.at for s in scenario.shifts),
    )


__all__ = ["ARMS", "TOKEN_SCALE", "Scenario", "Shift", "Stream", "lam_schedule", "make_stream"]
