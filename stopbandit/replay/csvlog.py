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

``arm`` holds the arm's name, or a numeric action id ``N`` of a foreign log,
which maps to the plain arm ``action_N`` (``[[arms]] name = "action_N",
plain = true``; arm names start with a letter, so ``0`` cannot be one).

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
from collections.abc import Callable, Iterator
from typing import IO, Any

import numpy as np
import orjson

from stopbandit import validation
from stopbandit.bandit.arms import ArmSet
from stopbandit.errors import InputError, StopbanditError
from stopbandit.replay import jsoncodec
from stopbandit.replay.interchange import (
    _FEATURE_NAMES_SEEN, BAD, EXPERIMENTS_MAX, IMPORT_BATCH, LineError, ParsedEvent, Problems, decision_row,
    outcome_of,
)
from stopbandit.replay.options import PROB_TOL
from stopbandit.validation import MAX_KEY, MAX_TOKENS
from stopbandit.replay.times import parse_time
from stopbandit.replay.store import Event

CSV_BATCH = IMPORT_BATCH
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


def numeric_aliases(arms: ArmSet) -> dict[str, str]:
    """Numeric action ids → arm names: id ``7`` is the arm named ``action_7`` (:func:`action_arm_name`), if any."""
    out = {}
    for name in arms.names:
        if name.startswith("action_") and name[7:].isdigit() and name[7:] == str(int(name[7:])):
            out[name[7:]] = name
    return out


def _run_time(pr: Problems, text: str, field: str) -> Any:
    try:
        return parse_time(text, field=field)
    except StopbanditError as exc:
        return pr.add(str(exc))


def parse_row(row: dict[str, str], line: int, arms: ArmSet, *, token_scale: float, now: float) -> ParsedEvent:
    """Validate and map one CSV row (a dict by header); raises InputError naming every bad column."""
    if None in row:  # csv.DictReader puts surplus cells under the key None
        raise InputError(f"the row has {len(row) - 1 + len(row[None])} cells, the header {len(row) - 1}")  # type: ignore[index]
    missing_cells = [c for c in REQUIRED if row.get(c) is None]
    if missing_cells:
        raise InputError(f"the row has too few cells: no value for {missing_cells}")
    pr = Problems()
    arm = _text(row, "arm")
    names = arms.names
    arm = numeric_aliases(arms).get(arm, arm)  # type: ignore[arg-type]
    propensity = pr.run(_number, row, "propensity")
    if propensity is not BAD and not 0.0 < propensity <= 1.0:
        propensity = pr.add(f"column 'propensity' must be in (0, 1], got {row['propensity']!r}")
    probs = pr.run(_json_cell, row, "probabilities", required=False)
    if probs is None:
        if propensity is BAD or arm not in names:
            probs = BAD  # the default spreads 1 - propensity over the other arms: it needs both
        else:
            rest = (1.0 - propensity) / (len(names) - 1)
            probs = {name: (propensity if name == arm else rest) for name in names}
    elif probs is not BAD and not isinstance(probs, dict):
        probs = pr.add(f"column 'probabilities' must be a JSON object arm -> probability, got {probs!r}")
    ts_text = (row.get("ts") or "").strip()
    ts = now if not ts_text else _run_time(pr, ts_text, "ts")
    decision = decision_row(
        arms, key=row["request_id"], ts=ts, domain=_text(row, "domain"),
        features=pr.run(_json_cell, row, "features", required=True), arm=arm, probabilities=probs,
        propensity=propensity, lam=pr.run(_number, row, "lam", 0.0),
        token_scale=pr.run(_number, row, "token_scale", token_scale),
        policy_version=_text(row, "policy_version", "csv"), experiment=_text(row, "experiment", "champion"),
        problems=pr,
    )
    out_ts = (row.get("outcome_ts") or "").strip()
    outcome = outcome_of(
        decision["request_key"], em=pr.run(_number, row, "em"), tokens=pr.run(_number, row, "tokens"),
        ts=ts if not out_ts else _run_time(pr, out_ts, "outcome_ts"),
        latency_ms=pr.run(_optional_number, row, "latency_ms"), trace=pr.run(_json_cell, row, "trace", required=False),
        reference_key=_text(row, "reference_key"), status=_text(row, "status", "ok"), problems=pr,
    )
    pr.raise_any()
    return ParsedEvent(line, decision, outcome)


