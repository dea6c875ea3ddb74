"""OpenAI-shaped error responses: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from fastapi.responses import JSONResponse

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 409: "conflict_error", 413: "invalid_request_error",
         415: "invalid_request_error", 422: "invalid_request_error", 502: "upstream_error",
         503: "service_unavailable", 504: "upstream_timeout"}


class FastJSON(JSONResponse):
    """A JSON response rendered by orjson (the hot path: completions and rewards)."""

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


def error_body(status: int, message: str, *, param: str | None = None) -> dict[str, object]:
    kind = TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def error_response(status: int, message: str, *, param: str | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    out = dict(headers or {})
    if status == 401:
        out.setdefault("WWW-Authenticate", "Bearer")
    return FastJSON(error_body(status, message, param=param), status_code=status, headers=out)


class HTTPProblem(Exception):
    """Raised inside a handler to answer with an OpenAI-shaped error."""

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


__all__ = ["FastJSON", "HTTPProblem", "error_body", "error_response"]
