"""``ControlledSelector``: a :class:`~stopbandit.bandit.selector.Selector` with λ control, guardrail and A/B.

Composition, not inheritance: the wrapper holds a serving Selector and has
the same ``choose``/``reward`` signatures (``choose`` always returns a
:class:`~stopbandit.bandit.selector.Decision`, ``reward`` returns None). Per
request it draws one uniform and routes:

* ``holdout`` (``guardrail.holdout_share``): the most lenient arm
  (``ArmSet.most_conservative()``, full reasoning), logged with
  ``experiment='holdout'``, probabilities one-hot, propensity 1;
* ``challenger`` (``challenger_share``): the candidate snapshot's own
  probabilities and propensity, ``experiment='challenger'``,
  ``policy_version`` = the candidate's version (:mod:`stopbandit.control.experiment`);
* otherwise the champion: ``Selector.choose`` itself (``experiment='champion'``).

If the guardrail (when it enforces) has the request's domain in fallback, a champion or
challenger request gets the full arm instead (propensity 1, its group kept,
``policy_version`` prefixed ``guardrail/``), except ``probe_share`` of the
champion's requests, which the policy keeps serving so recovery is observable.

Every outcome passing through :meth:`ControlledSelector.reward` feeds the
λ controller (by default every outcome except the guardrail's fallback ones;
see ``scope``), the guardrail (policy-served EM; full-arm EM, paired with
the champion policy's exact EM on the same request when the outcome carries a
probe trace) and the metrics. Every λ move goes through
``Selector.set_lambda(value, reason=<controller state>, who="controller")``,
so it is stored in ``lambda_changes`` and followed by every other Selector on
the store within its ``follow_interval``.

Interim, until the Selector grows the hook (see the final section of
``docs/benchmarks_control.md``): decisions the wrapper makes itself (holdout,
fallback, challenger) are written through the Selector's own writer with the
same row format as ``Selector.choose`` (same store, same spill path), their
outcomes likewise, and the champion's policy learns from holdout and fallback
outcomes (propensity 1, nested feedback from the trace) exactly as
``Selector.reward`` would. Those decisions bypass the Selector's reward window
(``reward_window_s``): their rewards are settled when they arrive. A reward
for a decision the wrapper no longer remembers goes to ``Selector.reward``,
which finds it in the store.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from stopbandit.bandit.selector import Decision, Health, Selector
from stopbandit.bandit.trace import ProbeTrace, answer_key, revealed_outcomes
from stopbandit.bandit.vw import shared_line
from stopbandit.control.controller import ControllerState, LambdaController, Target
from stopbandit.control.experiment import FORCED_PREFIX, HOLDOUT_PREFIX, Challenger, tagged_version
from stopbandit.control.guardrail import DomainStatus, Guardrail, GuardrailConfig, Transition
from stopbandit.control.metrics import ControlMetrics, MetricsServer
from stopbandit.errors import ConfigError, InputError, StopbanditError
from stopbandit.replay.store import check_same_outcome, outcome_row
from stopbandit.replay.validate import check_key

log = logging.getLogger("stopbandit.control")

ROUTES = ("policy", "challenger", "holdout", "fallback")
SCOPES = ("unforced", "served", "policy")
MAX_REMEMBERED = 200_000


@dataclass(slots=True)
class _Meta:
    """What the wrapper remembers of a decision until (and after) its reward."""

    route: str
    experiment: str
    domain: str | None
    arm: int
    own: bool
    shared: str | None = None
    lam: float = 0.0
    shadow: list[float] | None = None  # the champion's probabilities on a full-arm request (paired guardrail test)
    learn: bool = False
    done: tuple[float, int] | None = None


@dataclass(frozen=True, slots=True)
class ControlHealth:
    """The Selector's health plus the control layer's state (metrics are read from this)."""

    selector: Health
    lam: float
    routes: dict[str, int]
    rewards: int
    holdout_share: float
    challenger: str | None
    challenger_share: float
    challenger_active: bool
    controller: ControllerState | None
    guardrail: dict[str, DomainStatus] | None
    fallback: tuple[str, ...]
    last_error: str | None


def _check_text(value: str, what: str) -> None:
    if "\x00" in value:
        raise InputError(f"{what} must not contain NUL characters, got {value[:80]!r}")


class ControlledSelector:
    """A Selector with an online λ controller, a holdout guardrail and champion/challenger routing.

    ``controller``: a :class:`Target` or a :class:`LambdaController` (None: λ is
    left alone). ``guardrail``: a :class:`GuardrailConfig`, a :class:`Guardrail`,
    True for the defaults, or None (no holdout, no fallback). ``challenger``: a
    snapshot version (or a loaded :class:`Challenger`) served to
    ``challenger_share`` of the traffic. ``scope``: which outcomes the
    controller counts: ``unforced`` (default: everything but the guardrail's
    fallback decisions; the holdout is a fixed overhead the target absorbs,
    while chasing the cost of a fallback would raise λ on every other domain
    to pay for a safety override), ``served`` (everything) or ``policy``
    (decisions a policy chose: champion and challenger). ``seed``: routing randomness (one Generator). ``metrics``: the
    :class:`ControlMetrics` to update (None: a fresh one with its own
    registry). ``owns_selector``: :meth:`close` also closes the Selector.
    """

    def __init__(
        self,
        selector: Selector,
        *,
        controller: LambdaController | Target | None = None,
        guardrail: Guardrail | GuardrailConfig | bool | None = None,
        challenger: str | Challenger | None = None,
        challenger_share: float = 0.0,
        scope: str = "unforced",
        seed: int | None = None,
        metrics: ControlMetrics | None = None,
        owns_selector: bool = False,
    ) -> None:
        if not isinstance(selector, Selector):
            raise ConfigError(f"selector must be a Selector, got {type(selector).__name__}")
        if scope not in SCOPES:
            raise ConfigError(f"scope must be one of {list(SCOPES)}, got {scope!r}")
        if isinstance(controller, Target):
            controller = LambdaController(controller)
        if controller is not None and not isinstance(controller, LambdaController):
            raise ConfigError(f"controller must be a Target or a LambdaController, got {type(controller).__name__}")
        if guardrail is True:
            guardrail = Guardrail()
        elif guardrail is False:
            guardrail = None
        elif isinstance(guardrail, GuardrailConfig):
            guardrail = Guardrail(guardrail)
        if guardrail is not None and not isinstance(guardrail, Guardrail):
            raise ConfigError(f"guardrail must be a GuardrailConfig or a Guardrail, got {type(guardrail).__name__}")
        if isinstance(challenger_share, bool) or not isinstance(challenger_share, (int, float)) \
                or not 0.0 <= challenger_share < 1.0:
            raise ConfigError(f"challenger_share must be in [0, 1), got {challenger_share!r}")
        holdout = guardrail.config.holdout_share if guardrail is not None else 0.0
        if holdout + challenger_share >= 1.0:
            raise ConfigError(f"holdout_share {holdout:g} + challenger_share {challenger_share:g} must stay below 1")
        if challenger_share > 0 and challenger is None:
            raise ConfigError(f"challenger_share={challenger_share:g} needs a challenger snapshot version")
        self.selector = selector
        self.arms = selector.arms
        self.controller = controller
        self.guardrail = guardrail
        self.scope = scope
        self._owns = owns_selector
        self._holdout = float(holdout)
        self._full = self.arms.most_conservative()
        if isinstance(challenger, str):
            challenger = Challenger(selector.store, challenger, selector.config)
        if challenger is not None and not isinstance(challenger, Challenger):
            raise ConfigError(f"challenger must be a snapshot version or a Challenger, got {type(challenger).__name__}")
        self.challenger = challenger
        self._challenger_share = float(challenger_share) if challenger is not None else 0.0
        self._challenger_active = challenger is not None and self._challenger_share > 0
        self._seen_version = selector.policy_version
        metrics = ControlMetrics() if metrics is None else metrics
        if not isinstance(metrics, ControlMetrics):
            raise ConfigError(f"metrics must be a ControlMetrics or None, got {type(metrics).__name__}")
        self.metrics = metrics
        self._rng = np.random.default_rng(seed)
        self._rng_lock = threading.Lock()
        self._key_rng, self._key_pid = random.Random(os.urandom(32)), os.getpid()
        self._lock = threading.Lock()
        self._meta: OrderedDict[str, _Meta] = OrderedDict()
        self._routes = dict.fromkeys(ROUTES, 0)
        self._rewards = 0
        self._last_error: str | None = None
        self._servers: list[MetricsServer] = []
        self.metrics.watch(self.health)

    @classmethod
    def open(
        cls,
        url: str | None = None,
        *,
        controller: LambdaController | Target | None = None,
        guardrail: Guardrail | GuardrailConfig | bool | None = None,
        challenger: str | None = None,
        challenger_share: float = 0.0,
        scope: str = "unforced",
        seed: int | None = None,
        **selector_options: Any,
    ) -> ControlledSelector:
        """``Selector.open(url, seed=seed, **selector_options)`` wrapped (and owned: closing closes it)."""
        sel = Selector.open(url, seed=seed, **selector_options)
        try:
            return cls(sel, controller=controller, guardrail=guardrail, challenger=challenger,
                       challenger_share=challenger_share, scope=scope, seed=seed, owns_selector=True)
        except BaseException:
            sel.close()
            raise

    # -- routing -----------------------------------------------------------------------
    def _draw(self) -> tuple[float, float, float]:
        with self._rng_lock:
            u = self._rng.random(3)
        return float(u[0]), float(u[1]), float(u[2])

    def _new_key(self) -> str:
        pid = os.getpid()
        if pid != self._key_pid:
            self._key_rng, self._key_pid = random.Random(os.urandom(32)), pid
        return f"{self._key_rng.getrandbits(128):032x}"

    def _check_promoted(self) -> None:
        """Stop routing to the challenger once the champion runs a promotion of it."""
        version = self.selector.policy_version
        if version == self._seen_version:
            return
        with self._lock:
            if version == self._seen_version:
                return
            self._seen_version = version
        try:
            stored = self.selector.store.get_snapshot(version)
        except StopbanditError as exc:
            self._last_error = f"{type(exc).__name__}: {exc}"
            return
        if stored is not None and self.challenger is not None and \
                stored.meta.get("extra", {}).get("promoted_from") == self.challenger.version:
            self._challenger_active = False
            log.info("challenger %s was promoted (serving as %s): experiment ended", self.challenger.version, version)

    def end_experiment(self) -> None:
        """Stop routing traffic to the challenger (its logged decisions stay in the store)."""
        self._challenger_active = False

    def choose(self, prompt: str, *, domain: str | None = None, request_id: str | None = None,
               features: Mapping[str, Any] | None = None) -> Decision:
        """Route one request (holdout / challenger / champion, guardrail fallback) and log the decision."""
        sel = self.selector
        key = None
        if request_id is not None:
            key = check_key(request_id)
            _check_text(key, "request_id")
            if key in self._meta:
                raise InputError(f"request_id {key!r} was already used for a decision; ids must be unique")
        if self._challenger_active:
            self._check_promoted()
        u, u_probe, u_arm = self._draw()
        guard = self.guardrail
        route, group = "policy", "champion"
        if guard is not None and u < self._holdout:
            route, group = "holdout", "holdout"
        elif self._challenger_active and u < self._holdout + self._challenger_share:
            route, group = "challenger", "challenger"
        feats: dict[str, Any] | None = None
        if route != "holdout" and guard is not None and guard.any_fallback and guard.config.enforce:
            dom = domain
            if dom is None:
                feats = sel.extractor.extract(prompt, domain, features)
                dom = feats.get("domain")  # type: ignore[assignment]
            if guard.in_fallback(dom) and not (route == "policy" and u_probe < guard.config.probe_share):
                route = "fallback"
        if route == "policy":
            d = sel.choose(prompt, domain=domain, request_id=key, features=features)
            self._remember(d.decision_id, _Meta("policy", "champion", d.features.get("domain"),  # type: ignore[arg-type]
                                                d.arm_index, own=False))
            self.metrics.on_decision("champion", "policy", d.arm.name, d.features.get("domain"))  # type: ignore[arg-type]
            return d
        return self._own_decision(prompt, domain, key, features, feats, route, group, u_arm)

    def _own_decision(self, prompt: str, domain: str | None, key: str | None, features: Mapping[str, Any] | None,
                      feats: dict[str, Any] | None, route: str, group: str, u_arm: float) -> Decision:
        sel = self.selector
        ch = self.challenger
        if feats is None or (route == "challenger" and ch is not None):
            extractor = ch.extractor if route == "challenger" and ch is not None else sel.extractor
            feats = extractor.extract(prompt, domain, features)
        for name, value in feats.items():
            if isinstance(value, str):
                _check_text(value, "domain" if name == "domain" else f"feature {name!r}")
        key = self._new_key() if key is None else key
        lam = sel.lam
        shared = shared_line(feats)
        names = self.arms.names
        shadow = None
        if route == "challenger" and ch is not None:
            probs = ch.decide(feats, lam)
            idx, acc = len(probs) - 1, 0.0
            for i, p in enumerate(probs):
                acc += p
                if u_arm < acc:
                    idx = i
                    break
            prob_map = dict(zip(names, probs))
            version, learn = ch.version, False
        else:
            shadow, _ = sel.policy.decide(shared, lam)
            idx = self._full
            prob_map = {n: (1.0 if i == idx else 0.0) for i, n in enumerate(names)}
            base = ch.version if group == "challenger" and ch is not None else sel.policy_version
            version = tagged_version(HOLDOUT_PREFIX if route == "holdout" else FORCED_PREFIX, base)
            learn = True
        meta = _Meta(route, group, feats.get("domain"), idx, own=True, shared=shared, lam=lam,  # type: ignore[arg-type]
                     shadow=shadow, learn=learn)
        self._remember(key, meta)
        row = {
            "request_key": key, "ts": time.time(), "domain": feats.get("domain"), "features": feats,
            "arm": names[idx], "arm_index": idx, "probabilities": prob_map, "propensity": prob_map[names[idx]],
            "lam": lam, "token_scale": sel.config.token_scale, "policy_version": version, "experiment": group,
        }
        self._write("d", row)
        self.metrics.on_decision(group, route, names[idx], meta.domain)
        return Decision(key, self.arms[idx], idx, prob_map[names[idx]], prob_map, lam, version, feats)

    def _remember(self, key: str, meta: _Meta) -> None:
        with self._lock:
            if key in self._meta:
                raise InputError(f"request_id {key!r} was already used for a decision; ids must be unique")
            self._meta[key] = meta
            self._routes[meta.route] += 1
            if len(self._meta) > MAX_REMEMBERED:
                self._meta.popitem(last=False)

    def _write(self, kind: str, row: dict[str, Any]) -> None:
        writer = self.selector.writer
        if self.selector.config.store.durable:
            writer.write_now(kind, row)
        elif kind == "d":
            writer.submit_decision(row)
        else:
            writer.submit_outcome(row)

    # -- rewards ---------------------------------------------------------------------
    def reward(self, decision_id: str, em: float, tokens: int, *, latency_ms: float | None = None,
               trace: ProbeTrace | None = None, reference: str | None = None) -> None:
        """Report an outcome; same contract as ``Selector.reward`` (idempotent, conflicts raise)."""
        meta = self._meta.get(decision_id) if isinstance(decision_id, str) else None
        if meta is None or not meta.own:
            self.selector.reward(decision_id, em, tokens, latency_ms=latency_ms, trace=trace, reference=reference)
            if meta is None:
                return
            with self._lock:
                if meta.done is not None:
                    return
                meta.done = (float(em), int(tokens))
            self._account(meta, float(em), int(tokens), None)
            return
        if trace is not None and not isinstance(trace, ProbeTrace):
            raise InputError(f"trace must be a ProbeTrace or None, got {type(trace).__name__}")
        if reference is not None and not isinstance(reference, str):
            raise InputError(f"reference must be a string or None, got {type(reference).__name__}")
        row = outcome_row(decision_id, em, tokens, latency_ms,
                          trace=trace.hashed().to_json() if trace is not None else None,
                          reference_key=answer_key(reference) if reference is not None else None)
        with self._lock:
            if meta.done is not None:
                check_same_outcome(decision_id, {"em": meta.done[0], "tokens": meta.done[1]}, row)
                return
            meta.done = (row["em"], row["tokens"])
        self._write("o", row)
        revealed = None
        if trace is not None and reference is not None:
            revealed = revealed_outcomes(trace, self.arms.arms, reference)
        if meta.learn:
            self._learn(meta, row, revealed)
        self._account(meta, row["em"], row["tokens"], revealed)

    def _learn(self, meta: _Meta, row: Mapping[str, Any], revealed: dict[int, tuple[float | None, int]] | None) -> None:
        """What ``Selector.reward`` does for its own decisions: learn every revealed arm, update the domain prior."""
        sel = self.selector
        policy = sel.policy
        if revealed is not None:
            known = {k: (e, t) for k, (e, t) in revealed.items() if e is not None}
            known[meta.arm] = (row["em"], row["tokens"])
            policy.learn_revealed(meta.shared, known, meta.arm, 1.0, meta.lam)  # type: ignore[arg-type]
        else:
            policy.learn(meta.shared, meta.arm, row["em"], row["tokens"], 1.0, meta.lam)  # type: ignore[arg-type]
        sel.extractor.observe(meta.domain, row["em"])

    def _shadow_em(self, meta: _Meta, em: float, revealed: dict[int, tuple[float | None, int]] | None) -> float | None:
        """The champion's exact expected EM on this full-arm request, Σ_k π_k·EM_k, or None if not revealed."""
        if meta.shadow is None or revealed is None:
            return None
        total = 0.0
        for k, p in enumerate(meta.shadow):
            if p <= 0.0:
                continue
            if k == meta.arm:
                e: float | None = em
            else:
                got = revealed.get(k)
                e = got[0] if got is not None else None
            if e is None:
                return None
            total += p * e
        return total

    def _account(self, meta: _Meta, em: float, tokens: int,
                 revealed: dict[int, tuple[float | None, int]] | None) -> None:
        self.metrics.on_outcome(meta.experiment, self.arms[meta.arm].name, meta.domain, em, tokens)
        with self._lock:
            self._rewards += 1
        c = self.controller
        if c is not None and (self.scope == "served" or (self.scope == "unforced" and meta.route != "fallback")
                              or meta.route in ("policy", "challenger")):
            if c.observe(em, tokens):
                self._step_controller()
        g = self.guardrail
        if g is not None:
            t: Transition | None = None
            if meta.route == "policy":
                t = g.observe_policy(meta.domain, em)
            elif meta.route in ("holdout", "fallback"):
                t = g.observe_control(meta.domain, em, self._shadow_em(meta, em, revealed))
            if t is not None:
                log.warning(t.describe())
                self.metrics.on_transition(t.domain, t.to)

    def _step_controller(self) -> None:
        c = self.controller
        if c is None:
            return
        step = c.update(self.selector.lam)
        if step is None or not step.moved:
            return
        try:
            self.selector.set_lambda(step.lam_after, reason=step.reason, who="controller")
        except StopbanditError as exc:
            self._last_error = f"{type(exc).__name__}: {exc}"
            log.error("controller could not set λ: %s", exc)

    # -- state --------------------------------------------------------------------------
    @property
    def lam(self) -> float:
        return self.selector.lam

    def route_of(self, decision_id: str) -> str | None:
        """``policy`` / ``challenger`` / ``holdout`` / ``fallback`` for a decision still remembered, else None."""
        meta = self._meta.get(decision_id)
        return meta.route if meta is not None else None

    def experiment_of(self, decision_id: str) -> str | None:
        meta = self._meta.get(decision_id)
        return meta.experiment if meta is not None else None

    def health(self) -> ControlHealth:
        g = self.guardrail
        with self._lock:
            routes = dict(self._routes)
            rewards = self._rewards
        return ControlHealth(
            selector=self.selector.health(), lam=self.selector.lam, routes=routes, rewards=rewards,
            holdout_share=self._holdout, challenger=self.challenger.version if self.challenger else None,
            challenger_share=self._challenger_share, challenger_active=self._challenger_active,
            controller=self.controller.state() if self.controller is not None else None,
            guardrail=g.status() if g is not None else None,
            fallback=tuple(sorted(g.fallback_domains)) if g is not None else (),
            last_error=self._last_error,
        )

    def serve_metrics(self, port: int = 0, addr: str = "127.0.0.1") -> MetricsServer:
        """Expose this wrapper's metrics over HTTP (closed with the wrapper)."""
        server = self.metrics.serve(port, addr)
        self._servers.append(server)
        return server

    def flush(self, timeout: float = 30.0) -> bool:
        return self.selector.flush(timeout)

    def close(self) -> None:
        for s in self._servers:
            s.close()
        self._servers.clear()
        if self.challenger is not None:
            self.challenger.close()
        if self._owns:
            self.selector.close()

    def __enter__(self) -> ControlledSelector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["ROUTES", "SCOPES", "ControlHealth", "ControlledSelector"]
