"""stopbandit: per-request early stopping of LLM reasoning, chosen by a contextual bandit.

The top level is the curated surface a service needs; everything else imports
as ``stopbandit.<part>``. Names load on first use, so ``import stopbandit``
(and the CLI's ``--help``) stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from stopbandit._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from stopbandit.bandit.arms import Arm
    from stopbandit.config import SelectorConfig
    from stopbandit.control.serving import ControlledSelector
    from stopbandit.errors import (
        ConfigError,
        ConflictError,
        InputError,
        SnapshotError,
        StopbanditError,
        StoreError,
        UnknownDecisionError,
    )
    from stopbandit.serving.decision import Decision, Health
    from stopbandit.serving.selector import Selector

_LAZY = {
    "Selector": "stopbandit.serving.selector",
    "Decision": "stopbandit.serving.decision",
    "Health": "stopbandit.serving.decision",
    "SelectorConfig": "stopbandit.config",
    "Arm": "stopbandit.bandit.arms",
    "ControlledSelector": "stopbandit.control.serving",
    "StopbanditError": "stopbandit.errors",
    "ConfigError": "stopbandit.errors",
    "InputError": "stopbandit.errors",
    "UnknownDecisionError": "stopbandit.errors",
    "ConflictError": "stopbandit.errors",
    "SnapshotError": "stopbandit.errors",
    "StoreError": "stopbandit.errors",
}

__all__ = ["Arm", "ConfigError", "ConflictError", "ControlledSelector", "Decision", "Health", "InputError",
           "Selector", "SelectorConfig", "SnapshotError", "StopbanditError", "StoreError", "UnknownDecisionError",
           "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stopbandit' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