class _Columns:
    """A batch of well-formed CSV rows as columns, validated with numpy where a check is per value.

    Rows that pass every check become events here; every other row goes
    through :func:`parse_row`, which gives the same event for a good row and
    the messages for a bad one (the fast path only decides which rows are
    plainly good, never what is wrong with a row).
    """

    NUMERIC = ("propensity", "em", "tokens", "lam", "token_scale")
    SLOW_ONLY = ("latency_ms", "trace", "reference_key", "outcome_ts")

    def __init__(self, header: list[str], arms: ArmSet, token_scale: float, now: float) -> None:
        self.header = header
        self.col = {name: i for i, name in enumerate(header)}
        self.arms, self.names = arms, arms.names
        self.arm_index = {name: i for i, name in enumerate(arms.names)}
        self.arm_index.update({k: self.arm_index[v] for k, v in numeric_aliases(arms).items()})
        self.name_set = set(arms.names)
        self.token_scale, self.now = token_scale, now
        self.slow_only = [self.col[c] for c in self.SLOW_ONLY if c in self.col]

    def _cells(self, rows: list[list[str]], name: str) -> list[str] | None:
        i = self.col.get(name)
        return None if i is None else [r[i] for r in rows]

    @staticmethod
    def _column(cells: list[str] | None, n: int, missing: float, cell: Callable[[str], float]) -> np.ndarray:
        """The column as float64: ``missing`` throughout when it is absent; all cells at once when they are all
        numbers; else cell by cell through ``cell``."""
        if cells is None:
            return np.full(n, missing)
        try:
            return np.array(cells, dtype=np.float64)
        except ValueError:
            pass
        out = np.empty(n)
        for j, c in enumerate(cells):
            out[j] = cell(c)
        return out

    @classmethod
    def _floats(cls, cells: list[str] | None, n: int, default: float | None) -> np.ndarray:
        """The column as float64; NaN where a cell is not a number (or empty without a default)."""
        def cell(c: str) -> float:
            try:
                return float(c)
            except ValueError:
                return default if default is not None and not c.strip() else np.nan

        return cls._column(cells, n, np.nan if default is None else default, cell)

    def _times(self, cells: list[str] | None, n: int) -> np.ndarray:
        """The ``ts`` column as epoch seconds (ISO 8601 or numbers); ``now`` where empty, NaN where unreadable."""
        def cell(c: str) -> float:
            text = c.strip()
            if not text:
                return self.now
            try:
                return parse_time(text, field="ts")
            except StopbanditError:
                return np.nan

        return self._column(cells, n, self.now, cell)

    def parse(self, batch: list[tuple[int, list[str]]]) -> list[ParsedEvent | LineError]:
        n = len(batch)
        rows = [cells for _, cells in batch]
        f = self._floats
        prop = f(self._cells(rows, "propensity"), n, None)
        em = f(self._cells(rows, "em"), n, None)
        tokens = f(self._cells(rows, "tokens"), n, None)
        lam = f(self._cells(rows, "lam"), n, 0.0)
        scale = f(self._cells(rows, "token_scale"), n, self.token_scale)
        ts = self._times(self._cells(rows, "ts"), n)
        with np.errstate(invalid="ignore"):
            ok = ((prop > 0.0) & (prop <= 1.0) & (em >= 0.0) & (em <= 1.0) & (tokens >= 0.0)
                  & (tokens <= MAX_TOKENS) & (tokens == np.floor(tokens)) & (lam >= 0.0) & np.isfinite(lam)
                  & (scale > 0.0) & np.isfinite(scale) & np.isfinite(ts))
        fast = ok.tolist()
        prop_l, em_l, tok_l, lam_l, scale_l, ts_l = (a.tolist() for a in (prop, em, tokens, lam, scale, ts))
        c = self.col
        i_key, i_arm, i_dom, i_feat = c["request_id"], c["arm"], c["domain"], c["features"]
        i_probs, i_pv, i_exp, i_status = c.get("probabilities"), c.get("policy_version"), c.get("experiment"), \
            c.get("status")
        names, arm_index, name_set, k = self.names, self.arm_index, self.name_set, len(self.names)
        known = _FEATURE_NAMES_SEEN
        loads = orjson.loads
        slow_only = self.slow_only
        out: list[ParsedEvent | LineError] = []
        for j, (line, r) in enumerate(batch):
            event = None
            if fast[j] and not any(r[i] for i in slow_only):
                event = self._fast(line, r, prop_l[j], em_l[j], int(tok_l[j]), lam_l[j], scale_l[j], ts_l[j],
                                   i_key, i_arm, i_dom, i_feat, i_probs, i_pv, i_exp, i_status, names, arm_index,
                                   name_set, k, known, loads)
            if event is None:
                event = self._slow(line, r)
            out.append(event)
        return out

    def _fast(self, line: int, r: list[str], p: float, em: float, tokens: int, lam: float, scale: float, ts: float,
              i_key: int, i_arm: int, i_dom: int, i_feat: int, i_probs: int | None, i_pv: int | None,
              i_exp: int | None, i_status: int | None, names: tuple[str, ...], arm_index: dict[str, int],
              name_set: set[str], k: int, known: set[str], loads: Any) -> ParsedEvent | None:
        """The event of a row every check of which passes without a message, or None (the slow path decides)."""
        key = r[i_key]
        if key[:1] == "'":
            key = key[1:]
        arm = r[i_arm]
        if arm[:1] == "'":
            arm = arm[1:]
        idx = arm_index.get(arm)
        if idx is None or not key or len(key) > MAX_KEY or "\x00" in key:
            return None
        arm = names[idx]  # a numeric action id becomes its arm's name
        domain = r[i_dom]
        if domain[:1] == "'":
            domain = domain[1:]
        if len(domain) > 64 or "\x00" in domain:
            return None
        pv = r[i_pv] if i_pv is not None and r[i_pv] else "csv"
        exp = r[i_exp] if i_exp is not None and r[i_exp] else "champion"
        if pv[:1] == "'":
            pv = pv[1:]
        if exp[:1] == "'":
            exp = exp[1:]
        if not pv or len(pv) > 64 or "\x00" in pv or not exp or len(exp) > EXPERIMENTS_MAX or "\x00" in exp:
            return None
        if i_status is not None and r[i_status] not in ("", "ok"):
            return None
        try:
            feats = loads(r[i_feat])
            probs_in = loads(r[i_probs]) if i_probs is not None and r[i_probs].strip() else None
        except orjson.JSONDecodeError:
            return None
        if type(feats) is not dict or not known.issuperset(feats):
            return None
        for v in feats.values():
            if type(v) is not float:
                return None
        if probs_in is None:
            rest = (1.0 - p) / (k - 1)
            probs = {name: (p if name == arm else rest) for name in names}
        else:
            if type(probs_in) is not dict or len(probs_in) != k or not name_set.issuperset(probs_in):
                return None
            probs = {}
            for name in names:
                v = probs_in[name]
                if type(v) is not float or not 0.0 <= v <= 1.0:
                    return None
                probs[name] = v
            if abs(math.fsum(probs.values()) - 1.0) > PROB_TOL or abs(p - probs[arm]) > PROB_TOL:
                return None
        decision = {
            "request_key": key, "ts": ts, "domain": domain or None, "features": feats, "arm": arm, "arm_index": idx,
            "probabilities": probs, "propensity": p, "lam": lam, "token_scale": scale, "policy_version": pv,
            "experiment": exp,
        }
        outcome = {"decision_key": key, "ts": ts, "em": em, "tokens": tokens, "latency_ms": None, "trace": None,
                   "reference_key": None, "status": "ok"}
        return ParsedEvent(line, decision, outcome)

    def _slow(self, line: int, r: list[str]) -> ParsedEvent | LineError:
        row = dict(zip(self.header, r))
        for name in TEXT_COLUMNS:
            if row.get(name):
                row[name] = from_spreadsheet_safe(row[name])
        try:
            return parse_row(row, line, self.arms, token_scale=self.token_scale, now=self.now)
        except StopbanditError as exc:
            return LineError(line, str(exc))


