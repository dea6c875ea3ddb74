"""The connection to the user's engine: one pooled ``httpx.AsyncClient`` with timeouts.

Every failure to get an OpenAI-shaped answer becomes an :class:`UpstreamError`
carrying the HTTP status the gateway answers with: 504 when the engine timed
out, 502 when it could not be reached, failed (5xx) or answered something that
is not JSON; a 4xx from the engine keeps its status (the request was bad, the
gateway passes the engine's reason on).
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import orjson

from stopbandit.errors import StopbanditError
from stopbandit.serve.config import GatewayConfig


JSON_HEADERS = {"Content-Type": "application/json"}


class UpstreamError(StopbanditError, RuntimeError):
    """The engine could not be reached, timed out, failed, or answered something unusable."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class Upstream:
    """Posts to ``{config.upstream}{path}``; one instance per gateway, shared by all requests."""

    def __init__(self, config: GatewayConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base = config.upstream
        headers = {"Authorization": f"Bearer {config.upstream_api_key}"} if config.upstream_api_key else {}
        limits = httpx.Limits(max_connections=config.max_connections, max_keepalive_connections=config.max_connections)
        if transport is None:  # pooled keep-alive connections; requests leave at once (no Nagle delay)
            transport = httpx.AsyncHTTPTransport(limits=limits, socket_options=[
                (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        self.client = httpx.AsyncClient(
            base_url=self.base,
            headers=headers,
            timeout=httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s),
            limits=limits,
            transport=transport,
        )
        self.calls = 0
        self.failures = 0

    async def close(self) -> None:
        await self.client.aclose()

    def _fail(self, message: str, status: int) -> UpstreamError:
        self.failures += 1
        return UpstreamError(message, status)

    async def get(self, path: str) -> tuple[dict[str, Any], httpx.Headers]:
        """GET a JSON object; returns it with the response headers."""
        self.calls += 1
        try:
            response = await self.client.get(path)
        except httpx.TimeoutException as exc:
            raise self._fail(f"upstream {self.base}{path} timed out ({type(exc).__name__})", 504) from None
        except httpx.HTTPError as exc:
            raise self._fail(f"cannot reach upstream {self.base}{path}: {type(exc).__name__}: {exc}", 502) from None
        return self._json(path, response), response.headers

    async def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST ``body`` as JSON; the engine's JSON object back."""
        self.calls += 1
        try:
            response = await self.client.post(path, content=orjson.dumps(body), headers=JSON_HEADERS)
        except httpx.TimeoutException as exc:
            raise self._fail(f"upstream {self.base}{path} timed out ({type(exc).__name__})", 504) from None
        except httpx.HTTPError as exc:
            raise self._fail(f"cannot reach upstream {self.base}{path}: {type(exc).__name__}: {exc}", 502) from None
        return self._json(path, response)

    async def stream(self, path: str, body: Mapping[str, Any]) -> AsyncIterator[bytes]:
        """POST ``body`` and yield the engine's SSE bytes as they arrive.

        Errors before the first byte raise :class:`UpstreamError`; the caller
        has not answered yet and can still send an error response.
        """
        self.calls += 1
        request = self.client.build_request("POST", path, content=orjson.dumps(body), headers=JSON_HEADERS)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise self._fail(f"upstream {self.base}{path} timed out ({type(exc).__name__})", 504) from None
        except httpx.HTTPError as exc:
            raise self._fail(f"cannot reach upstream {self.base}{path}: {type(exc).__name__}: {exc}", 502) from None
        if response.status_code >= 400:
            payload = await response.aread()
            await response.aclose()
            raise self._status_error(path, response.status_code, payload)
        return self._chunks(response, path)

    async def _chunks(self, response: httpx.Response, path: str) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            self.failures += 1
            raise UpstreamError(f"upstream {self.base}{path} broke off the stream: {type(exc).__name__}", 502) \
                from None
        finally:
            await response.aclose()

    def _status_error(self, path: str, status: int, payload: bytes) -> UpstreamError:
        detail = payload.decode("utf-8", "replace")[:500]
        try:
            parsed = json.loads(payload)
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                detail = str(parsed["error"].get("message", detail))
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
        if 400 <= status < 500:
            return UpstreamError(f"upstream rejected the request ({status}): {detail}", status)
        return self._fail(f"upstream error {status} from {self.base}{path}: {detail}", 504 if status == 504 else 502)

    def _json(self, path: str, response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            raise self._status_error(path, response.status_code, response.content)
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise self._fail(f"upstream {self.base}{path} answered non-JSON: {response.content[:200]!r}", 502) \
                from None
        if not isinstance(data, dict):
            raise self._fail(f"upstream {self.base}{path} answered {type(data).__name__}, expected an object", 502)
        return data


__all__ = ["Upstream", "UpstreamError"]
