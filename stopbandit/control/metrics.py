"""Prometheus metrics of a :class:`~stopbandit.control.serving.ControlledSelector` (prometheus_client).

Each wrapper owns a :class:`ControlMetrics` with its *own*
``CollectorRegistry`` (never the process-global one), so two wrappers in one
process, or a test, never collide. Two kinds of metrics:

* event counters, updated as decisions and outcomes pass through the wrapper:
  ``stopbandit_decisions_total{experiment,route,arm,domain}`` (the arm mix;
  ``route`` = policy | challenger | holdout | fallback),
  ``stopbandit_outcome_em{experiment,arm,domain}`` (a summary: ``_sum/_count`` is
  the mean EM), ``stopbandit_outcome_tokens{experiment,arm,domain}`` (a
  histogram), ``stopbandit_guardrail_transitions_total{domain,to}``;
* live state, read when scraped: ``stopbandit_lambda``, the controller
  (``stopbandit_controller_error`` — the relative target error of the last
  step — ``_window_error``, ``_window_tokens``, ``_window_em``, ``_target``,
  ``_setpoint``, ``_saturated``, ``_steps_total``, ``_moves_total``, and the
  domain-mix feed-forward's ``_mix_share{domain}`` and ``_mix_pending``), the guardrail
  (``stopbandit_guardrail_fallback{domain}`` 0/1, ``_z``, ``_relative_loss``,
  ``_control_em``, ``_policy_em``), the challenger share, and the store as
  ``Selector.health()`` reports it (``stopbandit_store_ok``,
  ``stopbandit_store_write_lag_seconds``, ``_queue_depth``, ``_spill_backlog``, ``_unspilled``,
  ``stopbandit_store_spilled_total``, ``_dropped_total``, ``_rejected_total``, ``_conflicts_total``,
  ``_replay_errors_total``, ``_overloads_total``), and
  conservative exploration's budget when a baseline is configured
  (``stopbandit_budget_total{baseline}``, ``_spent``, ``_left``, ``_restricted_total``).

Domains become label values; to bound the series count, the first
``max_domains`` distinct domains keep their name and later ones are reported
as ``other``.

:meth:`ControlMetrics.serve` exposes the registry over HTTP
(``prometheus_client.start_http_server`` on the wrapper's registry); port 0
picks a free port, read back from :attr:`MetricsServer.port`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Summary, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from stopbandit import validation
from stopbandit.errors import ConfigError

TOKEN_BUCKETS = (64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 8192, 16384, math.inf)
OTHER = "other"


@dataclass
class MetricsServer:
    """A running exposition endpoint; :meth:`close` stops it."""

    host: str
    port: int
    _server: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def start_metrics_server(registry: CollectorRegistry, port: int = 0, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve ``registry`` at ``http://addr:port/metrics`` from a daemon thread (port 0: any free port)."""
    from prometheus_client import start_http_server

    validation.within(port, "metrics port", low=0, high=65535, integral=True)
    started = start_http_server(port, addr=addr, registry=registry)
    if not isinstance(started, tuple):  # pragma: no cover - prometheus_client < 0.17
        raise ConfigError("prometheus_client >= 0.17 is needed to serve metrics (start_http_server returns the server)")
    server, thread = started
    return MetricsServer(addr, int(server.server_port), server, thread)


