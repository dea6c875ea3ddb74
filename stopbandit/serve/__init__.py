"""The gateway (``stopbandit serve``): an OpenAI-compatible service in front of the user's engine.

Needs the ``serve`` extra (FastAPI, uvicorn, httpx): ``pip install "stopbandit[serve]"``. The names
below load on first use, so ``stopbandit.serve.engines`` and ``.config`` stay importable without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from stopbandit.serve.app import create_app
    from stopbandit.serve.config import GatewayConfig
    from stopbandit.serve.engines import ENGINES, Engine
    from stopbandit.serve.runner import GatewayServer
    from stopbandit.serve.upstream import UpstreamError

__all__ = ["ENGINES", "Engine", "GatewayConfig", "GatewayServer", "UpstreamError", "create_app"]

_WHERE = {"create_app": "app", "GatewayConfig": "config", "ENGINES": "engines", "Engine": "engines",
          "GatewayServer": "runner", "UpstreamError": "upstream"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"stopbandit.serve.{_WHERE[name]}"), name)
    raise AttributeError(name)
