"""JSON schemas of the gateway's bodies, for ``/openapi.json``.

The handlers read raw JSON themselves (OpenAI's bodies carry many optional
fields that pass through to the engine untouched), so the schemas are declared
here rather than derived from models: they list what the gateway itself reads.
"""

from __future__ import annotations

from typing import Any

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type", "code"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": "integer"}}}},
}
OURS = {"type": "object", "properties": {"arm": {"type": "string", "minLength": 1}},
        "description": "Pin an arm: {\"arm\": \"full\"}"}
METADATA = {"type": "object", "properties": {"domain": {"type": "string", "minLength": 1}}}
MESSAGE = {"type": "object", "required": ["role"], "properties": {
    "role": {"type": "string"}, "content": {"anyOf": [{"type": "string"}, {"type": "array"}, {"type": "null"}]}}}
COMMON = {"model": {"type": "string", "minLength": 1}, "stream": {"type": "boolean"},
          "max_tokens": {"type": "integer", "minimum": 1}, "max_completion_tokens": {"type": "integer", "minimum": 1}, "metadata": METADATA, "stopbandit": OURS}
CHAT_REQUEST = {"type": "object", "required": ["messages"], "properties": {
    "messages": {"type": "array", "minItems": 1, "items": MESSAGE}, **COMMON}}
COMPLETION_REQUEST = {"type": "object", "required": ["prompt"], "properties": {
    "prompt": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1,
                                                "maxItems": 1}]}, **COMMON}}
COMPLETION_RESPONSE = {"type": "object", "required": ["choices"], "properties": {
    "id": {"type": "string"}, "object": {"type": "string"}, "choices": {"type": "array"},
    "usage": {"type": "object"}, "stopbandit": {"type": "object"}}}
REWARD_REQUEST = {"type": "object", "required": ["decision_id", "em"], "properties": {
    "decision_id": {"type": "string", "minLength": 1}, "em": {"type": "number", "minimum": 0, "maximum": 1},
    "tokens": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}, "reference": {"type": "string"}}}
REWARD_RESPONSE = {"type": "object", "required": ["decision_id", "status"], "properties": {
    "decision_id": {"type": "string"}, "status": {"type": "string"}}}
LAMBDA = {"type": "object", "required": ["lambda"], "properties": {"lambda": {"type": "number"}}}
LAMBDA_CHANGE = {"type": "object", "required": ["lambda", "reason"], "properties": {
    "lambda": {"type": "number", "minimum": 0}, "reason": {"type": "string", "minLength": 1}}}
HEALTH = {"type": "object", "required": ["status", "selector"], "properties": {
    "status": {"type": "string"}, "selector": {"type": "object"}, "upstream": {"type": "object"}}}
ERRORS = {400: "Bad request", 401: "Missing or wrong API key", 404: "Unknown decision", 409: "Conflicting reward",
          413: "Body too large", 500: "Internal error", 502: "Upstream failed", 503: "Unavailable",
          504: "Upstream timed out"}


def body_of(schema: dict[str, Any], arms: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The ``requestBody`` of an operation; ``arms``: the names a request may pin (an enum in the schema)."""
    if arms is not None and "stopbandit" in schema.get("properties", {}):
        ours = {"type": "object", "properties": {"arm": {"type": "string", "enum": list(arms)}},
                "description": OURS["description"]}
        schema = {**schema, "properties": {**schema["properties"], "stopbandit": ours}}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def responses(ok: dict[str, Any], *statuses: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {200: {"description": "OK", "content": {"application/json": {"schema": ok}}}}
    for status in statuses:
        out[status] = {"description": ERRORS[status], "content": {"application/json": {"schema": ERROR}}}
    return out


__all__ = ["ERRORS", "body_of", "responses"]
