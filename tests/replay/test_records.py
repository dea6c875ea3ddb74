"""Typed records of the writer and the spill: one encoding, and spill files written before still replay."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest

from stopbandit.errors import InputError
from stopbandit.replay import migrate
from stopbandit.replay.records import DecisionRecord, LateRecord, OutcomeRecord, decode_record, encode_record, typed
from stopbandit.replay.spill_format import encode, parse_line, read_spill
from stopbandit.replay.store import ReplayStore
from stopbandit.replay.writer import BatchWriter


def _decision(key: str) -> dict:
    return {"request_key": key, "ts": 1_700_000_000.0, "domain": "math", "features": {"len": 1.0}, "arm": "full",
            "arm_index": 0, "probabilities": {"full": 1.0}, "propensity": 1.0, "lam": 0.2, "token_scale": 1000.0,
            "policy_version": "v", "experiment": "champion"}


def _outcome(key: str, em: float, tokens: int, status: str) -> dict:
    return {"decision_key": key, "ts": 1_700_000_001.0, "em": em, "tokens": tokens, "latency_ms": None,
            "trace": None, "reference_key": None, "status": status}


def test_records_are_typed_frozen_and_encode_to_the_spill_line():
    rows = [DecisionRecord(_decision("a")), OutcomeRecord(_outcome("a", 1.0, 3, "ok")), LateRecord(_outcome("b", 0.0, 4, "late"))]
    for row in rows:
        record = encode_record(row)
        assert record == {"k": row.kind, "r": row.row}
        assert decode_record(json.loads(json.dumps(record))) == row
        assert tuple(row) == (row.kind, row.row)  # unpacks as the record's (kind, columns)
        with pytest.raises(AttributeError):
            row.row = {}  # type: ignore[misc]
    assert [r.kind for r in rows] == ["d", "o", "l"] and typed("l", {}) == LateRecord({})
    assert decode_record({"k": "h", "spill": 1, "store": None}) is None  # the header
    with pytest.raises(InputError, match=r"row kind must be one of \('d', 'o', 'l'\), got 'x'"):
        typed("x", {})
    with pytest.raises(InputError, match=r"spill line has kind 'x' \(expected one of \('d', 'o', 'l'\)\)"):
        decode_record({"k": "x", "r": {}})
    with pytest.raises(InputError, match="spill line does not parse"):
        decode_record({"r": {}})
    # typed rows and (kind, columns) pairs encode to the same bytes
    assert encode(rows) == encode([tuple(r) for r in rows])
    assert [parse_line(x) for x in encode(rows).splitlines(keepends=True)] == [tuple(r) for r in rows]


def _frame(payload: bytes) -> bytes:
    """A record of the spill format, written here by hand: ``<length:8 hex> <crc32:8 hex> <json>\\n``."""
    return b"%08x %08x %s\n" % (len(payload), zlib.crc32(payload), payload)


def test_a_spill_file_in_the_existing_format_replays(sqlite_url, tmp_path):
    migrate.upgrade(sqlite_url)
    store = ReplayStore(sqlite_url)
    prefix = tmp_path / "sp" / "sb"
    prefix.parent.mkdir(mode=0o700)
    records = [
        {"k": "h", "spill": 1, "store": store.identity()},
        {"k": "d", "r": _decision("old-1")},
        {"k": "o", "r": _outcome("old-1", 1.0, 30, "ok")},
        {"k": "d", "r": _decision("old-2")},
        {"k": "o", "r": _outcome("old-2", 0.0, 0, "defaulted")},
        {"k": "l", "r": _outcome("old-2", 1.0, 44, "late")},  # replaces the defaulted outcome
    ]
    path = Path(f"{prefix}.4242-01d0f0a1.jsonl")  # a dead writer's file (nobody holds its lock)
    path.write_bytes(b"".join(_frame(json.dumps(r, separators=(",", ":")).encode()) for r in records))
    assert [r.kind for chunk in read_spill(path) for r in chunk] == ["d", "o", "d", "o", "l"]
    w = BatchWriter(store, spill_path=prefix)
    try:
        assert w.drain(20)
        h = w.health()
        assert (h.adopted_files, h.rejected, h.replayed) == (1, 0, 5)
    finally:
        w.close()
    assert store.get_decision("old-1")["arm"] == "full" and store.get_outcome("old-1")["tokens"] == 30
    late = store.get_outcome("old-2")
    assert (late["status"], late["em"], late["tokens"]) == ("late", 1.0, 44)
    assert not path.exists()
    store.dispose()
