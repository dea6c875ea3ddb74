"""The gateway (``stopbandit serve``): an OpenAI-compatible service in front of the user's engine.

Needs the ``serve`` extra (FastAPI, uvicorn, httpx): ``pip install "stopbandit[serve]"``.
"""

from stopbandit.serve.app import create_app
from stopbandit.serve.config import GatewayConfig
from stopbandit.serve.engines import ENGINES, Engine
from stopbandit.serve.runner import GatewayServer
from stopbandit.serve.upstream import UpstreamError

__all__ = ["ENGINES", "Engine", "GatewayConfig", "GatewayServer", "UpstreamError", "create_app"]
