"""Prometheus metrics of one gateway, in its own registry (two gateways in one process never share counters).

Counters and a latency histogram are updated on the request path; the
Selector's health (store, backlog, λ) and the shadow agreement are read when
``/metrics`` is scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Live:
    """Gauges computed at scrape time from ``read()`` -> {name: (help, value)}."""

    def __init__(self, read: Callable[[], dict[str, tuple[str, float | None]]]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, (doc, value) in self.read().items():
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=float(value))


class GatewayMetrics:
    def __init__(self, live: Callable[[], dict[str, tuple[str, float | None]]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("stopbandit_gateway_requests", "Completion requests by arm, way of running it and "
                                "HTTP status.", ["arm", "mode", "status"], registry=self.registry)
        self.tokens = Counter("stopbandit_gateway_tokens", "Completion tokens as the engine reported them, by kind.",
                              ["kind"], registry=self.registry)
        self.upstream_errors = Counter("stopbandit_gateway_upstream_errors", "Requests failed by the upstream "
                                       "(502/504).", ["status"], registry=self.registry)
        self.rewards = Counter("stopbandit_gateway_rewards", "Rewards posted, by result.", ["result"],
                               registry=self.registry)
        self.latency = Histogram("stopbandit_gateway_latency_seconds", "Wall time of completion requests.",
                                 ["mode"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.registry.register(_Live(live))  # type: ignore[arg-type]

    def count_tokens(self, think: int | None, probes: int, answer: int | None, total: int) -> None:
        self.tokens.labels("total").inc(total)
        self.tokens.labels("probe").inc(probes)
        if think is not None:
            self.tokens.labels("thinking").inc(think)
        if answer is not None:
            self.tokens.labels("answer").inc(answer)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def health_gauges(health: Any, shadow: Any | None, upstream_ok: bool) -> dict[str, tuple[str, float | None]]:
    """The scrape-time gauges from a Selector ``Health`` and the shadow state."""
    return {
        "stopbandit_gateway_upstream_ok": ("1 when the upstream answered its last check.", float(upstream_ok)),
        "stopbandit_store_ok": ("1 when the replay store takes writes.", float(health.store_ok)),
        "stopbandit_lambda": ("The price of a token in the reward.", health.lam),
        "stopbandit_decisions": ("Decisions made by this gateway's Selector.", health.decisions),
        "stopbandit_rewards": ("Rewards learned by this gateway's Selector.", health.rewards),
        "stopbandit_pending_rewards": ("Decisions waiting for their reward.", health.pending_rewards),
        "stopbandit_writer_queue_depth": ("Rows waiting for the store.", health.queue_depth),
        "stopbandit_spill_backlog": ("Rows spilled while the store is down.", health.spill_backlog),
        "stopbandit_shadow_agreement": ("Share of requests where the policy chose the shadow baseline arm.",
                                        shadow.agreement if shadow is not None else None),
    }


__all__ = ["CONTENT_TYPE", "GatewayMetrics", "health_gauges"]
