"""One place that checks numbers, text and ids, so every message has the same shape.

Every check names the field, what was expected and what was received
(``"controller.ki must be >= 0, got -0.1"``), and raises the caller's error
class: :class:`~stopbandit.errors.ConfigError` for settings (the default),
:class:`~stopbandit.errors.InputError` for request and log values. ``True``
is never a number here, although Python calls it an int.

Outcome values (EM, token counts, latencies) and request ids have their own
checks below: they run on the serving path, so their common case is a single
type test.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from numbers import Integral, Real
from typing import Any

from stopbandit.errors import ConfigError, InputError, StopbanditError, require_positive_ints

MAX_KEY = 128
"""Longest request id (characters)."""
MAX_TOKENS = 2**31 - 1
"""Largest token count (``outcomes.tokens`` is a 32-bit INTEGER on PostgreSQL)."""


def real(value: object, field: str, *, error: type[StopbanditError] = InputError) -> float:
    """A real number as a finite float: ``10**400``, NaN and infinities are refused by name, never overflow."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise error(f"{field} must be a finite number, got {value!r:.80}")
    try:
        v = float(value)
    except (OverflowError, ValueError):
        v = math.inf
    if not math.isfinite(v):
        raise error(f"{field} must be a finite number, got {_show(value)}")
    return v


def _show(value: object) -> str:
    """A value for a message: huge integers by their size, not 400 digits."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**18:
        return f"an integer of {len(str(abs(value)))} digits"
    return f"{value!r:.80}"


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_bound(low)}, {_bound(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_bound(low)}"
    return f"{'<' if high_open else '<='} {_bound(high)}"


def number(value: object, field: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False,
           error: type[StopbanditError] = ConfigError) -> float:
    """A finite real number within the given bounds, as a float.

    >>> number(0.5, "p", low=0, high=1)
    0.5
    >>> number(2, "p", low=0, high=1)
    Traceback (most recent call last):
    ...
    stopbandit.errors.ConfigError: p must be in [0, 1], got 2
    """
    low = low if low is not None and math.isfinite(low) else None  # an infinite bound is no bound
    high = high if high is not None and math.isfinite(high) else None
    if type(value) is float:  # the common case, without the abstract-class checks
        if not math.isfinite(value):
            raise error(f"{field} must be a finite number, got {value!r}")
        v = value
    else:  # ints (10**400 included), numpy scalars, and everything to refuse
        v = real(value, field, error=error)
    below = low is not None and (v <= low if low_open else v < low)
    above = high is not None and (v >= high if high_open else v > high)
    if below or above:
        raise error(f"{field} must be {_interval(low, high, low_open, high_open)}, got {value!r}")
    return v


def _bound(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def within(value: object, field: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, integral: bool = False, numpy: bool = False,
           expected: str | None = None, wrong_type: str | None = None,
           error: type[StopbanditError] = ConfigError) -> float:
    """A number of an exact kind within bounds; every refusal reads ``{field} must be {expected}, got {value!r}``.

    Accepts ``int`` and ``float`` (only ``int`` when ``integral``; numpy
    scalars too when ``numpy``), never ``bool``. A bound that is None or
    infinite is no bound. ``expected`` phrases the requirement, ``{range}``
    standing for the bounds (``in [0, 60]``, ``>= 1``); by default ``a finite
    number {range}`` or ``an integer {range}``. ``wrong_type`` replaces it
    for a value that is no number at all. Returns ``float(value)``, or the
    int itself when ``integral``.

    >>> within(90, "store.decision_wait", low=0, high=60, expected="{range} seconds")
    Traceback (most recent call last):
    ...
    stopbandit.errors.ConfigError: store.decision_wait must be in [0, 60] seconds, got 90
    """
    low = low if low is not None and math.isfinite(low) else None
    high = high if high is not None and math.isfinite(high) else None
    rng = _interval(low, high, low_open, high_open) if low is not None or high is not None else ""
    kinds: tuple[type, ...] = (int,) if integral else (int, float)
    if numpy:
        import numpy as np

        kinds += (np.integer,) if integral else (np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds):
        if wrong_type is not None:
            raise error(f"{field} must be {wrong_type}, got {value!r}")
        ok = False
    else:
        if integral:
            v = value  # compared exactly: an int of any size
            ok = True
        else:
            try:
                v = float(value)  # type: ignore[arg-type]
            except OverflowError:
                v = math.inf
            ok = math.isfinite(v)
        if low is not None:
            ok = ok and (v > low if low_open else v >= low)
        if high is not None:
            ok = ok and (v < high if high_open else v <= high)
    if not ok:
        if expected is None:
            expected = ("an integer" if integral else "a finite number") + (" {range}" if rng else "")
        raise error(f"{field} must be {expected.format(range=rng)}, got {value!r}")
    return int(value) if integral else v  # type: ignore[call-overload,return-value]


def number_text(text: str, field: str, *, error: type[StopbanditError] = InputError) -> float:
    """A finite number written as text (a CSV cell, a command-line value): ``float(text)`` or a refusal naming ``field``."""
    try:
        value = float(text)
    except ValueError:
        raise error(f"{field} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise error(f"{field} must be finite, got {text!r}")
    return value


def alpha(value: object) -> float:
    """The error level of a confidence interval: a finite number in (0, 1)."""
    return within(value, "alpha", low=0.0, high=1.0, low_open=True, high_open=True, numpy=True)


def table(data: object, known: Iterable[str], *, not_table: str, unknown: str,
          error: type[StopbanditError] = ConfigError) -> Mapping[str, Any]:
    """A mapping whose keys are all in ``known`` (a config table); refusals name what was received.

    ``not_table`` is the message for a value that is no mapping (``{type}``:
    its type's name); ``unknown`` for unknown keys (``{unknown}``,
    ``{known}``: sorted lists).
    """
    if not isinstance(data, Mapping):
        raise error(not_table.format(type=type(data).__name__))
    names = set(known)
    extra = sorted(set(data) - names)
    if extra:
        raise error(unknown.format(unknown=extra, known=sorted(names)))
    return data


def integer(value: object, field: str, *, low: int | None = None,
            error: type[StopbanditError] = ConfigError) -> int:
    """An int (not a bool) at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{field} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise error(f"{field} must be >= {low}, got {value!r}")
    return value


