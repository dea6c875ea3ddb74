"""Conservative exploration: never give up more served reward than the operator allows.

The operator names a **baseline** (the fixed arm served today, e.g.
``"careful"``) and a **loss budget**: ``max_loss`` reward units per request on
average, and/or ``max_loss_fraction`` of the baseline's own cumulative
reward. In the manner of conservative contextual bandits (Wu et al. 2016,
"Conservative bandits"; Kazerouni et al. 2017, "Conservative contextual linear
bandits"), the rule keeps a **high-confidence lower bound** ``LB`` on
``Σ_t (r_served,t − r_baseline,t)`` over the settled requests and lets a
request explore only while

    LB − (charges of decisions not yet rewarded) − charge(this request) ≥ −budget_t,
    budget_t = max_loss · t + max_loss_fraction · R̂_baseline,t

Otherwise it serves the greedy arm when that alone fits the budget, else the
baseline (whose charge is 0: the baseline never loses against itself).

**The lower bound.** A request's difference ``d = r_served − r_baseline`` is
known *exactly* when the served arm is the baseline (``d = 0``) or, with probe
traces, when the served arm is at least as lenient as the baseline: its trace
reveals the baseline's outcome. When the served arm is stricter and hit
(EM = 1), ``d ≥ 0`` holds deterministically (the baseline runs at least as many
tokens and earns at most EM 1), and 0 is booked. Only a stricter arm's miss is
estimated: ``d̂ = r_served − r̂_baseline(x) − bias``, where ``r̂_baseline(x)`` is
the policy's score of the baseline at decision time and ``bias`` the mean
residual ``r_baseline − r̂_baseline`` measured on the requests where the
baseline was revealed. Those estimated terms carry a confidence width
``z·(sd·√n_est + n_est·sd/√n_res)`` (noise of the sum, and uncertainty of the
bias); before :data:`MIN_RESIDUALS` residuals exist, a miss books the
deterministic worst case ``−EM_baseline ≥ −1``. The residuals transferring from
revealed to unrevealed requests is the one modelling assumption; everything
else is exact or a deterministic bound. That assumption fails on the
simulator: the greedy arm is chosen where the heads overestimate its
advantage, so the bound comes out optimistic, and the budget then holds over
the run but not in every 1,000-request window (``benchmarks/conservative.py``
prints the bound next to the realized sum; docs/benchmarks.md).

**Charges.** Before the outcome is known, a candidate distribution ``q`` is
charged ``Σ_a q_a · (max(ŝ_b − ŝ_a, 0) + margin_a)`` over the non-baseline
arms (``ŝ`` the policy's scores, ``margin_a = z·sd_a`` the spread of arm
``a``'s residuals, 1 before residuals exist); a
decision's charge is held until its reward settles it. A realized outcome can
still fall below its charge: the bound then absorbs it, and exploration stops
until the budget has grown back, so the bound overshoots ``−budget`` by at
most the losses of the decisions in flight (one request's worth, at most 1
reward unit each, when rewards arrive before the next decision).

**Cheap exploration first.** When the budget covers only part of the
exploration the policy asks for, exploration mass is kept on arms in order of
*revealed outcomes per unit of charge*: with probe traces a run of arm ``a``
reveals ``|revealed_by(a)|`` arms, so exploring upwards (more lenient arms)
buys information about every stricter arm at once, and an arm at least as
lenient as the baseline also settles its own cost exactly. The remaining mass
goes to the greedy arm if it fits, else to the baseline.

**Shadow mode** is the zero-budget end of this dial: with ``max_loss = 0``
and ``max_loss_fraction = 0`` nothing can ever be earned against the baseline
(every other arm carries a positive charge), so the baseline is served on
every request, exactly as in shadow mode, while the policy still learns from
every outcome the baseline's probe trace reveals (every stricter arm). Raising
the budget buys exploration, cheapest first; an unset baseline is today's
unconstrained exploration.

**Propensities stay exact.** :meth:`ConservativeBudget.shape` returns the
distribution that is actually sampled and logged, so off-policy estimators see
the probabilities served.

The settings are frozen (:class:`ConservativeConfig`, part of the Selector's
config); the running sums are state (:class:`ConservativeBudget`) owned by one
Selector.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stopbandit import validation
from stopbandit.errors import ConfigError

MIN_RESIDUALS = 30
"""Revealed baseline outcomes needed before estimated differences replace the worst case."""
MAX_HELD = 1_000_000
"""Decisions whose charge is held until their reward (the oldest are released beyond it)."""
CONSERVATIVE_KEYS = ("baseline", "max_loss", "max_loss_fraction", "confidence")
"""Keys of ``[exploration]`` that configure the conservative rule (the rest configure the exploration rule)."""


@dataclass(frozen=True)
class ConservativeConfig:
    """``[exploration] baseline / max_loss / max_loss_fraction / confidence``; off while ``baseline`` is None.

    ``max_loss``: reward units per request on average the operator accepts to
    give up against the baseline; ``max_loss_fraction``: a share of the
    baseline's estimated cumulative reward; the budget is their sum.
    ``confidence``: of the lower bound (``z`` from it).
    """

    baseline: str | None = None
    max_loss: float = 0.0
    max_loss_fraction: float = 0.0
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.baseline is not None and (not isinstance(self.baseline, str) or not self.baseline):
            raise ConfigError(f"exploration.baseline must be an arm name, got {self.baseline!r}")
        for name, low, high in (("max_loss", 0.0, 10.0), ("max_loss_fraction", 0.0, 1.0), ("confidence", 0.5, 0.999999)):
            object.__setattr__(self, name, validation.within(getattr(self, name), f"exploration.{name}", low=low,
                                                             high=high, expected="a number {range}"))
        if self.baseline is None and (self.max_loss or self.max_loss_fraction):
            raise ConfigError("exploration.max_loss / max_loss_fraction need exploration.baseline (the arm the "
                              "budget is measured against), got no baseline")

    @property
    def enabled(self) -> bool:
        return self.baseline is not None

    @property
    def z(self) -> float:
        """One-sided normal quantile of ``confidence``."""
        from statistics import NormalDist

        return NormalDist().inv_cdf(self.confidence)

    def to_dict(self) -> dict[str, Any]:
        if self.baseline is None:
            return {}
        return {"baseline": self.baseline, "max_loss": self.max_loss, "max_loss_fraction": self.max_loss_fraction,
                "confidence": self.confidence}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ConservativeConfig:
        unknown = set(data) - set(CONSERVATIVE_KEYS)
        if unknown:
            raise ConfigError(f"exploration: unknown conservative key(s) {sorted(map(str, unknown))}; "
                              f"known: {list(CONSERVATIVE_KEYS)}")
        return cls(**{str(k): v for k, v in data.items()})


@dataclass(frozen=True)
class BudgetState:
    """What ``health()`` and the metrics report (reward units)."""

    baseline: str
    budget: float  # allowed cumulative loss so far (max_loss·t + fraction·R̂_baseline)
    spent: float  # max(0, −LB): the loss the lower bound cannot rule out
    left: float  # budget + LB − held charges
    lower_bound: float  # LB of Σ (served − baseline) over settled requests
    held: float  # charges of decisions not rewarded yet
    settled: int
    exact: int  # settled with the baseline's outcome known (or bounded deterministically)
    explored: int  # decisions served the policy's full exploration distribution
    restricted: int  # decisions whose exploration the budget cut down
    baseline_served: int  # decisions where the baseline was the arm served


class _Running:
    """Welford mean/variance."""

    __slots__ = ("m2", "mean", "n")

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    @property
    def sd(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 1.0


class ConservativeBudget:
    """The running lower bound and the shaping of each decision's distribution (thread-safe).

    ``reveals[i]``: the arms a probe trace of arm ``i`` reveals (``ArmSet.reveals()``).
    """

    def __init__(self, config: ConservativeConfig, arm_names: Sequence[str],
                 reveals: Sequence[Sequence[int]]) -> None:
        if not config.enabled:
            raise ConfigError("ConservativeBudget needs exploration.baseline")
        if config.baseline not in arm_names:
            raise ConfigError(f"exploration.baseline must be one of the arms {list(arm_names)}, "
                              f"got {config.baseline!r}")
        self.config = config
        self.baseline = list(arm_names).index(config.baseline)
        self._k = k = len(arm_names)
        self._reveals = [frozenset(r) for r in reveals]
        self._z = config.z
        self._lock = threading.Lock()
        self._t = 0  # decisions counted into the budget
        self._exact_sum = 0.0  # Σ d over exactly known / deterministically bounded requests
        # per served arm: Σ (ŝ_a − ŝ_b) and count over the requests whose baseline outcome is estimated
        self._est_sum = [0.0] * k
        self._n_est = [0] * k
        # per arm: residual (r_a − r_b) − (ŝ_a − ŝ_b) wherever both outcomes were known
        self._residual = [_Running() for _ in range(k)]
        self._baseline_reward = 0.0  # Σ r_baseline (exact where known, else ŝ_baseline)
        self._held: OrderedDict[str, tuple[float, tuple[float, ...]]] = OrderedDict()  # key -> (charge, scores)
        self._held_sum = 0.0
        self._settled = self._exact = 0
        self._explored = self._restricted = self._baseline_served = 0

    # -- the lower bound ----------------------------------------------------------------------
    def _lower_bound(self) -> float:
        lb = self._exact_sum
        z = self._z
        for a in range(self._k):
            n = self._n_est[a]
            if n:
                r = self._residual[a]
                sd = r.sd
                lb += self._est_sum[a] + n * r.mean - z * (sd * math.sqrt(n) + n * sd / math.sqrt(r.n))
        return lb

    def _budget(self) -> float:
        c = self.config
        return c.max_loss * self._t + c.max_loss_fraction * max(self._baseline_reward, 0.0)

    def _margin(self, a: int) -> float:
        """Per-request pessimism of arm ``a``: ``z·sd`` of its residuals, 1 (the reward range) before calibration.

        A per-request outcome-level margin, not the (much smaller) width of the
        mean: the residuals are measured where the baseline was revealed and
        are applied where it was not, and a margin per request keeps each
        window's loss, not only the cumulative one, inside the budget
        (``benchmarks/conservative.py`` measures both).
        """
        r = self._residual[a]
        return self._z * r.sd if r.n >= MIN_RESIDUALS else 1.0

    def _units(self, scores: Sequence[float]) -> list[float]:
        """Charge per unit of probability on each arm (0 on the baseline): predicted loss + margin."""
        sb = scores[self.baseline]
        return [0.0 if a == self.baseline else max(sb - scores[a], 0.0) + self._margin(a) for a in range(self._k)]

    # -- decisions ---------------------------------------------------------------------------------
    def shape(self, key: str, probs: Sequence[float], scores: Sequence[float]) -> list[float]:
        """The distribution to serve for decision ``key``: ``probs`` if the budget covers it, else cut down.

        ``probs``/``scores`` (K,): the policy's exploration distribution and its reward scores.
        The returned vector is what must be sampled and logged (exact propensities).
        """
        k = self._k
        if len(probs) != k or len(scores) != k:
            raise ConfigError(f"conservative: expected {k} probabilities and scores, got {len(probs)}/{len(scores)}")
        greedy = max(range(k), key=lambda a: (scores[a], -a))
        with self._lock:
            self._t += 1
            units = self._units(scores)
            room = self._budget() + self._lower_bound() - self._held_sum
            if math.fsum(p * u for p, u in zip(probs, units)) <= room:
                q = [float(p) for p in probs]
                self._explored += 1
            else:
                self._restricted += 1
                q = self._restrict(probs, units, room, greedy)
            charge = math.fsum(p * u for p, u in zip(q, units))
            self._hold(key, charge, tuple(float(x) for x in scores))
        return q

    def _restrict(self, probs: Sequence[float], units: Sequence[float], room: float, greedy: int) -> list[float]:
        """Greedy arm if its charge fits, else the baseline; then exploration mass by reveals per unit charge."""
        k, b = self._k, self.baseline
        base = greedy if units[greedy] <= room else b
        q = [0.0] * k
        q[base] = 1.0
        left = room - units[base]
        order = sorted((a for a in range(k) if a != base and probs[a] > 0.0),
                       key=lambda a: (-(len(self._reveals[a]) / max(units[a], 1e-9)), a))
        for a in order:
            extra = units[a] - units[base]  # moving mass from ``base`` to ``a`` changes the charge by this per unit
            if extra <= 0.0:
                m = probs[a]
            elif left <= 0.0:
                break
            else:
                m = min(probs[a], left / extra)
            m = min(m, q[base])
            if m <= 0.0:
                continue
            q[a] += m
            q[base] -= m
            left -= m * max(extra, 0.0)
        total = math.fsum(q)
        return [x / total for x in q]

    def _hold(self, key: str, charge: float, scores: tuple[float, ...]) -> None:
        old = self._held.pop(key, None)
        if old is not None:
            self._held_sum -= old[0]
        self._held[key] = (charge, scores)
        self._held_sum += charge
        while len(self._held) > MAX_HELD:
            _, (c, _) = self._held.popitem(last=False)
            self._held_sum -= c

    def note_served(self, arm: int) -> None:
        """Count a decision's served arm (``baseline_served``)."""
        if arm == self.baseline:
            with self._lock:
                self._baseline_served += 1

    # -- outcomes ----------------------------------------------------------------------------------
    def settle(self, key: str, arm: int, served_reward: float, served_em: float,
               known: Mapping[int, float] | None = None) -> None:
        """Book decision ``key``'s outcome.

        ``arm``/``served_reward``/``served_em``: the arm served and its
        outcome; ``known``: the reward of every arm whose outcome is known
        (a probe trace reveals every arm at most as lenient as the served
        one), served arm included; None: only the served arm's. A decision
        this budget never saw (made before it, or released) is booked with
        the deterministic worst case.
        """
        known = dict(known or {})
        known[arm] = served_reward
        b = self.baseline
        with self._lock:
            held = self._held.pop(key, None)
            if held is not None:
                self._held_sum -= held[0]
            else:
                self._t += 1
            self._settled += 1
            if b in known:
                rb = known[b]
                self._exact += 1
                self._exact_sum += served_reward - rb
                self._baseline_reward += rb
                if held is not None:
                    scores = held[1]
                    for a, ra in known.items():
                        if a != b:
                            self._residual[a].add((ra - rb) - (scores[a] - scores[b]))
                return
            if held is not None:
                self._baseline_reward += held[1][b]
            stricter = arm in self._reveals[b]
            if held is None or self._residual[arm].n < MIN_RESIDUALS:
                # deterministic worst case: r_baseline ≤ EM_baseline ≤ 1, and a stricter arm spends at most the
                # baseline's tokens, so d ≥ EM_served − 1 (0 for a hit) or, for any arm, d ≥ r_served − 1
                self._exact += 1
                self._exact_sum += (served_em if stricter else served_reward) - 1.0
                return
            self._n_est[arm] += 1
            self._est_sum[arm] += held[1][arm] - held[1][b]

    def release(self, key: str) -> None:
        """Drop a held charge without an outcome (a decision that will never be rewarded)."""
        with self._lock:
            held = self._held.pop(key, None)
            if held is not None:
                self._held_sum -= held[0]

    def state(self) -> BudgetState:
        with self._lock:
            lb = self._lower_bound()
            budget = self._budget()
            return BudgetState(
                baseline=str(self.config.baseline), budget=budget, spent=max(0.0, -lb),
                left=budget + lb - self._held_sum, lower_bound=lb, held=self._held_sum, settled=self._settled,
                exact=self._exact, explored=self._explored, restricted=self._restricted,
                baseline_served=self._baseline_served,
            )


__all__ = ["CONSERVATIVE_KEYS", "MIN_RESIDUALS", "BudgetState", "ConservativeBudget", "ConservativeConfig"]
