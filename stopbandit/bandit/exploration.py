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
* Graph-aware SquareCB (``SquareCB(nested=True)``, ``[exploration] nested = true``):
  with probe traces on, a run of arm ``a`` reveals the outcome of every arm at
  most as lenient as ``a`` (``ArmSet.revealed_by``), so the arms the greedy
  arm's trace reveals are observed on every request anyway and exploring them
  buys nothing. They get p = 0; the arms it does not reveal (the more lenient
  ones) keep the inverse-gap weight 1 / (K + γ·gap); the rest goes to a*.
  This is SquareCB on a feedback graph (Zhang et al. 2023, "Practical
  contextual bandits with feedback graphs", arXiv 2302.08631). When a* is the
  most lenient arm nothing is explored: its trace reveals every arm.
* ε-greedy: ε spread uniformly, 1 − ε on the best.
* Softmax: p ∝ exp(r̂ / τ).

The rule for graph-aware SquareCB, as documented for operators: **with traces
on, do not explore arms the greedy arm's trace reveals; explore only the more
lenient arms, by inverse gap.** It is off unless configured (``nested =
true``), and only meaningful while rewards carry probe traces (``reward(...,
trace=..., reference=...)``): without traces the stricter arms would never be
explored nor learned. So it is active only while (a) the reveal structure of
the arms is known (:meth:`Exploration.for_arms`, which ``SelectorConfig`` calls
with its arms) and (b) at least :data:`MIN_TRACE_SHARE` of the last
:data:`TRACE_WINDOW` rewards carried a trace (no reward reported yet counts as
traced: ``nested = true`` declares that they will). Otherwise it is exactly
plain SquareCB. The rules are frozen settings; that count is state, so it
lives in a :class:`TraceShare` owned by whoever learns (the policy, bound to
its Selector's), and is passed to :meth:`Exploration.probabilities`. The
propensity logged with a decision is read from the vector this returns, so a
revealed arm is logged with probability 0; graph-feedback OPE
(``GraphIPS``/``GraphDR``/``GraphChainDR``) still covers it through the reveal
probability ``q``, while plain IPS/DR report it as unsupported.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from stopbandit import validation
from stopbandit.errors import ConfigError, StopbanditError

if TYPE_CHECKING:  # pragma: no cover
    from stopbandit.bandit.arms import ArmSet

TRACE_WINDOW = 1000
"""Rewards over which graph-aware SquareCB checks that traces are flowing."""
MIN_TRACE_SHARE = 0.95
"""Share of traced rewards (over the window) below which graph-aware SquareCB falls back to plain SquareCB."""


class Exploration(ABC):
    """Base: validate and normalise what the hook returns."""

    name: ClassVar[str]

    def probabilities(self, scores: Sequence[float], t: int, traces: TraceShare | None = None) -> list[float]:
        """Probability vector (K,) over arms from reward scores (K,) after ``t`` rewards.

        ``traces``: the learner's record of whether its rewards carry probe
        traces (None: as if they all do). Plain Python floats: for the
        handful of arms a request has, this is several times faster than
        NumPy's per-call overhead on the serving path.
        """
        p = self._probabilities(list(map(float, scores)), max(int(t), 1), traces)
        total = math.fsum(p)
        # a finite positive sum of non-negative terms: every term is finite (a NaN makes the sum NaN)
        if not (0.0 < total < math.inf and min(p) >= 0.0):
            raise StopbanditError(f"{self.name} produced an invalid probability vector {p!r}")
        return [x / total for x in p]

    def probabilities_batch(self, scores: np.ndarray, t: int, traces: TraceShare | None = None) -> np.ndarray:
        """Row-wise probabilities for an (n, K) score matrix (offline evaluation, sweeps)."""
        return np.asarray([self.probabilities(row, t, traces) for row in np.asarray(scores, dtype=float)])

    def for_arms(self, arms: ArmSet) -> Exploration:
        """This rule bound to ``arms`` (rules that need the arms' reveal structure); default: unchanged."""
        return self

    @property
    def watches_traces(self) -> bool:
        """Whether the rule depends on the share of traced rewards (its learner then records it)."""
        return False

    @abstractmethod
    def _probabilities(self, scores: list[float], t: int, traces: TraceShare | None) -> list[float]: ...

    @abstractmethod
    def to_dict(self) -> dict[str, Any]: ...


def check_gamma(scale: object, exponent: object) -> None:
    """SquareCB's γ = ``scale``·t^``exponent``: a scale > 0 and an exponent in [0, 1] (ConfigError otherwise)."""
    validation.within(scale, "exploration.gamma_scale", low=0, low_open=True, expected="{range}")
    validation.within(exponent, "exploration.gamma_exponent", low=0, high=1, expected="{range}")


def _best(scores: list[float]) -> int:
    # ties go to the lowest index; arms are listed most lenient first by convention
    return max(range(len(scores)), key=scores.__getitem__)


class TraceShare:
    """Whether the recent rewards carried probe traces: a thread-safe count over the last ``window``.

    State of a learner, never of a rule's settings: each Selector owns one.
    """

    def __init__(self, window: int = TRACE_WINDOW, min_share: float = MIN_TRACE_SHARE) -> None:
        self._flags: deque[bool] = deque(maxlen=window)
        self._traced = 0
        self._min_share = min_share
        self._lock = threading.Lock()

    def observe(self, traced: bool) -> None:
        traced = bool(traced)
        with self._lock:
            if len(self._flags) == self._flags.maxlen:
                self._traced -= self._flags[0]
            self._flags.append(traced)
            self._traced += traced

    @property
    def share(self) -> float:
        """Traced share of the window; 1.0 before any reward (``nested = true`` declares traces)."""
        n = len(self._flags)
        return self._traced / n if n else 1.0

    @property
    def ok(self) -> bool:
        return self.share >= self._min_share

    def __getstate__(self) -> dict[str, Any]:  # picklable (worker processes), the lock is per process
        return {"flags": list(self._flags), "maxlen": self._flags.maxlen, "min_share": self._min_share}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["maxlen"], state["min_share"])  # type: ignore[misc]
        for flag in state["flags"]:
            self.observe(flag)


def _check_reveals(reveals: object) -> tuple[tuple[int, ...], ...] | None:
    """``reveals[i]``: the arm indices a trace of arm ``i`` reveals (``i`` itself included)."""
    if reveals is None:
        return None
    try:
        rows = tuple(tuple(int(a) for a in row) for row in reveals)  # type: ignore[union-attr]
        bad_type = any(isinstance(a, bool) or not isinstance(a, (int, float)) or a != int(a)
                       for row in reveals for a in row)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ConfigError(f"exploration.reveals must be a list of lists of arm indices, got {reveals!r}") from None
    k = len(rows)
    if bad_type or k < 2 or any(not 0 <= a < k for row in rows for a in row):
        raise ConfigError(f"exploration.reveals must be a list of K >= 2 lists of arm indices in [0, K), "
                          f"got {reveals!r}")
    if any(i not in row for i, row in enumerate(rows)):
        raise ConfigError(f"exploration.reveals[i] must contain i (a run of an arm reveals its own outcome), "
                          f"got {reveals!r}")
    return rows


@dataclass(frozen=True)
class SquareCB(Exploration):
    """SquareCB; ``nested=True`` makes it graph-aware while rewards carry traces (module docstring).

    ``reveals`` is derived from the arms by :meth:`for_arms` (``SelectorConfig``
    does it); it is only stored (``to_dict``) so a snapshot's rule can be
    rebuilt where no arms are at hand.
    """

    gamma_scale: float = 5.0
    gamma_exponent: float = 0.5
    nested: bool = False
    reveals: tuple[tuple[int, ...], ...] | None = None
    name: ClassVar[str] = "squarecb"

    def __post_init__(self) -> None:
        check_gamma(self.gamma_scale, self.gamma_exponent)
        if not isinstance(self.nested, bool):
            raise ConfigError(f"exploration.nested must be true or false, got {self.nested!r}")
        object.__setattr__(self, "reveals", _check_reveals(self.reveals))

    def for_arms(self, arms: ArmSet) -> SquareCB:
        if not self.nested:
            return self
        reveals = arms.reveals()
        return self if reveals == self.reveals else replace(self, reveals=reveals)

    @property
    def watches_traces(self) -> bool:
        return self.nested

    @property
    def graph_bound(self) -> bool:
        """Whether the graph-aware rule is configured and knows the arms' reveal structure."""
        return self.nested and self.reveals is not None

    def graph_active(self, traces: TraceShare | None) -> bool:
        """Whether the graph-aware rule is in force now: bound, and ``traces`` (None: all traced) flowing."""
        return self.graph_bound and (traces is None or traces.ok)

    def _probabilities(self, scores: list[float], t: int, traces: TraceShare | None) -> list[float]:
        k = len(scores)
        best = _best(scores)
        gamma = self.gamma_scale * t**self.gamma_exponent
        top = scores[best]
        p = [1.0 / (k + gamma * (top - s)) for s in scores]
        reveals = self.reveals
        if reveals is not None and self.graph_active(traces):
            if len(reveals) != k:
                raise StopbanditError(f"squarecb: reveals covers {len(reveals)} arms but {k} were scored")
            for a in reveals[best]:
                p[a] = 0.0  # observed through the greedy run's trace on every request
        p[best] = 0.0
        p[best] = 1.0 - math.fsum(p)
        return p

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "gamma_scale": self.gamma_scale,
                               "gamma_exponent": self.gamma_exponent}
        if self.nested:
            out["nested"] = True
            if self.reveals is not None:
                out["reveals"] = [list(r) for r in self.reveals]
        return out