class _LiveCollector(Collector):
    """Reads the wrapper's state at scrape time (see the module docstring)."""

    def __init__(self, metrics: ControlMetrics, source: Callable[[], Any]) -> None:
        self._m = metrics
        self._source = source

    def describe(self) -> list[Any]:
        return []  # unchecked collector: the families depend on the state (controller and guardrail optional)

    def collect(self) -> Iterator[Any]:
        ns = self._m.namespace
        h = self._source()
        sel = h.selector

        def gauge(name: str, doc: str, value: float | None, labels: dict[str, str] | None = None):
            fam = GaugeMetricFamily(f"{ns}_{name}", doc, labels=list(labels) if labels else None)
            if value is not None and math.isfinite(value):
                fam.add_metric(list(labels.values()) if labels else [], float(value))
            return fam

        yield gauge("lambda", "λ in force (reward = em − λ·tokens/token_scale)", h.lam)
        yield gauge("store_ok", "1 when the replay store accepts writes", 1.0 if sel.store_ok else 0.0)
        yield gauge("store_write_lag_seconds", "Age of the oldest row not yet written to the store", sel.write_lag_s)
        yield gauge("store_queue_depth", "Rows queued for the background writer", sel.queue_depth)
        yield gauge("store_spill_backlog", "Rows waiting in the spill file for the store", sel.spill_backlog)
        yield gauge("store_unspilled", "Rows held in memory: the store and the spill's disk both refused them",
                    sel.unspilled)
        for name, doc, v in (("store_spilled", "Rows written to the spill file", sel.spilled),
                             ("store_dropped", "Rows dropped (spill full)", sel.dropped),
                             ("store_rejected", "Rows the store refused", sel.rejected),
                             ("store_conflicts", "Rows refused: their key is stored for a different row",
                              sel.conflicts),
                             ("store_replay_errors", "Spill replay steps that failed on the local disk",
                              sel.replay_errors),
                             ("store_overloads", "Times the writer fell behind and spilled its queue",
                              sel.overloads)):
            fam = CounterMetricFamily(f"{ns}_{name}", doc)
            fam.add_metric([], float(v))
            yield fam
        if sel.budget_baseline is not None:  # conservative exploration ([exploration] baseline)
            base = {"baseline": sel.budget_baseline}
            yield gauge("budget_total", "Cumulative served reward the operator allows to give up against the baseline",
                        sel.budget_total, base)
            yield gauge("budget_spent", "Loss against the baseline the lower bound cannot rule out (reward units)",
                        sel.budget_spent, base)
            yield gauge("budget_left", "Budget left for exploration (< 0: the baseline or greedy arm is served)",
                        sel.budget_left, base)
            fam = CounterMetricFamily(f"{ns}_budget_restricted", "Decisions whose exploration the budget cut down")
            fam.add_metric([], float(sel.budget_restricted))
            yield fam
        routes = GaugeMetricFamily(f"{ns}_route_share", "Configured traffic share per route", labels=["route"])
        routes.add_metric(["holdout"], h.holdout_share)
        routes.add_metric(["challenger"], h.challenger_share if h.challenger_active else 0.0)
        yield routes
        c = h.controller
        if c is not None:
            kind = {"kind": c.target}
            yield gauge("controller_target", "Controller target (tokens or EM)", c.target_value, kind)
            yield gauge("controller_setpoint", "Controller setpoint (target moved by its safety margin)", c.setpoint,
                        kind)
            yield gauge("controller_error", "Relative target error of the last step's batch", c.last_error)
            yield gauge("controller_window_error", "Relative target error over the rolling window", c.window_error)
            yield gauge("controller_window_tokens", "Mean tokens over the controller's rolling window", c.window_tokens)
            yield gauge("controller_window_em", "Mean EM over the controller's rolling window", c.window_em)
            sat = GaugeMetricFamily(f"{ns}_controller_saturated", "1 when λ is pinned at a bound by the error",
                                    labels=["direction"])
            sat.add_metric(["high"], 1.0 if c.saturated == "high" else 0.0)
            sat.add_metric(["low"], 1.0 if c.saturated == "low" else 0.0)
            yield sat
            yield gauge("controller_mix_pending", "Mix feed-forward λ move the step bound has not made yet",
                        c.mix_pending)
            mix = GaugeMetricFamily(f"{ns}_controller_mix_share", "Recent domain mix the mix feed-forward sees",
                                    labels=["domain"])
            shares: dict[str, float] = {}
            for domain, share in (c.mix_shares or {}).items():  # capped domains fold into "other"
                label = self._m.domain_label(domain)
                shares[label] = shares.get(label, 0.0) + share
            for label, share in sorted(shares.items()):
                mix.add_metric([label], share)
            yield mix
            yield gauge("controller_enabled", "1 when the controller steps", 1.0 if c.enabled else 0.0)
            for name, v in (("controller_steps", c.steps), ("controller_moves", c.moves)):
                fam = CounterMetricFamily(f"{ns}_{name}", f"Controller {name.split('_')[1]}")
                fam.add_metric([], float(v))
                yield fam
        if h.guardrail is not None:
            fams = {
                "fallback": GaugeMetricFamily(f"{ns}_guardrail_fallback", "1 while the domain is served the full arm",
                                              labels=["domain"]),
                "z": GaugeMetricFamily(f"{ns}_guardrail_z", "Last test statistic (engage or release margin)",
                                       labels=["domain"]),
                "relative_loss": GaugeMetricFamily(f"{ns}_guardrail_relative_loss",
                                                   "1 − policy EM / control EM, last check", labels=["domain"]),
                "control_em": GaugeMetricFamily(f"{ns}_guardrail_control_em", "Control (full arm) EM, last check",
                                                labels=["domain"]),
                "policy_em": GaugeMetricFamily(f"{ns}_guardrail_policy_em", "Policy EM, last check",
                                               labels=["domain"]),
            }
            seen: set[str] = set()
            for dom, st in h.guardrail.items():
                label = self._m.domain_label(dom)
                if label in seen:
                    continue
                seen.add(label)
                fams["fallback"].add_metric([label], 1.0 if st.state == "fallback" else 0.0)
                chk = st.last_check
                if chk is not None:
                    for key, v in (("z", chk.z), ("relative_loss", chk.relative_loss), ("control_em", chk.control_em),
                                   ("policy_em", chk.policy_em)):
                        if v is not None and math.isfinite(v):
                            fams[key].add_metric([label], float(v))
            yield from fams.values()


