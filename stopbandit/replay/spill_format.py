"""The spill file format: framed JSON records, the header, and a reader that resumes where it stopped.

Records are ``{"k": kind, "r": row}`` — ``d`` a decision, ``o`` an outcome,
``l`` a late reward that upgrades a ``defaulted`` outcome (see
:mod:`stopbandit.bandit.delayed`; the typed rows and their one encoding are
:mod:`stopbandit.replay.records`). Every record is one line framed as
``<length:8 hex> <crc32:8 hex> <json>\n``, so a reader can tell a complete
record from a torn one: a torn tail ends the file; a fragment that a later
record was appended to is quarantined and the record after it read.

The first record of every file is a header (kind ``h``) naming the format
version and the store the rows belong to (see :func:`stopbandit.replay.spill.foreign`).
The files themselves (where they live, locks, fsync) are :mod:`stopbandit.replay.spill`.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stopbandit.errors import InputError
from stopbandit.replay import jsoncodec
from stopbandit.replay.records import HEADER_KIND, Record, as_record, decode_record, encode_record

FORMAT = 1  # the header's "spill" field: the version of this file format
_FRAME = re.compile(rb"[0-9a-f]{8} [0-9a-f]{8} ")
_FRAME_LEN = 18  # "<len> <crc> "
SpillItem = Record


def encode(items: Sequence[Record | tuple[str, Mapping[str, Any]]]) -> bytes:
    """The framed spill records of ``items`` (typed rows, or ``(kind, columns)`` pairs); TypeError/ValueError
    for a row that is not JSON.

    The error is a :class:`~stopbandit.replay.jsoncodec.NotJSONError`, naming
    the row's line in the batch and the offending key. Encoded by orjson
    (several times faster than the standard library: during an outage every
    row is encoded here, holding the GIL the serving threads need); a row it
    refuses goes through ``json``, so what can be spilled is what the standard
    library accepts (:func:`~stopbandit.replay.jsoncodec.dumps_lines`).
    """
    lines = jsoncodec.dumps_lines([encode_record(as_record(item)) for item in items])
    return b"".join([frame(p) for p in lines.split(b"\n")[:-1]])  # compact JSON holds no raw newline


def frame(payload: bytes) -> bytes:
    """One record: ``<length> <crc32> <payload>\n`` (lengths and checksums as 8 hex digits)."""
    return b"%08x %08x %s\n" % (len(payload), zlib.crc32(payload), payload)


def header(store_id: str | None) -> bytes:
    """The first record of a spill file: the format and the identity of the store its rows belong to."""
    return frame(jsoncodec.dumps_lines([{"k": HEADER_KIND, "spill": FORMAT, "store": store_id}])[:-1])


def _unframe(raw: bytes) -> bytes | None:
    """The payload of one complete record (``raw`` ends with its newline), or None if it is not one."""
    if len(raw) < _FRAME_LEN + 1 or not _FRAME.match(raw):
        return None
    payload = raw[_FRAME_LEN:-1]
    if int(raw[:8], 16) != len(payload) or int(raw[9:17], 16) != zlib.crc32(payload):
        return None
    return payload


def read_header(path: Path) -> dict[str, Any] | None:
    """The header record of a spill file, or None if its first record is not one (or the file is unreadable)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.readline(1 << 16)
    except OSError:
        return None
    payload = _unframe(raw) if raw.endswith(b"\n") else None
    if payload is None:
        return None
    try:
        obj = jsoncodec.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) and obj.get("k") == HEADER_KIND else None



@dataclass
class Chunk:
    items: list[SpillItem] = field(default_factory=list)
    bad: list[tuple[int, str, str]] = field(default_factory=list)  # (line number, text, why)
    lines: int = 0  # complete lines consumed (items + bad)
    eof: bool = False  # nothing (complete) follows this chunk
    offset: int = 0  # byte offset just after the chunk
    lineno: int = 0  # line number of the chunk's last line


class SpillReader:
    """Reads a spill file in chunks from a byte offset, so a replay can stop and resume.

    :meth:`read` does not move the offset; :meth:`advance` does, once the
    chunk is safely in the store — a failed commit re-reads the same chunk.
    A torn last line (a crash mid-write; never acknowledged as durable) ends
    the file. A complete line that does not parse is returned in ``bad`` for
    the caller to quarantine instead of blocking the replay forever.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lineno = 0

    def read(self, n: int) -> Chunk:
        chunk = Chunk(offset=self.offset, lineno=self.lineno)
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            while chunk.lines < n:
                raw = fh.readline()
                if not raw or not raw.endswith(b"\n"):
                    chunk.eof = True
                    break
                chunk.offset += len(raw)
                chunk.lineno += 1
                chunk.lines += 1
                start = 0
                payload = _unframe(raw)
                if payload is None:  # a fragment, perhaps fused with the complete record written after it
                    start = _fused(raw)
                    why = "torn spill record (cut)" if start else "spill line is not a complete record"
                    chunk.bad.append((chunk.lineno, raw[:start or len(raw)].decode("utf-8", "replace").rstrip("\n"),
                                      why))
                    if not start:
                        continue
                    payload = raw[start + _FRAME_LEN:-1]
                try:
                    item = parse_payload(payload)
                except InputError as exc:
                    chunk.bad.append((chunk.lineno, raw.decode("utf-8", "replace").rstrip("\n"), str(exc)))
                    continue
                if item is not None:
                    chunk.items.append(item)
            else:
                chunk.eof = not fh.read(1)
        return chunk

    def advance(self, chunk: Chunk) -> None:
        self.offset, self.lineno = chunk.offset, chunk.lineno


def _fused(raw: bytes) -> int:
    """Where a complete record starts inside ``raw`` after a torn fragment; 0 if none does."""
    for m in _FRAME.finditer(raw, 1):
        if _unframe(raw[m.start():]) is not None:
            return m.start()
    return 0


def parse_payload(payload: bytes) -> SpillItem | None:
    """The typed row of a record's JSON; None for a header; InputError if it is not a spill record."""
    try:
        obj = jsoncodec.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"spill line does not parse: {exc}") from exc
    return decode_record(obj)


def parse_line(raw: bytes | str) -> tuple[str, dict[str, Any]]:
    """The ``(kind, row)`` of one complete framed record; InputError for anything else (a header included)."""
    raw = raw.encode("utf-8") if isinstance(raw, str) else raw
    payload = _unframe(raw if raw.endswith(b"\n") else raw + b"\n")
    if payload is None:
        raise InputError("spill line is not a complete record (length and checksum do not match)")
    item = parse_payload(payload)
    if item is None:
        raise InputError("spill line is a header, not a row")
    return item.kind, dict(item.row)


def read_spill(path: Path, chunk: int = 2000) -> Iterator[list[SpillItem]]:
    """Chunks of typed rows from a spill file. A torn last line is skipped; a bad line raises InputError."""
    reader = SpillReader(path)
    while True:
        c = reader.read(chunk)
        reader.advance(c)
        if c.bad:
            lineno, _, why = c.bad[0]
            raise InputError(f"{path}:{lineno}: {why}")
        if c.items:
            yield c.items
        if c.eof:
            return


__all__ = ["FORMAT", "Chunk", "SpillItem", "SpillReader", "encode", "frame", "header", "parse_line", "parse_payload",
           "read_header", "read_spill"]
