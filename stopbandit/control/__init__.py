"""Online control of a serving Selector: λ controller, holdout guardrail, champion/challenger, metrics.

:class:`ControlledSelector` wraps a :class:`~stopbandit.serving.selector.Selector`
(same ``choose``/``reward``) and adds, each in its own module:

* :mod:`~stopbandit.control.controller`: dual ascent / PI on λ toward a token
  budget or an EM floor; every move is a logged ``set_lambda``;
  :mod:`~stopbandit.control.mix`: the domain-mix feed-forward it uses by default
  (a change of the traffic mix moves λ at once);
  :mod:`~stopbandit.control.feedforward`: the optional model-based feed-forward;
* :mod:`~stopbandit.control.guardrail`: a full-reasoning holdout as control and
  a per-domain fallback to the full arm, with a stated test and hysteresis;
* :mod:`~stopbandit.control.experiment`: a challenger snapshot on a share of
  traffic, ``ab_report`` and ``promote``;
* :mod:`~stopbandit.control.metrics`: Prometheus metrics in a per-wrapper registry;
* :mod:`~stopbandit.control.cli_commands`: ``stopbandit lambda …`` and ``stopbandit ab …``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Lazy re-exports (name -> module): importing the package, e.g. for the CLI
# groups in ``cli_commands``, does not load Vowpal Wabbit or prometheus_client.
_EXPORTS = {
    "ControllerConfig": "controller", "ControllerState": "controller", "LambdaController": "controller",
    "Step": "controller", "Target": "controller",
    "ABReport": "experiment", "Challenger": "experiment", "Promotion": "experiment", "ab_report": "experiment",
    "open_challenger": "experiment", "promote": "experiment",
    "ContextWindow": "feedforward", "Response": "feedforward", "MixTracker": "mix",
    "Check": "guardrail", "DomainStatus": "guardrail", "Guardrail": "guardrail", "GuardrailConfig": "guardrail",
    "Transition": "guardrail", "ratio_test": "guardrail",
    "ControlMetrics": "metrics", "MetricsServer": "metrics", "start_metrics_server": "metrics",
    "ControlHealth": "serving", "ControlledSelector": "serving",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stopbandit.control' has no attribute {name!r}")
    return getattr(import_module(f"stopbandit.control.{module}"), name)


__all__ = [
    "ABReport",
    "Challenger",
    "Check",
    "ControlHealth",
    "ControlMetrics",
    "ContextWindow",
    "ControlledSelector",
    "ControllerConfig",
    "ControllerState",
    "DomainStatus",
    "Guardrail",
    "GuardrailConfig",
    "LambdaController",
    "MetricsServer",
    "MixTracker",
    "Promotion",
    "Response",
    "Step",
    "Target",
    "Transition",
    "ab_report",
    "open_challenger",
    "promote",
    "ratio_test",
    "start_metrics_server",
]
