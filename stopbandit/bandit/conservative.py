"""Conservative exploration: never give up more served reward than the operator allows.

The operator names a **baseline** -- the arm served today (e.g. ``"careful"``)
or a stored policy snapshot (``"snapshot:VERSION"``, its greedy arm per
request, :mod:`stopbandit.serving.baseline`) -- and a **loss budget**:
``max_loss`` reward units per request on average, and/or
``max_loss_fraction`` of the baseline's own reward. In the manner of
conservative contextual bandits (Wu et al. 2016, "Conservative bandits";
Kazerouni et al. 2017, "Conservative contextual linear bandits"), the rule
keeps a **high-confidence lower bound** ``LB`` on ``Σ (r_served − r_baseline)``
over the settled requests -- every request counted, the greedy arm's as much
as an explored one's -- and serves a distribution only while

    LB − (charges of decisions not yet rewarded) − charge(this request) ≥ −budget

holds both over the whole run (``budget = max_loss · t + max_loss_fraction ·
R̂_baseline``) and over **every suffix of the last** ``window`` **settled
requests** (``budget = max_loss · window + ... − RESERVE``). Every suffix,
not the window as a whole: gains banked early in a window must not pay for
losses that a window starting after them would hold alone; and
:data:`RESERVE` keeps back the most one request in flight can lose beyond its
charge (grown to the largest loss a single request has been seen to cost: at a
large λ a lenient arm's tokens cost several reward units); the window's bound is taken at a ten times smaller miss probability
(:attr:`ConservativeConfig.window_z`), as every stretch is looked at on many
decisions. Otherwise the distribution is cut down: the greedy arm when its charge
alone fits, else the baseline (whose charge is 0: it never loses against
itself), plus what exploration still fits, cheapest first; with no room at
all, the baseline alone.

**The lower bound.** A request's difference ``d = r_served − r_baseline`` is
known *exactly* when the served arm's probe trace reveals the baseline's
outcome (the baseline itself, ``d = 0``, or any arm at least as lenient). For a
served arm ``a`` whose trace does not reveal the baseline (a stricter arm),
``d`` is estimated from **comparable requests**: every request served by an
arm whose trace reveals both ``a`` and the baseline yields ``D_a = r_a − r_b``
exactly. Those samples come from the same selection as the requests they
stand for -- the policy offered ``a`` there too, in the same role (greedy or
explored) -- and are weighted ``p_a / q_R`` (``p`` the policy's distribution,
``q_R`` the probability served on the arms revealing both): the importance
weight of the policy's choice of ``a``, which the budget only thins, by
role and by the room at the time, never by request. So the estimate is not
fooled where the greedy choice picks ``a`` exactly because the heads
overestimate it (the optimizer's curse), as one from the heads' scores or from
requests the greedy arm did not pick would be. Samples are kept per
**stratum** (baseline arm, ``a``, role, ``a`` hit or missed): ``a``'s own
outcome is observed on both sides, so a run with more misses than usual books
more loss. Over strata with ``n`` served requests each, ``m`` effective
samples (Kish), weighted mean ``μ̂`` and spread ``σ̂``, the bound books

    Σ n·μ̂ − z · (√(Σ σ̂²·n) + Σ n·σ̂/√m)

(the requests' own noise in quadrature, the means' uncertainty linearly, as
one comparable request samples several strata), never below the deterministic
worst case of the same requests: ``EM − 1`` for a stricter arm (0 for a hit:
it spends at most the baseline's tokens and the baseline earns at most EM 1),
``r − 1`` for any other. A stratum that has not yet had :data:`MIN_SAMPLES`
effective samples books that worst case. The Gaussian widths are the
approximation; ``benchmarks/conservative.py`` prints the final bounds next to
the realized sums.

**Audits.** Whenever an arm whose loss is estimated has positive probability,
at least ``audit`` (:data:`AUDIT` by default) of the mass is on arms whose
trace reveals the baseline (mass moves to the baseline): the comparable
requests keep coming while the policy exploits, at weights of at most
``1 / audit``. This is what exploitation pays for an honest bound: ``audit``
times the greedy arm's gain over the baseline.

**Charges.** Before its outcome is known, a candidate distribution ``q`` is
charged ``Σ_a q_a · u_a``, ``u_a = max(0, −(μ̂_a − z·σ̂_a/√m_a))`` -- the
pessimistic expected loss of serving ``a`` in its role per request, from all
its comparable requests -- or 1 before ``a`` has :data:`MIN_SAMPLES` of them.
A decision's charge is held until its reward settles it.

**Cheap exploration first.** When the budget covers only part of the
exploration the policy asks for, exploration mass is kept on arms in order of
*revealed outcomes per unit of charge*: with probe traces a run of arm ``a``
reveals ``|revealed_by(a)|`` arms, so exploring upwards (more lenient arms)
buys information about every stricter arm at once, and an arm at least as
lenient as the baseline also settles its own cost exactly.

**Shadow mode** is the zero-budget end of this dial: with ``max_loss = 0``
and ``max_loss_fraction = 0`` nothing is ever earned against the baseline, so
the baseline is served on every request, as in shadow mode, while the policy
learns every outcome the baseline's probe trace reveals (every stricter arm).

**Propensities stay exact.** :meth:`ConservativeBudget.shape` returns the
distribution that is actually sampled and logged, so off-policy estimators see
the probabilities served.

The settings are frozen (:class:`ConservativeConfig`, part of the Selector's
config, in :mod:`stopbandit.bandit.conservative_config`); the running sums are
state (:class:`ConservativeBudget`) owned by one Selector.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from stopbandit.bandit.conservative_config import (
    AUDIT,
    CONSERVATIVE_KEYS,
    SNAPSHOT_PREFIX,
    ConservativeConfig,
)
from stopbandit.errors import ConfigError

MIN_SAMPLES = 30.0
"""Effective comparable samples a stratum (or an arm's charge) needs before estimates replace the worst case."""
HALF_LIFE = 2000
"""Settled requests over which a comparable sample's weight halves: the policy's choices drift as it learns."""
RESERVE = 1.0
"""Reward units a window's budget keeps back at least: the most one request can lose beyond its charge (the
reserve grows to the largest loss one request has been seen to cost: with large λ, tokens cost more than EM)."""
MAX_HELD = 1_000_000
"""Decisions whose charge is held until their reward (the oldest are released beyond it)."""


@dataclass(frozen=True)
class BudgetState:
    """What ``health()`` and the metrics report (reward units)."""

    baseline: str
    budget: float  # allowed cumulative loss so far (max_loss·t + fraction·R̂_baseline)
    spent: float  # max(0, −LB): the loss the lower bound cannot rule out
    left: float  # the smaller of the run's and the window's room, held charges taken off
    lower_bound: float  # LB of Σ (served − baseline) over settled requests
    held: float  # charges of decisions not rewarded yet
    settled: int
    exact: int  # settled with the difference known exactly (or bounded deterministically)
    explored: int  # decisions served the policy's full exploration distribution
    restricted: int  # decisions whose exploration the budget cut down
    baseline_served: int  # decisions where the baseline was the arm served
    window_lower_bound: float = 0.0  # LB of Σ (served − baseline) over the last ``window`` settled requests
    window_budget: float = 0.0
    comparable: int = 0  # comparable samples (a request revealing the baseline and another arm it could serve)


class _Weighted:
    """Weighted mean/variance of comparable samples, with the Kish effective sample size."""

    __slots__ = ("sw", "sw2", "swx", "swx2")

    def __init__(self) -> None:
        self.sw = self.sw2 = self.swx = self.swx2 = 0.0

    def rescale(self, f: float) -> None:
        """Divide every weight by ``f`` (the mean and the effective size do not change)."""
        self.sw /= f
        self.sw2 /= f * f
        self.swx /= f
        self.swx2 /= f

    def add(self, x: float, w: float) -> None:
        self.sw += w
        self.sw2 += w * w
        self.swx += w * x
        self.swx2 += w * x * x

    @property
    def m(self) -> float:
        return self.sw * self.sw / self.sw2 if self.sw2 > 0.0 else 0.0

    @property
    def mean(self) -> float:
        return self.swx / self.sw if self.sw > 0.0 else 0.0

    @property
    def sd(self) -> float:
        if self.sw <= 0.0:
            return 1.0
        var = self.swx2 / self.sw - self.mean ** 2
        m = self.m
        return math.sqrt(max(var, 0.0) * (m / (m - 1.0) if m > 1.0 else 1.0))


_Held = tuple[float, tuple[float, ...], tuple[float, ...], int, float, int]


class ConservativeBudget:
    """The running lower bounds and the shaping of each decision's distribution (thread-safe).

    ``reveals[i]``: the arms a probe trace of arm ``i`` reveals (``ArmSet.reveals()``).
    Strata are numbered ``((b·K + a)·2 + role)·2 + hit``: the request's baseline arm ``b`` (fixed unless the
    baseline is a snapshot), arm ``a``, ``role`` 1 where ``a`` was the greedy arm of the request (0:
    explored), ``hit`` 1 where ``a``'s EM was 1.
    """

    def __init__(self, config: ConservativeConfig, arm_names: Sequence[str],
                 reveals: Sequence[Sequence[int]]) -> None:
        if not config.enabled:
            raise ConfigError("ConservativeBudget needs exploration.baseline")
        if config.snapshot is None and config.baseline not in arm_names:
            raise ConfigError(f"exploration.baseline must be one of the arms {list(arm_names)}, "
                              f"got {config.baseline!r}")
        self.config = config
        # the baseline arm; None for a snapshot baseline, whose arm every decision names (``shape(baseline=)``)
        self.baseline: int | None = None if config.snapshot is not None else list(arm_names).index(config.baseline)
        self._k = k = len(arm_names)
        self._reveals = [frozenset(r) for r in reveals]
        # per baseline arm b: the arms whose trace settles d exactly (they reveal b), per arm a the arms
        # revealing a and b, and the arms stricter than b
        self._settles = [frozenset(c for c in range(k) if b in self._reveals[c]) for b in range(k)]
        self._both = [[tuple(c for c in range(k) if a in self._reveals[c] and b in self._reveals[c])
                       for a in range(k)] for b in range(k)]
        self._stricter = [frozenset(self._reveals[b]) - {b} for b in range(k)]
        self._z = config.z
        self._window_z = config.window_z
        self._lock = threading.Lock()
        self._t = 0  # decisions counted into the budget
        self._exact_sum = 0.0  # Σ d over exactly known / deterministically bounded requests
        n_strata = 4 * k * k
        self._samples = [_Weighted() for _ in range(n_strata)]  # comparable samples of D_a per stratum
        self._calibrated = [False] * n_strata  # reached MIN_SAMPLES once (the effective size is not monotone)
        self._pooled = [_Weighted() for _ in range(2 * k * k)]  # per (baseline, arm, role), both outcomes: the charge
        self._n_est = [0] * n_strata  # estimated served requests per stratum
        self._worst = [0.0] * n_strata  # Σ of their deterministic worst case
        self._baseline_reward = 0.0  # Σ r_baseline (exact where known, else ŝ_baseline)
        # a new comparable sample weighs ``_growth`` times what it would at the start: older samples fade
        self._growth, self._growth_step = 1.0, 2.0 ** (1.0 / HALF_LIFE)
        # the last ``window`` settled requests: (exact d, or the worst case of an estimated one; stratum or −1;
        # baseline reward)
        self._recent: deque[tuple[float, int, float]] = deque()
        self._win_base = 0.0
        self._reserve = RESERVE  # the largest single-request loss seen, at least RESERVE
        self._win_lb: float | None = None  # the window's bound, until the next settled request changes it
        # key -> (charge, policy's probabilities, probabilities served, greedy arm, ŝ_baseline, baseline arm)
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._held_sum = 0.0
        self._settled = self._exact = self._comparable = 0
        self._explored = self._restricted = self._baseline_served = 0

    # -- the lower bounds ---------------------------------------------------------------------
    def _estimated(self, counts: Sequence[int], worst: Sequence[float]) -> float:
        """LB of Σ d over ``counts[s]`` estimated requests per stratum (``worst``: their worst-case sum).

        A stratum that has not had :data:`MIN_SAMPLES` effective comparable samples books its worst case; once
        calibrated, its estimate covers every request of the stratum, the earlier ones included. The noise of
        the requests' own outcomes adds in quadrature across strata (different requests); the uncertainty of
        the strata's means adds linearly (one comparable request can sample several strata).
        """
        uncal = point = var = mean_width = floor = 0.0
        for st, n in enumerate(counts):
            if not n:
                continue
            if not self._calibrated[st]:
                uncal += worst[st]
                continue
            s = self._samples[st]
            sd = s.sd
            point += n * s.mean
            var += sd * sd * n
            mean_width += n * sd / math.sqrt(max(s.m, 1.0))
            floor += worst[st]
        width = self._z * (math.sqrt(var) + mean_width)
        if not point and not var and not floor:
            return uncal
        # never below the deterministic worst case of the same requests
        return uncal + max(point - width, floor)

    def _lower_bound(self) -> float:
        return self._exact_sum + self._estimated(self._n_est, self._worst)

    def _window_lower_bound(self) -> float:
        """:meth:`_window_bound`, computed once per settled request (decisions in between reuse it)."""
        if self._win_lb is None:
            self._win_lb = self._window_bound()
        return self._win_lb

    def _window_bound(self) -> float:
        """LB of the worst run of recent requests: min over the suffixes of the last ``window`` settled ones.

        Every suffix, not only the whole window: gains banked early in a window must not pay for losses
        that a later window (one starting after the gains) would then hold alone. Each suffix's bound is
        built like :meth:`_estimated`'s (point values, never below a request's worst case; noise in
        quadrature, the means' uncertainty linearly).
        """
        z = self._window_z
        point, var_one, width_one = [], [], []
        for st, s in enumerate(self._samples):
            if self._calibrated[st]:
                sd = s.sd
                point.append(s.mean)
                var_one.append(sd * sd)
                width_one.append(sd / math.sqrt(max(s.m, 1.0)))
            else:
                point.append(None)
                var_one.append(0.0)
                width_one.append(0.0)
        run = var = width = low = 0.0
        for d, st, _ in reversed(self._recent):
            if st < 0 or point[st] is None:
                run += d
            else:
                run += max(point[st], d)
                var += var_one[st]
                width += width_one[st]
            low = min(low, run - z * (math.sqrt(var) + width))
        return low

    def _budget(self) -> float:
        c = self.config
        return c.max_loss * self._t + c.max_loss_fraction * max(self._baseline_reward, 0.0)

    def _window_budget(self) -> float:
        """The window's budget less the reserve: a charge is an expected loss, and the request in flight can
        still lose more (up to the largest loss one request has cost, :data:`RESERVE` at least)."""
        c = self.config
        return c.max_loss * c.window + c.max_loss_fraction * max(self._win_base, 0.0) - self._reserve

    def _room(self) -> float:
        room = self._budget() + self._lower_bound()
        if self.config.window:
            room = min(room, self._window_budget() + self._window_lower_bound())
        return room - self._held_sum

    def _units(self, greedy: int, b: int) -> list[float]:
        """Charge per unit of probability on each arm (its role in this request): the pessimistic expected loss.

        0 for the baseline, 1 (the reward range) before the arm has :data:`MIN_SAMPLES` comparable samples.
        """
        z = self._z
        out = []
        for a in range(self._k):
            s = self._pooled[2 * (b * self._k + a) + (a == greedy)]
            if a == b:
                out.append(0.0)
            elif s.m < MIN_SAMPLES:
                out.append(1.0)
            else:
                out.append(max(0.0, -(s.mean - z * s.sd / math.sqrt(s.m))))
        return out

    # -- decisions ---------------------------------------------------------------------------------
    def shape(self, key: str, probs: Sequence[float], scores: Sequence[float],
              baseline: int | None = None) -> list[float]:
        """The distribution to serve for decision ``key``: ``probs`` if the budget covers it, else cut down.

        ``probs``/``scores`` (K,): the policy's exploration distribution and its reward scores;
        ``baseline``: the baseline's arm for this request (required for a snapshot baseline, else the
        configured arm). The returned vector is what must be sampled and logged (exact propensities).
        """
        k = self._k
        if len(probs) != k or len(scores) != k:
            raise ConfigError(f"conservative: expected {k} probabilities and scores, got {len(probs)}/{len(scores)}")
        b = self.baseline if baseline is None else baseline
        if b is None or isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < k:
            raise ConfigError(f"conservative: the baseline arm must be an index in [0, {k}) "
                              f"({self.config.baseline!r} names none itself), got {baseline!r}")
        greedy = max(range(k), key=lambda a: (scores[a], -a))
        with self._lock:
            self._t += 1
            units = self._units(greedy, b)
            room = self._room()
            if math.fsum(p * u for p, u in zip(probs, units)) <= room:
                q = [float(p) for p in probs]
                self._explored += 1
            else:
                self._restricted += 1
                q = self._restrict(probs, units, room, greedy, b)
            q = self._audit(q, b)
            charge = math.fsum(p * u for p, u in zip(q, units))
            self._hold(key, (charge, tuple(float(p) for p in probs), tuple(q), greedy, float(scores[b]), b))
        return q

    def _restrict(self, probs: Sequence[float], units: Sequence[float], room: float, greedy: int,
                  b: int) -> list[float]:
        """Greedy arm if its charge fits, else the baseline; then exploration mass by reveals per unit charge."""
        k = self._k
        q = [0.0] * k
        if room <= 0.0:
            q[b] = 1.0
            return q
        base = greedy if units[greedy] <= room else b
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

    def _audit(self, q: list[float], b: int) -> list[float]:
        """At least ``audit`` on baseline-revealing arms whenever an estimated arm has mass (moved to the baseline)."""
        settles = self._settles[b]
        settling = math.fsum(q[c] for c in settles)
        audit = self.config.audit
        if settling >= audit or settling >= 1.0 - 1e-12:
            return q
        scale = (1.0 - audit) / (1.0 - settling)  # shrink the other arms' mass, give it to the baseline
        out = [p if a in settles else p * scale for a, p in enumerate(q)]
        out[b] += 1.0 - math.fsum(out)
        return out

    def _hold(self, key: str, held: _Held) -> None:
        old = self._held.pop(key, None)
        if old is not None:
            self._held_sum -= old[0]
        self._held[key] = held
        self._held_sum += held[0]
        while len(self._held) > MAX_HELD:
            _, dropped = self._held.popitem(last=False)
            self._held_sum -= dropped[0]

    def note_served(self, arm: int, key: str | None = None) -> None:
        """Count a decision's served arm (``baseline_served``); ``key`` finds a snapshot baseline's arm."""
        with self._lock:
            held = self._held.get(key) if key is not None else None
            if arm == (held[5] if held is not None else self.baseline):
                self._baseline_served += 1

    # -- outcomes ----------------------------------------------------------------------------------
    def settle(self, key: str, arm: int, served_reward: float, served_em: float,
               known: Mapping[int, float] | None = None, known_em: Mapping[int, float] | None = None) -> None:
        """Book decision ``key``'s outcome.

        ``arm``/``served_reward``/``served_em``: the arm served and its
        outcome; ``known``: the reward of every arm whose outcome is known
        (a probe trace reveals every arm at most as lenient as the served
        one), ``known_em`` their EM (an arm without one gives no comparable
        sample); None: only the served arm's. A decision this budget never
        saw (made before it, or released) is booked with the deterministic
        worst case.
        """
        known = dict(known or {})
        known[arm] = served_reward
        ems = dict(known_em or {})
        ems[arm] = served_em
        with self._lock:
            held = self._held.pop(key, None)
            if held is not None:
                self._held_sum -= held[0]
            else:
                self._t += 1
            self._settled += 1
            self._grow()
            b = held[5] if held is not None else self.baseline  # None: a snapshot's arm this budget never saw
            if b is not None and b in known:
                rb = known[b]
                self._exact += 1
                d = served_reward - rb
                self._exact_sum += d
                self._baseline_reward += rb
                if held is not None:
                    self._comparables(held, known, ems, rb)
                self._push(d, -1, rb)
                return
            rb_hat = held[4] if held is not None else 0.0
            self._baseline_reward += rb_hat
            # deterministic worst case: r_baseline ≤ EM_baseline ≤ 1, and a stricter arm spends at most the
            # baseline's tokens, so d ≥ EM_served − 1 (0 for a hit) or, for any arm, d ≥ r_served − 1
            worst = (served_em if b is not None and arm in self._stricter[b] else served_reward) - 1.0
            if held is None:
                self._exact += 1
                self._exact_sum += worst
                self._push(worst, -1, rb_hat)
                return
            st = (2 * (b * self._k + arm) + (arm == held[3])) * 2 + (served_em >= 1.0)
            self._n_est[st] += 1
            self._worst[st] += worst
            self._push(worst, st, rb_hat)

    def _grow(self) -> None:
        self._growth *= self._growth_step
        if self._growth > 1e100:  # keep the sums finite: rescaling changes no mean, spread or effective size
            for acc in (*self._samples, *self._pooled):
                acc.rescale(self._growth)
            self._growth = 1.0

    def _comparables(self, held: _Held, known: Mapping[int, float], ems: Mapping[int, float], rb: float) -> None:
        """Record D_a = r_a − r_b for every arm ``a`` the request revealed that the policy offered.

        Weight ``p_a / q_R``: ``p`` the policy's distribution, ``q_R`` the probability served on the arms
        revealing ``a`` and the baseline. A request stands for the ``p_a / q_R`` requests of the policy's
        choice of ``a`` it represents; the budget's cut-downs act on the arm's role (greedy or explored)
        and the room at the time, not on the request, so within a stratum the served requests of ``a``
        are those the policy chose, thinned.
        """
        _, p, q, greedy, _, b = held
        for a, ra in known.items():
            if a == b or a not in ems or p[a] <= 0.0:
                continue
            mass = math.fsum(q[c] for c in self._both[b][a])
            if mass <= 0.0:
                continue
            w = p[a] / mass * self._growth
            d = ra - rb
            role = 2 * (b * self._k + a) + (a == greedy)
            self._pooled[role].add(d, w)
            if a not in self._settles[b]:
                st = role * 2 + (ems[a] >= 1.0)
                self._samples[st].add(d, w)
                if self._samples[st].m >= MIN_SAMPLES:
                    self._calibrated[st] = True
                self._comparable += 1

    def _push(self, d: float, stratum: int, rb: float) -> None:
        """Append a settled request to the window (``stratum`` −1: ``d`` exact, else its worst case)."""
        self._win_lb = None  # this request, and the comparable samples it brought, change the bound
        self._reserve = max(self._reserve, -d)
        window = self.config.window
        if not window:
            return
        self._recent.append((d, stratum, rb))
        self._add_window(d, stratum, rb, 1)
        while len(self._recent) > window:
            old = self._recent.popleft()
            self._add_window(*old, -1)

    def _add_window(self, d: float, stratum: int, rb: float, sign: int) -> None:
        self._win_base += sign * rb

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
                left=self._room(), lower_bound=lb, held=self._held_sum, settled=self._settled,
                exact=self._exact, explored=self._explored, restricted=self._restricted,
                baseline_served=self._baseline_served, window_lower_bound=self._window_lower_bound(),
                window_budget=self._window_budget(), comparable=self._comparable,
            )


__all__ = ["AUDIT", "CONSERVATIVE_KEYS", "MIN_SAMPLES", "SNAPSHOT_PREFIX", "BudgetState", "ConservativeBudget", "ConservativeConfig"]
