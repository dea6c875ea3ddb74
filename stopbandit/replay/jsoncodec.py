"""The replay layer's one JSON codec: the store's JSON columns, spill lines, and reading both back.

Why one module: the serving path encodes every logged row (features,
probabilities, traces) and OPE decodes every stored row, so these calls are
hot; orjson does both several times faster than the standard library.
orjson is a required dependency. The standard library is the fallback per
value: what orjson refuses (a numpy scalar, a non-string key, an integer over
64 bits; NaN/Infinity literals and other leniencies when decoding) goes
through :mod:`json`, so what can be stored and read back is what the
standard library accepts.

Output: :func:`dumps` gives a column's text (orjson's compact text; a value
only the standard library encodes gets ``json.dumps``'s default ``", "``/``": "``
separators); :func:`dumps_lines` gives compact JSON lines either way. orjson writes NaN as ``null``; every float that reaches the
store is checked finite before.

A value neither library can encode raises :class:`NotJSONError`, naming where
in the value the offending key or item is (``features.x``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from stopbandit.errors import InputError

import orjson

_STD_COMPACT = json.JSONEncoder(separators=(",", ":")).encode  # one encoder: ``json.dumps(..., separators=…)``
# builds a new one per call


class NotJSONError(InputError, TypeError):
    """A value that neither orjson nor the standard library can encode.

    A TypeError too, so callers that caught ``json``'s TypeError/ValueError keep working.
    """


def accelerator() -> str:
    """Which encoder is in use, for benchmark and diagnostic output."""
    return f"orjson {orjson.__version__}"


def dumps(value: Any) -> str:
    """The text of a JSON column's ``value`` (``"null"`` for None); NotJSONError if it is not JSON."""
    if value is None:
        return "null"
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        pass
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise _not_json(value, exc) from exc


def dumps_lines(values: Sequence[Any]) -> bytes:
    """``values`` as UTF-8 JSON lines (compact, one ``\\n`` after each); NotJSONError naming the bad one.

    All lines are encoded by orjson, or, if it refuses any, all by the standard library.
    """
    try:
        dumps_ = orjson.dumps
        return b"".join([dumps_(v) + b"\n" for v in values])
    except TypeError:
        pass
    enc = _STD_COMPACT
    try:
        return "".join([enc(v) + "\n" for v in values]).encode("utf-8")
    except (TypeError, ValueError) as exc:
        bad = next((i for i, v in enumerate(values) if not _std_ok(v)), None)
        if bad is None:  # pragma: no cover - every value encodes alone: the failure was elsewhere
            raise
        raise _not_json(values[bad], exc, f"line {bad + 1}" if len(values) > 1 else "") from exc


def loads(text: str | bytes) -> Any:
    """Decode one JSON text (orjson, the standard library for what orjson rejects); JSONDecodeError if neither can."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # a number past the interpreter's integer-conversion limit: not JSON we can read
        doc = text if isinstance(text, str) else text.decode("utf-8", "replace")
        raise json.JSONDecodeError(str(exc).split(";")[0], doc, 0) from None


def loads_many(values: Iterable[Any]) -> list[Any]:
    """``[loads(v) for v in values]``, values that are already decoded (dicts: a PostgreSQL driver's) kept as they are.

    The common case, every value a text orjson accepts, runs as one
    comprehension without the per-value fallback.
    """
    values = values if isinstance(values, Sequence) else list(values)
    try:
        fast = orjson.loads
        return [fast(v) for v in values]
    except (orjson.JSONDecodeError, TypeError):
        pass
    return [v if isinstance(v, dict) else loads(v) for v in values]


def _std_ok(value: Any) -> bool:
    try:
        _STD_COMPACT(value)
    except (TypeError, ValueError):
        return False
    return True


def _not_json(value: Any, exc: Exception, where: str = "") -> NotJSONError:
    """The error for ``value``, naming the path of the first key or item the standard library refuses."""
    at = ".".join(_bad_path(value, [], set())).replace(".[", "[") or "the value"
    return NotJSONError(f"{where + ', ' if where else ''}{at} is not JSON: {exc}")


def _bad_path(value: Any, path: list[str], seen: set[int]) -> list[str]:
    """Keys and indices down to the first part of ``value`` that does not encode (``path`` itself if none is found)."""
    if isinstance(value, dict):
        if id(value) in seen:
            return path
        seen.add(id(value))
        for k, v in value.items():
            if not (k is None or isinstance(k, (str, int, float, bool))):
                return [*path, f"<key {k!r}>"]
            if not _std_ok(v) or id(v) in seen:
                return _bad_path(v, [*path, str(k)], seen)
        return path
    if isinstance(value, (list, tuple)):
        if id(value) in seen:
            return path
        seen.add(id(value))
        for i, v in enumerate(value):
            if not _std_ok(v) or id(v) in seen:
                return _bad_path(v, [*path, f"[{i}]"], seen)
    return path


__all__ = ["NotJSONError", "accelerator", "dumps", "dumps_lines", "loads", "loads_many"]
