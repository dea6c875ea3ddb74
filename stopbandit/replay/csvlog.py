"""The replay log as CSV: one row per event, header required.

Columns the importer needs (header names, any order):

    request_id, features (JSON object), domain, arm, propensity, em, tokens

Optional columns (our exports write all of them, so the round trip is exact):

    probabilities   JSON object arm -> probability. When absent, the remaining
                    mass 1 − propensity is spread evenly over the other arms:
                    exact for IPS/SNIPS/DR/DM/Switch-DR, which read only the
                    logged arm's propensity, an assumption for the graph
                    estimators, which read the whole vector.
    ts              decision time (epoch seconds or ISO 8601); default: the
                    time of the import
    lam, token_scale          default 0 and the configured token_scale
    policy_version, experiment default "csv" and "champion"
    latency_ms, outcome_ts, trace (JSON), reference_key, status

Empty cells are absent values. Numbers are written with ``repr`` so floats
survive the round trip bit for bit. Text cells that begin with ``= + - @``, a
tab, a carriage return or ``'`` are written with one leading ``'``, so a
spreadsheet shows them as text instead of running them as a formula (CSV
injection); the importer removes that one ``'`` again, so the round trip stays
exact.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Iterator
from typing import IO, Any

from stopbandit import validation
from stopbandit.bandit.arms import ArmSet
from stopbandit.errors import InputError, StopbanditError
from stopbandit.replay import jsoncodec
from stopbandit.replay.interchange import ARMS_HINT, LineError, ParsedEvent, decision_row, outcome_of
from stopbandit.replay.times import parse_time
from stopbandit.replay.store import Event

REQUIRED = ("request_id", "features", "domain", "arm", "propensity", "em", "tokens")
OPTIONAL = ("probabilities", "ts", "lam", "token_scale", "policy_version", "experiment", "latency_ms",
            "outcome_ts", "trace", "reference_key", "status")
COLUMNS = ("request_id", "ts", "domain", "features", "arm", "propensity", "probabilities", "em", "tokens", "lam",
           "token_scale", "policy_version", "experiment", "latency_ms", "outcome_ts", "trace", "reference_key",
           "status")


TEXT_COLUMNS = ("request_id", "domain", "arm", "policy_version", "experiment", "reference_key", "status")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


# --------------------------------------------------------------------------- export


def spreadsheet_safe(text: str) -> str:
    """``text`` with a leading ``'`` when a spreadsheet would read it as a formula (or it starts with ``'``)."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def from_spreadsheet_safe(text: str) -> str:
    """Inverse of :func:`spreadsheet_safe`."""
    return text[1:] if text.startswith("'") else text


def _json(value: Any) -> str:
    return "" if value is None else json.dumps(value, separators=(",", ":"), allow_nan=False)


def _num(value: Any) -> str:
    return "" if value is None else repr(value)


def event_to_row(ev: Event) -> list[str]:
    safe = spreadsheet_safe
    return [
        safe(ev.request_key), _num(ev.ts), safe(ev.domain or ""), _json(ev.features), safe(ev.arm),
        _num(ev.propensity), _json(ev.probabilities), _num(ev.em), _num(ev.tokens), _num(ev.lam),
        _num(ev.token_scale), safe(ev.policy_version), safe(ev.experiment), _num(ev.latency_ms),
        _num(ev.outcome_ts), _json(ev.trace), safe(ev.reference_key or ""), safe(ev.status),
    ]


class CsvWriter:
    """Writes the header once, then one row per event."""

    def __init__(self, out: IO[str]) -> None:
        self._w = csv.writer(out, lineterminator="\n")
        self._w.writerow(COLUMNS)

    def write(self, ev: Event) -> None:
        self._w.writerow(event_to_row(ev))


# --------------------------------------------------------------------------- import


def _number(row: dict[str, str], name: str, default: Any = None) -> Any:
    text = (row.get(name) or "").strip()
    if not text:
        if default is None:
            raise InputError(f"column {name!r} is empty")
        return default
    return validation.number_text(text, f"column {name!r}")


def _optional_number(row: dict[str, str], name: str) -> float | None:
    text = (row.get(name) or "").strip()
    return None if not text else _number(row, name)


