"""stopbandit: per-request early stopping of LLM reasoning, chosen by a contextual bandit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from stopbandit.bandit.selector import Decision, Selector

__all__ = ["Decision", "Selector", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy so `import stopbandit` stays cheap for the CLI's --help.
    if name in ("Selector", "Decision"):
        from stopbandit.bandit import selector

        return getattr(selector, name)
    raise AttributeError(name)
