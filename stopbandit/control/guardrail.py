"""Guardrail: a full-reasoning holdout as control, and a per-domain fallback when the policy loses EM.

A share of traffic (``holdout_share``, e.g. 2 %) always runs the most lenient
arm (``ArmSet.most_conservative()``: full reasoning) and is logged with
``experiment='holdout'`` and propensity 1. Per domain the guardrail compares
the policy's EM with that control and, when the policy is significantly worse
than a tolerated relative loss, puts the domain in *fallback*: its requests
get the full arm too, until the policy has recovered.

Evidence, per domain (rolling windows of the last ``window`` values each; the
window bounds the detection delay, about ``window / (holdout_share × domain
share)`` requests with paired evidence, so the default is short, 300):

* control: the EM of every full-arm decision (holdout, and fallback while engaged);
* policy: the EM of every decision the policy served;
* pairs: on a full-arm decision that came back with a probe trace, the trace
  reveals every stricter arm's outcome exactly (``stopbandit.bandit.trace``),
  so the policy's EM *on the same request* is known:
  ``p_i = Σ_k π_ik·EM_ik`` with ``π_i`` the policy's probabilities for it
  (its expected EM under its own randomisation). Each such request gives a
  pair ``(c_i, p_i)``.

The test, one-sided, on the ratio: with margin ``δ`` the null hypothesis is
"the policy keeps at least ``1 − δ`` of the control's EM",
``H0: p ≥ (1 − δ)·c``, against ``H1: p < (1 − δ)·c``. Its statistic is

    z(δ) = ((1 − δ)·c̄ − p̄) / SE

* paired (``n_pairs ≥ min_n``): ``D_i = (1 − δ)·c_i − p_i``, ``SE = sd(D)/√n``
  (a one-sample z-test on the paired differences);
* otherwise unpaired (``n_control, n_policy ≥ min_n``): Welch's
  ``SE = sqrt((1 − δ)²·s_c²/n_c + s_p²/n_p)`` (the Wald test of a ratio
  non-inferiority hypothesis with unpooled variances);
* otherwise the domain has too little volume and is not tested ("insufficient").

Engage (``ok → fallback``) when ``z(margin) > z_{1−alpha}``: the policy is
significantly worse than ``1 − margin`` of the control. The domain's windows
are then cleared, so the release decision uses only evidence gathered in
fallback. While engaged, the full arm serves the domain (every request is a
control, and with traces a pair), except ``probe_share`` of the policy's own
traffic, which the policy keeps serving so its EM stays observable without traces.

Release (``fallback → ok``) when ``z(release_margin) < −z_{1−release_alpha}``:
the policy is significantly *better* than ``1 − release_margin`` of the control,
with ``release_margin < margin`` (default ``margin/2``). The two thresholds form
the hysteresis: a policy hovering around the margin neither flaps in nor out.
With ``enforce=False`` the guardrail only monitors: holdout, tests and
state transitions run and are reported, but no request is forced to the full
arm. A domain is tested every ``check_every`` new values of it. Repeated testing
makes the false-alarm rate per check ``alpha`` but larger over a long run; the
benchmark reports the rate measured on a stationary stream.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist

from stopbandit.errors import ConfigError, require_positive_ints
from stopbandit import validation

UNKNOWN_DOMAIN = "unknown"
STATES = ("ok", "fallback")


def _unit(name: str, value: object, *, low_open: bool = False, high_open: bool = False) -> float:
    return validation.number(value, f"guardrail.{name}", low=0.0, high=1.0, low_open=low_open, high_open=high_open)


OTHER_DOMAINS = "(other)"
"""The bucket shared by domains beyond ``GuardrailConfig.max_domains`` (tested together)."""


@dataclass(frozen=True, slots=True)
class GuardrailConfig:
    """Holdout, test and hysteresis settings (see the module docstring for the rule)."""

    holdout_share: float = 0.02
    margin: float = 0.10
    release_margin: float | None = None
    alpha: float = 0.01
    release_alpha: float = 0.05
    window: int = 300
    min_n: int = 150
    check_every: int = 50
    probe_share: float = 0.05
    paired: bool = True
    enforce: bool = True
    max_domains: int = 1000  # domains tested on their own; later ones share the OTHER_DOMAINS bucket

    def __post_init__(self) -> None:
        _unit("holdout_share", self.holdout_share, high_open=True)
        _unit("margin", self.margin, low_open=True, high_open=True)
        if self.release_margin is not None:
            r = _unit("release_margin", self.release_margin, high_open=True)
            if r >= self.margin:
                raise ConfigError(
                    f"guardrail.release_margin must be below margin={self.margin:g} (hysteresis), got {r:g}"
                )
        _unit("alpha", self.alpha, low_open=True, high_open=True)
        _unit("release_alpha", self.release_alpha, low_open=True, high_open=True)
        _unit("probe_share", self.probe_share)
        require_positive_ints("guardrail.", window=self.window, min_n=self.min_n, check_every=self.check_every)
        if self.min_n < 2 or self.min_n > self.window:
            raise ConfigError(f"guardrail.min_n must be in [2, window={self.window}], got {self.min_n}")
        validation.within(self.max_domains, "guardrail.max_domains", low=1, high=1_000_000, integral=True)
        for name in ("paired", "enforce"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"guardrail.{name} must be true or false, got {getattr(self, name)!r}")

    @property
    def effective_release_margin(self) -> float:
        return self.margin / 2 if self.release_margin is None else self.release_margin

    @property
    def z_engage(self) -> float:
        return NormalDist().inv_cdf(1 - self.alpha)

    @property
    def z_release(self) -> float:
        return NormalDist().inv_cdf(1 - self.release_alpha)


@dataclass(frozen=True, slots=True)
class Check:
    """One evaluation of a domain. ``z``: the statistic at the margin that applied (engage or release)."""

    method: str  # paired | unpaired | insufficient
    n_control: int
    n_policy: int
    n_pairs: int
    control_em: float | None
    policy_em: float | None
    relative_loss: float | None
    z: float | None
    threshold: float
    margin: float


@dataclass(frozen=True, slots=True)
class Transition:
    domain: str
    to: str
    ts: float
    check: Check

    def describe(self) -> str:
        c = self.check
        verb = "engaged (fallback to the full arm)" if self.to == "fallback" else "released"
        return (
            f"guardrail {verb} for domain {self.domain!r}: {c.method} test, control EM {c.control_em:.4f}, "
            f"policy EM {c.policy_em:.4f}, relative loss {c.relative_loss:+.4f} vs margin {c.margin:g}, "
            f"z={c.z:+.2f} (threshold {c.threshold:+.2f}; n_control={c.n_control}, n_policy={c.n_policy}, "
            f"n_pairs={c.n_pairs})"
        )


@dataclass(frozen=True, slots=True)
class DomainStatus:
    domain: str
    state: str
    since: float | None
    engagements: int
    releases: int
    last_check: Check | None


@dataclass(slots=True)
class _Domain:
    control: deque[float]
    policy: deque[float]
    pairs: deque[tuple[float, float]]
    state: str = "ok"
    since: float | None = None
    fresh: int = 0
    engagements: int = 0
    releases: int = 0
    last: Check | None = None


def _mean_var(xs: Iterable[float]) -> tuple[float, float, int]:
    vals = list(xs)
    n = len(vals)
    m = math.fsum(vals) / n
    v = math.fsum((x - m) ** 2 for x in vals) / (n - 1) if n > 1 else 0.0
    return m, v, n


def _z(num: float, se: float) -> float:
    if se > 0:
        return num / se
    return math.copysign(math.inf, num) if num != 0 else 0.0


def ratio_test(control: Iterable[float], policy: Iterable[float], pairs: Iterable[tuple[float, float]], *,
               margin: float, min_n: int, paired: bool = True) -> Check:
    """The test of the module docstring at ``margin``; ``z > 0`` means the policy looks worse than ``1 − margin``."""
    pairs = list(pairs)
    control, policy = list(control), list(policy)
    k = 1.0 - margin
    if paired and len(pairs) >= min_n:
        c_m = math.fsum(c for c, _ in pairs) / len(pairs)
        p_m = math.fsum(p for _, p in pairs) / len(pairs)
        d_m, d_v, n = _mean_var(k * c - p for c, p in pairs)
        z = _z(d_m, math.sqrt(d_v / n))
        method = "paired"
    elif len(control) >= min_n and len(policy) >= min_n:
        c_m, c_v, nc = _mean_var(control)
        p_m, p_v, np_ = _mean_var(policy)
        z = _z(k * c_m - p_m, math.sqrt(k * k * c_v / nc + p_v / np_))
        method = "unpaired"
    else:
        c_m = math.fsum(control) / len(control) if control else None  # type: ignore[assignment]
        p_m = math.fsum(policy) / len(policy) if policy else None  # type: ignore[assignment]
        z, method = None, "insufficient"  # type: ignore[assignment]
    rel = (1.0 - p_m / c_m) if (c_m and p_m is not None) else None
    return Check(method, len(control), len(policy), len(pairs), c_m, p_m, rel, z, math.nan, margin)


class Guardrail:
    """Per-domain state machine ``ok ⇄ fallback`` fed with control, policy and paired EM values. Thread-safe."""

    def __init__(self, config: GuardrailConfig | None = None) -> None:
        config = GuardrailConfig() if config is None else config
        if not isinstance(config, GuardrailConfig):
            raise ConfigError(f"guardrail config must be a GuardrailConfig, got {type(config).__name__}")
        self.config = config
        self._z_engage = config.z_engage
        self._z_release = config.z_release
        self._lock = threading.Lock()
        self._domains: dict[str, _Domain] = {}
        self._folded = 0
        self._fallback: frozenset[str] = frozenset()
        self._transitions: deque[Transition] = deque(maxlen=1000)

    # -- the serving path reads these ----------------------------------------------
    @property
    def any_fallback(self) -> bool:
        return bool(self._fallback)

    def in_fallback(self, domain: str | None) -> bool:
        key = domain or UNKNOWN_DOMAIN
        fallback = self._fallback
        if not fallback:
            return False
        return key in fallback or (OTHER_DOMAINS in fallback and key not in self._domains)

    @property
    def folded(self) -> int:
        """Values of domains beyond ``max_domains``, fed to the shared OTHER_DOMAINS bucket."""
        return self._folded

    @property
    def fallback_domains(self) -> frozenset[str]:
        return self._fallback

    # -- feeding -------------------------------------------------------------------
    def _domain(self, domain: str | None) -> tuple[str, _Domain]:
        key = domain or UNKNOWN_DOMAIN
        d = self._domains.get(key)
        if d is None and len(self._domains) >= self.config.max_domains:
            self._folded += 1
            key = OTHER_DOMAINS
            d = self._domains.get(key)
        if d is None:
            w = self.config.window
            d = self._domains[key] = _Domain(deque(maxlen=w), deque(maxlen=w), deque(maxlen=w))
        return key, d

    def observe_control(self, domain: str | None, em: float, policy_em: float | None = None) -> Transition | None:
        """A full-arm outcome; ``policy_em``: the policy's exact EM on the same request (from its trace), if known."""
        with self._lock:
            key, d = self._domain(domain)
            d.control.append(float(em))
            if policy_em is not None:
                d.pairs.append((float(em), float(policy_em)))
            return self._tick(key, d)

    def observe_policy(self, domain: str | None, em: float) -> Transition | None:
        """An outcome of a decision the policy served."""
        with self._lock:
            key, d = self._domain(domain)
            d.policy.append(float(em))
            return self._tick(key, d)

    def _tick(self, key: str, d: _Domain) -> Transition | None:
        d.fresh += 1
        if d.fresh < self.config.check_every:
            return None
        d.fresh = 0
        return self._evaluate(key, d)

    def _evaluate(self, key: str, d: _Domain) -> Transition | None:
        cfg = self.config
        engaged = d.state == "fallback"
        margin = cfg.effective_release_margin if engaged else cfg.margin
        check = ratio_test(d.control, d.policy, d.pairs, margin=margin, min_n=cfg.min_n, paired=cfg.paired)
        threshold = -self._z_release if engaged else self._z_engage
        check = Check(check.method, check.n_control, check.n_policy, check.n_pairs, check.control_em,
                      check.policy_em, check.relative_loss, check.z, threshold, margin)
        d.last = check
        if check.z is None:
            return None
        now = time.time()
        if not engaged and check.z > threshold:
            d.state, d.since = "fallback", now
            d.engagements += 1
            d.control.clear()
            d.policy.clear()
            d.pairs.clear()
            self._fallback = self._fallback | {key}
        elif engaged and check.z < threshold:
            d.state, d.since = "ok", now
            d.releases += 1
            self._fallback = self._fallback - {key}
        else:
            return None
        t = Transition(key, d.state, now, check)
        self._transitions.append(t)
        return t

    # -- reading --------------------------------------------------------------------
    def status(self) -> dict[str, DomainStatus]:
        with self._lock:
            return {k: DomainStatus(k, d.state, d.since, d.engagements, d.releases, d.last)
                    for k, d in sorted(self._domains.items())}

    def transitions(self) -> list[Transition]:
        with self._lock:
            return list(self._transitions)


__all__ = [
    "OTHER_DOMAINS",
    "STATES",
    "UNKNOWN_DOMAIN",
    "Check",
    "DomainStatus",
    "Guardrail",
    "GuardrailConfig",
    "Transition",
    "ratio_test",
]
