"""``ControlledSelector``: a :class:`~stopbandit.serving.selector.Selector` with λ control, guardrail and A/B.

Composition, not inheritance: the wrapper holds a serving Selector and has
the same ``choose``/``reward`` signatures (``choose`` always returns a
:class:`~stopbandit.serving.selector.Decision`, ``reward`` returns None). Per
request it draws one uniform and routes:

* ``holdout`` (``guardrail.holdout_share``): the most lenient arm
  (``ArmSet.most_conservative()``, full reasoning), through
  ``Selector.choose_forced(arm=…, experiment="holdout", tag="holdout")``:
  probabilities one-hot, propensity 1, ``policy_version`` ``holdout/<version>``;
* ``challenger`` (``challenger_share``): a second Selector serving the
  candidate snapshot (:func:`~stopbandit.control.experiment.open_challenger`:
  frozen, follows λ, never swaps), ``experiment='challenger'``, its own
  probabilities and propensity, ``policy_version`` = the candidate's version;
* otherwise the champion: ``Selector.choose`` itself (``experiment='champion'``).

If the guardrail (when it enforces) has the request's domain in fallback, a champion or
challenger request gets the full arm instead (a forced arm, propensity 1, its group kept,
``policy_version`` prefixed ``guardrail/``), except ``probe_share`` of the
champion's requests, which the policy keeps serving so recovery is observable.

Every decision is made, logged and settled by a Selector, so rewards go
through ``Selector.reward`` (idempotency, conflicts, reward windows, spill,
counters, nested feedback): the champion learns from its own, holdout and
fallback outcomes, the challenger from none. The wrapper only remembers the
route of each decision for accounting. Every outcome passing through
:meth:`ControlledSelector.reward` feeds the λ controller (by default every
outcome except the guardrail's fallback ones; see ``scope``), the guardrail
(policy-served EM; full-arm EM, paired with the champion policy's exact EM on
the same request when the outcome carries a probe trace) and the metrics.
Every λ move goes through ``Selector.set_lambda(value, reason=<controller
state>, who="controller")``, so it is stored in ``lambda_changes`` and
followed by every other Selector on the store (the challenger's included)
within its ``follow_interval``. A reward for a decision the wrapper no longer
remembers (more than ``MAX_REMEMBERED`` ago) goes to the champion's
``Selector.reward``, which finds it in the store.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from stopbandit import validation
from stopbandit.bandit.trace import ProbeTrace, revealed_outcomes
from stopbandit.bandit.vw import shared_line
from stopbandit.control.controller import ControllerState, LambdaController, Target
from stopbandit.control.experiment import GUARDRAIL_TAG, HOLDOUT_TAG, Challenger, open_challenger
from stopbandit.control.feedforward import ContextWindow
from stopbandit.control.guardrail import DomainStatus, Guardrail, GuardrailConfig, Transition
from stopbandit.errors import ConfigError, InputError, StopbanditError
from stopbandit.serving.selector import Decision, Health, Selector

if TYPE_CHECKING:  # pragma: no cover
    from stopbandit.control.metrics import ControlMetrics, MetricsServer

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
    challenger: bool  # decided (and rewarded) by the challenger Selector
    shadow: list[float] | None = None  # the champion's probabilities on a full-arm request (paired guardrail test)
    done: tuple[float, int] | None = None
    learned: Any = None  # the learned stop rule's inputs the shadow's learned arms are read off the trace with


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
    challenger_selector: Health | None = None  # the challenger Selector's own store/writer health
    guardrail_folded: int = 0  # guardrail values of domains beyond guardrail.max_domains (the "(other)" bucket)


class _NoMetrics:
    """What a ControlledSelector records into when prometheus_client (the ``metrics`` extra) is not installed."""

    def watch(self, source: Any) -> None:
        return None

    def on_decision(self, experiment: str, route: str, arm: str, domain: str | None) -> None:
        return None

    def on_outcome(self, experiment: str, arm: str, domain: str | None, em: float, tokens: float) -> None:
        return None

    def on_transition(self, domain: str, to: str) -> None:
        return None

    def serve(self, port: int = 0, addr: str = "127.0.0.1") -> Any:
        raise ConfigError("metrics need prometheus_client: pip install 'stopbandit[metrics]'")


def _metrics_class() -> type:
    try:
        from stopbandit.control.metrics import ControlMetrics
    except ImportError:  # the optional ``metrics`` extra
        return _NoMetrics
    return ControlMetrics


def _default_metrics() -> Any:
    cls = _metrics_class()
    return cls()


class ControlledSelector:
    """A Selector with an online λ controller, a holdout guardrail and champion/challenger routing.

    ``controller``: a :class:`Target` or a :class:`LambdaController` (None: λ is
    left alone; with ``feedforward=True`` in its config the wrapper feeds it
    the champion policy's predicted response over its recent contexts, see
    :mod:`stopbandit.control.feedforward`). ``guardrail``: a
    :class:`GuardrailConfig`, a :class:`Guardrail`, True for the defaults, or
    None (no holdout, no fallback). ``challenger``: a snapshot version (or a
    loaded :class:`Challenger`; its version is served) served to
    ``challenger_share`` of the traffic by a second, frozen Selector.
    ``scope``: which outcomes the controller counts: ``unforced`` (default:
    everything but the guardrail's fallback decisions; the holdout is a fixed
    overhead the target absorbs, while chasing the cost of a fallback would
    raise λ on every other domain to pay for a safety override), ``served``
    (everything) or ``policy`` (decisions a policy chose: champion and
    challenger). ``seed``: routing randomness (one Generator; the challenger
    Selector gets ``seed + 1``). ``metrics``: the :class:`ControlMetrics` to
    update (None: a fresh one with its own registry). ``owns_selector``:
    :meth:`close` also closes the Selector (the challenger Selector is always
    the wrapper's own).
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
        validation.within(challenger_share, "challenger_share", low=0, high=1, high_open=True, expected="{range}")
        holdout = guardrail.config.holdout_share if guardrail is not None else 0.0
        if holdout + challenger_share >= 1.0:
            raise ConfigError(f"holdout_share {holdout:g} + challenger_share {challenger_share:g} must stay below 1")
        if challenger_share > 0 and challenger is None:
            raise ConfigError(f"challenger_share={challenger_share:g} needs a challenger snapshot version")
        if isinstance(challenger, Challenger):
            challenger = challenger.version
        if challenger is not None and not isinstance(challenger, str):
            raise ConfigError(f"challenger must be a snapshot version or a Challenger, got {type(challenger).__name__}")
        metrics = _default_metrics() if metrics is None else metrics
        if not isinstance(metrics, (_NoMetrics, _metrics_class())):
            raise ConfigError(f"metrics must be a ControlMetrics or None, got {type(metrics).__name__}")
        self.selector = selector
        self.arms = selector.arms
        self.controller = controller
        self.guardrail = guardrail
        self.scope = scope
        self._owns = owns_selector
        self._holdout = float(holdout)
        self._full_arm = self.arms[self.arms.most_conservative()].name
        self.challenger: Selector | None = None
        self.challenger_version: str | None = challenger
        if challenger is not None:
            self.challenger = open_challenger(selector, challenger, seed=None if seed is None else seed + 1)
        self._challenger_share = float(challenger_share) if challenger is not None else 0.0
        self._challenger_active = challenger is not None and self._challenger_share > 0
        self._seen_version = selector.policy_version
        self._contexts: ContextWindow | None = None
        if controller is not None and controller.config.feedforward:
            self._contexts = ContextWindow(controller.config.contexts, controller.config.calibration)
        self.metrics = metrics
        self._rng = np.random.default_rng(seed)
        self._rng_lock = threading.Lock()
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
    def _draw(self) -> tuple[float, float]:
        # Three uniforms per request, as before the Selector hook (the third sampled the
        # challenger's arm, which its own Selector does now): seeded routing is unchanged.
        with self._rng_lock:
            u = self._rng.random(3)
        return float(u[0]), float(u[1])

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
        if stored is not None and self.challenger_version is not None and \
                stored.meta.get("extra", {}).get("promoted_from") == self.challenger_version:
            self._challenger_active = False
            log.info("challenger %s was promoted (serving as %s): experiment ended", self.challenger_version, version)

    def end_experiment(self) -> None:
        """Stop routing traffic to the challenger (its logged decisions stay in the store)."""
        self._challenger_active = False

    def choose(self, prompt: str, *, domain: str | None = None, request_id: str | None = None,
               features: Mapping[str, Any] | None = None) -> Decision:
        """Route one request (holdout / challenger / champion, guardrail fallback); a Selector decides and logs."""
        sel = self.selector
        key = None
        if request_id is not None:
            key = validation.identifier(request_id, "request_id")
            if key in self._meta:
                raise InputError(f"request_id {key!r} was already used for a decision; ids must be unique")
        if self._challenger_active:
            self._check_promoted()
        u, u_probe = self._draw()
        guard = self.guardrail
        route, group = "policy", "champion"
        if guard is not None and u < self._holdout:
            route, group = "holdout", "holdout"
        elif self._challenger_active and u < self._holdout + self._challenger_share:
            route, group = "challenger", "challenger"
        if route != "holdout" and guard is not None and guard.any_fallback and guard.config.enforce:
            dom = domain
            if dom is None:
                dom = sel.extractor.extract(prompt, domain, features).get("domain")  # type: ignore[assignment]
            if guard.in_fallback(dom) and not (route == "policy" and u_probe < guard.config.probe_share):
                route = "fallback"
        by_challenger = group == "challenger" and self.challenger is not None
        target = self.challenger if by_challenger else sel
        if route == "policy" and group == "champion":
            d = target.choose(prompt, domain=domain, request_id=key, features=features)
        elif route in ("policy", "challenger"):
            d = target.choose_forced(prompt, domain=domain, request_id=key, features=features, experiment=group)
        else:
            d = target.choose_forced(prompt, domain=domain, request_id=key, features=features, arm=self._full_arm,
                                     experiment=group, tag=HOLDOUT_TAG if route == "holdout" else GUARDRAIL_TAG)
        shadow = learned = None
        if route in ("holdout", "fallback"):  # the champion's own choice on this request, for the paired test
            shadow, _ = sel.policy.decide(shared_line(d.features), d.lam)
            learned = sel.stop_inputs(d)
        elif route == "policy" and self._contexts is not None:
            self._contexts.add(d.decision_id, d.features, [d.probabilities[n] for n in self.arms.names])
        dom: str | None = d.features.get("domain")  # type: ignore[assignment]
        self._remember(d.decision_id, _Meta(route, group, dom, d.arm_index, by_challenger, shadow, learned=learned))
        self.metrics.on_decision(group, route, d.arm.name, dom)
        return d

    def _remember(self, key: str, meta: _Meta) -> None:
        with self._lock:
            self._meta[key] = meta
            self._routes[meta.route] += 1
            if len(self._meta) > MAX_REMEMBERED:
                self._meta.popitem(last=False)

    # -- rewards ---------------------------------------------------------------------
    def reward(self, decision_id: str, em: float, tokens: int, *, latency_ms: float | None = None,
               trace: ProbeTrace | None = None, reference: str | None = None) -> None:
        """Report an outcome; the deciding Selector's contract (idempotent, conflicts raise, windows)."""
        meta = self._meta.get(decision_id) if isinstance(decision_id, str) else None
        target = self.challenger if meta is not None and meta.challenger and self.challenger is not None \
            else self.selector
        target.reward(decision_id, em, tokens, latency_ms=latency_ms, trace=trace, reference=reference)
        if meta is None:
            return
        with self._lock:
            if meta.done is not None:
                return
            meta.done = (float(em), int(tokens))
        if meta.route == "policy" and self._contexts is not None:
            self._contexts.outcome(decision_id, em, tokens)
        revealed = None
        if meta.shadow is not None and trace is not None and reference is not None:
            revealed = revealed_outcomes(trace, self.arms.arms, reference, meta.learned)
        self._account(meta, float(em), int(tokens), revealed)

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
            if c.observe(em, tokens, meta.domain):  # the domain feeds the mix feed-forward
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
        lam = self.selector.lam
        model = None
        if self._contexts is not None:
            try:
                model = self._contexts.response(self.selector.policy, lam, min_contexts=c.config.interval // 2)
            except StopbanditError as exc:  # the model is an aid: without it the step is plain PI
                self._last_error = f"{type(exc).__name__}: {exc}"
        step = c.update(lam, model)
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
            holdout_share=self._holdout, challenger=self.challenger_version,
            challenger_share=self._challenger_share, challenger_active=self._challenger_active,
            controller=self.controller.state() if self.controller is not None else None,
            guardrail=g.status() if g is not None else None,
            fallback=tuple(sorted(g.fallback_domains)) if g is not None else (),
            last_error=self._last_error,
            challenger_selector=self.challenger.health() if self.challenger is not None else None,
            guardrail_folded=g.folded if g is not None else 0,
        )

    def serve_metrics(self, port: int = 0, addr: str = "127.0.0.1") -> Any:
        """Expose this wrapper's metrics over HTTP (closed with the wrapper)."""
        server = self.metrics.serve(port, addr)
        self._servers.append(server)
        return server

    def flush(self, timeout: float = 30.0) -> bool:
        ok = self.selector.flush(timeout)
        if self.challenger is not None:
            ok = self.challenger.flush(timeout) and ok
        return ok

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