def read_csv(path: str, arms: ArmSet, *, token_scale: float, now: float | None = None,
             batch: int = CSV_BATCH) -> Iterator[ParsedEvent | LineError]:
    """Each data row of ``path`` as a ParsedEvent or a LineError (numbered by the row's last physical line).

    Rows are read ``batch`` at a time and validated as columns (:class:`_Columns`).
    """
    now = time.time() if now is None else now
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, strict=True)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise InputError(f"{path}: unreadable CSV header: {exc}") from None
        if not header:
            raise InputError(f"{path}: empty file (a header row is required)")
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise InputError(f"{path}: header lacks required column(s) {missing}; it has {header}")
        columns = _Columns(header, arms, token_scale, now)
        width = len(header)
        pending: list[tuple[int, list[str]]] = []
        last = 1  # the header's line
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                # At the end of the file the reader does not count the broken row's lines, so its number
                # would repeat the previous row's; each row keeps a line of its own.
                last = max(reader.line_num, last + 1)
                yield from columns.parse(pending)
                pending = []
                yield LineError(last, f"malformed CSV ({exc})")
                continue
            last = reader.line_num
            if not cells:
                continue  # a blank line (csv.DictReader skips them too)
            if len(cells) != width:
                yield from columns.parse(pending)
                pending = []
                row: dict[Any, Any] = dict(zip(header, cells))
                if len(cells) > width:
                    row[None] = cells[width:]
                yield _short_or_long(row, header, last, arms, token_scale, now)
                continue
            pending.append((last, cells))
            if len(pending) >= batch:
                yield from columns.parse(pending)
                pending = []
        yield from columns.parse(pending)


def _short_or_long(row: dict[Any, Any], header: list[str], line: int, arms: ArmSet, token_scale: float,
                   now: float) -> ParsedEvent | LineError:
    """A row with another number of cells than the header, handled as csv.DictReader hands it over."""
    for name in header:
        row.setdefault(name, None)
    for name in TEXT_COLUMNS:
        if row.get(name):
            row[name] = from_spreadsheet_safe(row[name])
    try:
        return parse_row(row, line, arms, token_scale=token_scale, now=now)
    except StopbanditError as exc:
        return LineError(line, str(exc))


__all__ = ["COLUMNS", "OPTIONAL", "REQUIRED", "TEXT_COLUMNS", "CsvWriter", "event_to_row", "from_spreadsheet_safe",
           "parse_row", "read_csv", "spreadsheet_safe"]
