"""The ASGI app: OpenAI's completion endpoints plus rewards, λ, health and metrics.

``create_app(selector, config)`` builds a FastAPI app around one
:class:`~stopbandit.serve.gateway.Gateway`; ``stopbandit serve`` runs it on
uvicorn, tests run it in-process on a real socket. Every error is OpenAI-shaped
(``{"error": {"message", "type", "param", "code"}}``), never a traceback.
Bodies are read up to ``max_body_bytes`` (413 beyond).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from stopbandit._version import __version__
from stopbandit.serve.config import GatewayConfig
from stopbandit.serve.dashboard import router as dashboard_router
from stopbandit.serve.errors import FastJSON, HTTPProblem, error_response
from stopbandit.serve.gateway import Gateway
from stopbandit.serve.metrics import CONTENT_TYPE
from stopbandit.serve.schema import (CHAT_REQUEST, COMPLETION_REQUEST, COMPLETION_RESPONSE, ERRORS, HEALTH,
                                     LAMBDA, LAMBDA_CHANGE, REWARD_REQUEST, REWARD_RESPONSE, body_of, responses)
from stopbandit.serve.upstream import UpstreamError

log = logging.getLogger("stopbandit.serve")


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object, read up to ``limit`` bytes; 413/400 naming the problem."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPProblem(413, f"request body is {declared} bytes; the limit is {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise HTTPProblem(400, "request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HTTPProblem(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HTTPProblem(400, f"request body must be a JSON object, got a JSON {type(body).__name__}")
    return body


def create_app(selector: Any, config: GatewayConfig | None = None, *,
               transport: httpx.AsyncBaseTransport | None = None, close_selector: bool = False) -> FastAPI:
    """The gateway app over ``selector`` (a :class:`stopbandit.Selector`) and ``config.upstream``.

    ``close_selector``: close the Selector when the app shuts down (the CLI's case;
    tests that own the Selector close it themselves).
    """
    gw = Gateway(selector, config or GatewayConfig(), transport=transport)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await gw.ensure_engine()
        except UpstreamError as exc:
            log.warning("upstream not reachable at start (%s); the engine is detected on first use", exc)
            gw.upstream_ok, gw.upstream_error = False, str(exc)
        yield
        await gw.close()
        if close_selector:
            selector.close()

    app = FastAPI(title="stopbandit gateway", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible gateway that chooses an early-stopping arm per request and runs it "
                              "on the upstream engine.", docs_url=None, redoc_url=None)
    app.state.gateway = gw

    @app.exception_handler(HTTPProblem)
    async def _problem(request: Request, exc: HTTPProblem) -> JSONResponse:
        return error_response(exc.status, exc.message, param=exc.param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            detail = f"no such path {request.url.path}"
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            detail = f"method {request.method} is not allowed on {request.url.path}"
            allowed = sorted({m for route in app.routes if getattr(route, "path", None) == request.url.path
                              for m in (getattr(route, "methods", None) or ())})
            if allowed:
                headers["Allow"] = ", ".join(allowed)
        return error_response(exc.status_code, detail, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, f"invalid request: {exc.errors()[:3]}")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}")

    def _answer(status: int, headers: Mapping[str, str], payload: Any) -> Response:
        if isinstance(payload, dict):
            return FastJSON(payload, status_code=status, headers=dict(headers))
        return StreamingResponse(payload, status_code=status, headers=dict(headers), media_type="text/event-stream")

    async def _complete(request: Request, *, chat: bool) -> Response:
        gw.check_key(request.headers, completions=True)
        body = await read_json(request, gw.config.max_body_bytes)
        return _answer(*await gw.complete(body, request.headers, chat=chat))

    @app.post("/v1/chat/completions", openapi_extra=body_of(CHAT_REQUEST, gw.arm_names),
              responses=responses(COMPLETION_RESPONSE, 400, 401, 413, 502, 504))
    async def chat_completions(request: Request) -> Response:
        """Chat completion; the arm is chosen and run per request."""
        return await _complete(request, chat=True)

    @app.post("/v1/completions", openapi_extra=body_of(COMPLETION_REQUEST, gw.arm_names),
              responses=responses(COMPLETION_RESPONSE, 400, 401, 413, 502, 504))
    async def completions(request: Request) -> Response:
        """Text completion; the arm is chosen and run per request."""
        return await _complete(request, chat=False)

    @app.get("/v1/models", responses=responses({"type": "object"}, 401, 502, 504))
    async def models(request: Request) -> Response:
        """The upstream's model list, passed through."""
        gw.check_key(request.headers, completions=True)
        try:
            data, _ = await gw.upstream.get("/v1/models")
        except UpstreamError as exc:
            return error_response(exc.status, str(exc))
        return JSONResponse(data)

    @app.post("/v1/rewards", openapi_extra=body_of(REWARD_REQUEST),
              responses=responses(REWARD_RESPONSE, 400, 401, 404, 409, 413, 503))
    async def rewards(request: Request) -> Response:
        """Reward a decision: its EM; tokens and the probe trace come from what the gateway measured."""
        gw.check_key(request.headers)
        body = await read_json(request, gw.config.max_body_bytes)
        return FastJSON(await gw.reward(body))

    @app.get("/v1/lambda", responses=responses(LAMBDA, 401))
    async def get_lambda(request: Request) -> Response:
        """The current λ (reward = EM − λ·tokens/token_scale)."""
        gw.check_key(request.headers)
        return JSONResponse({"lambda": gw.selector.lam})

    @app.put("/v1/lambda", openapi_extra=body_of(LAMBDA_CHANGE), responses=responses(LAMBDA, 400, 401, 413))
    async def put_lambda(request: Request) -> Response:
        """Change λ now, with a reason (stored with the change)."""
        gw.check_key(request.headers)
        body = await read_json(request, gw.config.max_body_bytes)
        return JSONResponse(await gw.set_lambda(body))

    @app.get("/healthz", responses={200: {"description": "OK", "content": {"application/json": {"schema": HEALTH}}},
                                    503: {"description": "Unavailable",
                                          "content": {"application/json": {"schema": HEALTH}}}})
    async def healthz() -> Response:
        """The Selector's health and the upstream's; 503 while the upstream is unusable."""
        status, body = await gw.health()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics", responses={200: {"description": "Prometheus text", "content": {CONTENT_TYPE: {}}}})
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(gw.metrics.render(), media_type=CONTENT_TYPE)

    app.include_router(dashboard_router(lambda: gw.selector.store, key=gw.config.api_key, health=gw.selector.health,
                                        sweep_plot=os.environ.get("STOPBANDIT_SWEEP_PLOT")))
    return app


__all__ = ["ERRORS", "create_app", "read_json"]
