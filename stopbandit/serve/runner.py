"""Running the gateway app on uvicorn: in the foreground (the CLI) or in a background thread (tests, benchmarks).

The socket is bound before uvicorn starts, so ``port=0`` gives a free port
whose number is known at once (:attr:`GatewayServer.url`), and with
``TCP_NODELAY``, which the connections it accepts inherit.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from stopbandit.errors import ConfigError, StopbanditError


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: a response's head and body go out at once, never held back by
    # Nagle's algorithm waiting for the client's delayed ACK (40 ms on Linux)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class GatewayServer:
    """Serves an ASGI ``app`` on ``host:port`` in a daemon thread.

    >>> # with GatewayServer(create_app(selector, config)) as gw: httpx.post(gw.url + "/v1/completions", ...)
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        self.sock = bind(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on", access_log=False,
                                                    timeout_graceful_shutdown=5))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> GatewayServer:
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                        name="stopbandit-gateway", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise StopbanditError(f"the gateway did not start on {self.url}")
            time.sleep(0.01)
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.server.should_exit = True
            self._thread.join(15)
            self._thread = None
        self.sock.close()

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_forever(app: Any, *, host: str, port: int, log_level: str = "info") -> None:
    """Serve in the foreground until interrupted (Ctrl-C / SIGTERM shut down gracefully)."""
    sock = bind(host, port)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on")).run(sockets=[sock])
    finally:
        sock.close()


__all__ = ["GatewayServer", "bind", "serve_forever"]