def _json_cell(row: dict[str, str], name: str, *, required: bool) -> Any:
    text = (row.get(name) or "").strip()
    if not text:
        if required:
            raise InputError(f"column {name!r} is empty")
        return None
    try:
        return jsoncodec.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"column {name!r} is not valid JSON ({exc.msg})") from None


def _text(row: dict[str, str], name: str, default: str | None = None) -> str | None:
    text = row.get(name)
    return default if text is None or text == "" else text


def parse_row(row: dict[str, str], line: int, arms: ArmSet, *, token_scale: float, now: float) -> ParsedEvent:
    """Validate and map one CSV row (a dict by header); raises InputError naming the column."""
    if None in row:  # csv.DictReader puts surplus cells under the key None
        raise InputError(f"the row has {len(row) - 1 + len(row[None])} cells, the header {len(row) - 1}")  # type: ignore[index]
    missing_cells = [c for c in REQUIRED if row.get(c) is None]
    if missing_cells:
        raise InputError(f"the row has too few cells: no value for {missing_cells}")
    arm = _text(row, "arm")
    names = arms.names
    if arm not in names:
        raise InputError(f"unknown arm {arm!r}; known arms: {list(names)}{ARMS_HINT}")
    propensity = _number(row, "propensity")
    if not 0.0 < propensity <= 1.0:
        raise InputError(f"column 'propensity' must be in (0, 1], got {row['propensity']!r}")
    probs = _json_cell(row, "probabilities", required=False)
    if probs is None:
        rest = (1.0 - propensity) / (len(names) - 1)
        probs = {name: (propensity if name == arm else rest) for name in names}
    elif not isinstance(probs, dict):
        raise InputError(f"column 'probabilities' must be a JSON object arm -> probability, got {probs!r}")
    ts_text = (row.get("ts") or "").strip()
    ts = now if not ts_text else parse_time(ts_text, field="ts")
    try:
        decision = decision_row(
            arms, key=row["request_id"], ts=ts, domain=_text(row, "domain"),
            features=_json_cell(row, "features", required=True), arm=arm, probabilities=probs,
            propensity=propensity, lam=_number(row, "lam", 0.0), token_scale=_number(row, "token_scale", token_scale),
            policy_version=_text(row, "policy_version", "csv"), experiment=_text(row, "experiment", "champion"),
        )
    except StopbanditError as exc:
        raise InputError(str(exc)) from None
    out_ts = (row.get("outcome_ts") or "").strip()
    outcome = outcome_of(
        decision["request_key"], em=_number(row, "em"), tokens=_number(row, "tokens"),
        ts=ts if not out_ts else parse_time(out_ts, field="outcome_ts"),
        latency_ms=_optional_number(row, "latency_ms"), trace=_json_cell(row, "trace", required=False),
        reference_key=_text(row, "reference_key"), status=_text(row, "status", "ok"),
    )
    return ParsedEvent(line, decision, outcome)


def read_csv(path: str, arms: ArmSet, *, token_scale: float,
             now: float | None = None) -> Iterator[ParsedEvent | LineError]:
    """Each data row of ``path`` as a ParsedEvent or a LineError (numbered by the row's last physical line)."""
    now = time.time() if now is None else now
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, strict=True)
        try:
            header = reader.fieldnames
        except csv.Error as exc:
            raise InputError(f"{path}: unreadable CSV header: {exc}") from None
        if not header:
            raise InputError(f"{path}: empty file (a header row is required)")
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise InputError(f"{path}: header lacks required column(s) {missing}; it has {header}")
        last = 1  # the header's line
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                # At the end of the file the reader does not count the broken row's lines, so its number
                # would repeat the previous row's; each row keeps a line of its own.
                last = max(reader.line_num, last + 1)
                yield LineError(last, f"malformed CSV ({exc})")
                continue
            last = reader.line_num
            for name in TEXT_COLUMNS:
                if row.get(name):
                    row[name] = from_spreadsheet_safe(row[name])
            try:
                yield parse_row(row, last, arms, token_scale=token_scale, now=now)
            except StopbanditError as exc:
                yield LineError(last, str(exc))


__all__ = ["COLUMNS", "OPTIONAL", "REQUIRED", "TEXT_COLUMNS", "CsvWriter", "event_to_row", "from_spreadsheet_safe",
           "parse_row", "read_csv", "spreadsheet_safe"]