positive_ints = require_positive_ints
"""Refuse the first of ``values`` (in order) that is not an int >= 1; ``prefix`` goes before its name."""


def text(value: str, field: str, *, error: type[StopbanditError] = InputError) -> str:
    """Text that every store can hold: no NUL character (PostgreSQL refuses it), valid Unicode."""
    if "\x00" in value:
        raise error(f"{field} must not contain NUL characters, got {value[:80]!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(f"{field} is not valid Unicode (lone surrogate at position {exc.start}): {value[:80]!r}") \
            from None
    return value


def short_text(value: object, field: str, max_len: int) -> str:
    """A non-empty string of at most ``max_len`` characters without NUL (names, versions, keys of a row)."""
    if not isinstance(value, str) or not value or len(value) > max_len or "\x00" in value:
        raise InputError(f"{field} must be a non-empty string of at most {max_len} characters, got {value!r:.80}")
    return value


def key(value: object, *, field: str = "request_id") -> str:
    """A request id: a non-empty string of at most :data:`MAX_KEY` characters."""
    if not isinstance(value, str) or not value or len(value) > MAX_KEY:
        raise InputError(f"{field} must be a non-empty string of at most {MAX_KEY} characters, got {value!r}")
    return value


def identifier(value: object, field: str) -> str:
    """A request or decision id that is also storable text (:func:`key`, then :func:`text`)."""
    return text(key(value, field=field), field)


def em(value: object, *, field: str = "em") -> float:
    """EM: a finite number in [0, 1]."""
    if type(value) is float or type(value) is int:  # the common case, without the slow ABC check below
        if 0.0 <= value <= 1.0:  # also false for NaN
            return float(value)
        raise InputError(f"{field} must be a finite number in [0, 1], got {value!r}")
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InputError(f"{field} must be a number in [0, 1], got {value!r:.80}")
    v = real(value, field)
    if not 0.0 <= v <= 1.0:
        raise InputError(f"{field} must be a finite number in [0, 1], got {value!r}")
    return v


def tokens(value: object, *, field: str = "tokens") -> int:
    """A token count: a non-negative integer (integral floats are accepted)."""
    if type(value) is int:  # the common case, without the slow ABC checks below
        if value < 0:
            raise InputError(f"{field} must be >= 0, got {_show(value)}")
        return value
    if isinstance(value, bool):
        raise InputError(f"{field} must be a non-negative integer, got {value!r}")
    if isinstance(value, Real) and not isinstance(value, Integral):
        try:
            f = float(value)
        except (OverflowError, ValueError):
            f = math.inf
        if not math.isfinite(f) or f != int(f):
            raise InputError(f"{field} must be a non-negative integer, got {value!r}")
        value = int(f)
    if not isinstance(value, Integral):
        raise InputError(f"{field} must be a non-negative integer, got {value!r}")
    if value < 0:
        raise InputError(f"{field} must be >= 0, got {_show(value)}")
    return int(value)


def stored_tokens(value: object, *, field: str = "tokens") -> int:
    """A token count a store can hold: :func:`tokens`, at most :data:`MAX_TOKENS` (where text enters: import)."""
    v = tokens(value, field=field)
    if v > MAX_TOKENS:
        raise InputError(f"{field} must be at most {MAX_TOKENS}, got {_show(v)}")
    return v


def latency(value: object) -> float | None:
    """A latency in milliseconds: a finite number >= 0, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InputError(f"latency_ms must be a non-negative number or None, got {value!r:.80}")
    v = real(value, "latency_ms")
    if v < 0:
        raise InputError(f"latency_ms must be a finite number >= 0, got {value!r}")
    return v


__all__ = ["MAX_KEY", "MAX_TOKENS", "alpha", "em", "identifier", "integer", "key", "latency", "number", "number_text",
           "positive_ints", "real", "short_text", "stored_tokens", "text", "tokens", "within"]