class ControlMetrics:
    """The wrapper's metrics in their own registry (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, namespace: str = "stopbandit",
                 max_domains: int = 32) -> None:
        validation.positive_ints("", max_domains=max_domains)
        self.registry = CollectorRegistry(auto_describe=True) if registry is None else registry
        self.namespace = namespace
        self.max_domains = max_domains
        self._domains: dict[str, str] = {}
        self._dlock = threading.Lock()
        r = self.registry
        self.decisions = Counter("decisions", "Decisions served, by experiment group, route, arm and domain",
                                 ["experiment", "route", "arm", "domain"], namespace=namespace, registry=r)
        self.em = Summary("outcome_em", "Exact match of rewarded decisions (_sum/_count = mean EM)",
                          ["experiment", "arm", "domain"], namespace=namespace, registry=r)
        self.tokens = Histogram("outcome_tokens", "Tokens spent by rewarded decisions (probes included)",
                                ["experiment", "arm", "domain"], namespace=namespace, registry=r,
                                buckets=TOKEN_BUCKETS)
        self.transitions = Counter("guardrail_transitions", "Guardrail state changes per domain",
                                   ["domain", "to"], namespace=namespace, registry=r)
        self._live: _LiveCollector | None = None

    def domain_label(self, domain: str | None) -> str:
        key = domain or "unknown"
        label = self._domains.get(key)
        if label is None:
            with self._dlock:
                label = self._domains.get(key)
                if label is None:
                    label = key if len(self._domains) < self.max_domains else OTHER
                    self._domains[key] = label
        return label

    def watch(self, source: Callable[[], Any]) -> None:
        """Read live state from ``source()`` (a ControlHealth) at every scrape."""
        if self._live is not None:
            self.registry.unregister(self._live)
        self._live = _LiveCollector(self, source)
        self.registry.register(self._live)

    def on_decision(self, experiment: str, route: str, arm: str, domain: str | None) -> None:
        self.decisions.labels(experiment, route, arm, self.domain_label(domain)).inc()

    def on_outcome(self, experiment: str, arm: str, domain: str | None, em: float, tokens: float) -> None:
        dom = self.domain_label(domain)
        self.em.labels(experiment, arm, dom).observe(em)
        self.tokens.labels(experiment, arm, dom).observe(tokens)

    def on_transition(self, domain: str, to: str) -> None:
        self.transitions.labels(self.domain_label(domain), to).inc()

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

    def serve(self, port: int = 0, addr: str = "127.0.0.1") -> MetricsServer:
        return start_metrics_server(self.registry, port, addr)


__all__ = ["TOKEN_BUCKETS", "ControlMetrics", "MetricsServer", "start_metrics_server"]