@dataclass(frozen=True)
class EpsilonGreedy(Exploration):
    epsilon: float = 0.05
    name: ClassVar[str] = "epsilon"

    def __post_init__(self) -> None:
        if not (0.0 <= self.epsilon <= 1.0):
            raise ConfigError(f"exploration.epsilon must be in [0, 1], got {self.epsilon!r}")

    def _probabilities(self, scores: list[float], t: int, traces: TraceShare | None) -> list[float]:
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
        validation.within(self.temperature, "exploration.temperature", low=0, low_open=True, expected="{range}")

    def _probabilities(self, scores: list[float], t: int, traces: TraceShare | None) -> list[float]:
        top = max(scores)
        return [math.exp((s - top) / self.temperature) for s in scores]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "temperature": self.temperature}


EXPLORATIONS: dict[str, type[Exploration]] = {c.name: c for c in (SquareCB, EpsilonGreedy, Softmax)}


def exploration_from_config(cfg: Mapping[str, Any] | None) -> Exploration:
    """``{"name": "squarecb", ...params}`` → an Exploration; errors name the bad key.

    Numbers for the numeric parameters; ``nested`` (squarecb) is a boolean and
    ``reveals`` (squarecb, as ``to_dict`` writes it) a list of lists of arm indices.
    """
    if cfg is None:
        return SquareCB()
    cfg = dict(cfg)
    name = cfg.pop("name", "squarecb")
    if name not in EXPLORATIONS:
        raise ConfigError(f"exploration.name must be one of {sorted(EXPLORATIONS)}, got {name!r}")
    cls = EXPLORATIONS[name]
    allowed = {f.name for f in fields(cls) if f.init}
    unknown = set(cfg) - allowed
    if unknown:
        raise ConfigError(f"exploration {name!r}: unknown parameter(s) {sorted(unknown)}; allowed {sorted(allowed)}")
    kwargs: dict[str, Any] = {}
    for k, v in cfg.items():
        if k == "nested":
            if not isinstance(v, bool):
                raise ConfigError(f"exploration.nested must be true or false, got {v!r}")
            kwargs[k] = v
        elif k == "reveals":
            if not isinstance(v, (list, tuple)) or not all(isinstance(r, (list, tuple)) for r in v):
                raise ConfigError(f"exploration.reveals must be a list of lists of arm indices, got {v!r}")
            kwargs[k] = v
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"exploration.{k} must be a number, got {v!r}")
        else:
            kwargs[k] = float(v)
    return cls(**kwargs)


__all__ = ["EXPLORATIONS", "MIN_TRACE_SHARE", "TRACE_WINDOW", "EpsilonGreedy", "Exploration", "Softmax", "SquareCB",
           "TraceShare", "check_gamma", "exploration_from_config"]
