"""Times on the command line and in interchange files: ISO 8601 or epoch seconds, both ways."""

from __future__ import annotations

import math
from datetime import datetime, timezone

from stopbandit.errors import ConfigError


def parse_time(value: str | float | int | None, *, field: str = "since") -> float | None:
    """Epoch seconds from an ISO 8601 string (naive = UTC) or a number of epoch seconds; None stays None.

    >>> parse_time("2024-01-02T00:00:00Z")
    1704153600.0
    >>> parse_time("1704153600")
    1704153600.0
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{field} must be an ISO 8601 time or epoch seconds, got {value!r}")
    if isinstance(value, (int, float)):
        out = float(value)
    else:
        text = str(value).strip()
        try:
            out = float(text)
        except ValueError:
            try:
                dt = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
            except ValueError:
                raise ConfigError(
                    f"{field} must be an ISO 8601 time (e.g. 2024-05-01T12:00:00Z) or epoch seconds, got {value!r}"
                ) from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            out = dt.timestamp()
    if not math.isfinite(out):
        raise ConfigError(f"{field} must be a finite time, got {value!r}")
    return out


def iso_time(ts: float) -> str:
    """``2024-01-02T00:00:00.123456Z`` (UTC, microseconds)."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

__all__ = ["iso_time", "parse_time"]
