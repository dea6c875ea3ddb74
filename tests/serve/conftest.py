"""Shared fixtures: a Selector on a fresh SQLite store, gateways on real sockets, a stand-in engine,
and the real upstream engines (see :mod:`tests.serve.upstreams`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from stopbandit import Selector  # noqa: E402
from stopbandit.serve import GatewayConfig, GatewayServer, create_app  # noqa: E402
from tests.serve.toyengine import ToyEngine  # noqa: E402
from tests.serve.upstreams import llamacpp_upstream, tiny_upstream  # noqa: E402,F401 (fixtures)


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture
def selector(db_url) -> Iterator[Selector]:
    sel = Selector.open(db_url, lam=0.2, token_scale=1000, seed=0, follow=False)
    yield sel
    sel.close()


@pytest.fixture
def toy() -> Iterator[ToyEngine]:
    with ToyEngine("vllm") as engine:
        yield engine


@contextmanager
def running(selector: Selector, **settings: Any) -> Iterator[GatewayServer]:
    """A gateway over ``selector`` on a real socket, with ``settings`` for its GatewayConfig."""
    with GatewayServer(create_app(selector, GatewayConfig(**settings))) as server:
        yield server


@pytest.fixture
def gateway(selector) -> Callable[..., Any]:
    """``with gateway(upstream=url, ...) as gw:`` a gateway over the test's Selector."""
    return lambda **settings: running(selector, **settings)
