"""The records the batch writer queues and the spill keeps: a decision, an outcome, or a late outcome.

Each is a typed, immutable wrapper around a row's columns (the mapping the
store inserts, validated by :mod:`stopbandit.replay.validate`; the ORM
classes of the tables are :mod:`stopbandit.replay.models`):

* :class:`DecisionRecord` -- a decision (``decisions``);
* :class:`OutcomeRecord` -- an outcome (``outcomes``);
* :class:`LateRecord` -- a late reward that replaces a ``defaulted`` outcome
  (status ``late``; see :mod:`stopbandit.bandit.delayed`).

:func:`encode_record` and :func:`decode_record` are the one mapping between
these records and the spill's JSON lines, ``{"k": kind, "r": columns}`` with
``kind`` one of :data:`KINDS`: the format of every spill file, old and new.
A record unpacks as ``(kind, columns)``, the shape of its JSON.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Union

from stopbandit.errors import InputError


class _Unpacks:
    """What the three rows share: they unpack as ``(kind, columns)``, the shape of their spill record."""

    __slots__ = ()
    kind: ClassVar[str]
    row: Mapping[str, Any]

    def __iter__(self) -> Iterator[Any]:
        return iter((self.kind, self.row))


@dataclass(frozen=True, slots=True)
class DecisionRecord(_Unpacks):
    """A decision row (the columns of ``decisions``)."""

    row: Mapping[str, Any]
    kind: ClassVar[str] = "d"


@dataclass(frozen=True, slots=True)
class OutcomeRecord(_Unpacks):
    """An outcome row (the columns of ``outcomes``), written once its decision is stored."""

    row: Mapping[str, Any]
    kind: ClassVar[str] = "o"


@dataclass(frozen=True, slots=True)
class LateRecord(_Unpacks):
    """A late reward that replaces its decision's ``defaulted`` outcome (stored with status ``late``)."""

    row: Mapping[str, Any]
    kind: ClassVar[str] = "l"


Record = Union[DecisionRecord, OutcomeRecord, LateRecord]
RECORD_TYPES: dict[str, type[DecisionRecord] | type[OutcomeRecord] | type[LateRecord]] = {
    "d": DecisionRecord, "o": OutcomeRecord, "l": LateRecord}
KINDS = tuple(RECORD_TYPES)
"""The record kinds of rows in a spill file (its header is kind ``h``)."""
HEADER_KIND = "h"


def typed(kind: str, row: Mapping[str, Any]) -> Record:
    """The typed row of a ``(kind, columns)`` pair; InputError naming an unknown kind."""
    cls = RECORD_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise InputError(f"row kind must be one of {KINDS}, got {kind!r}")
    return cls(row)


def as_record(item: Record | tuple[str, Mapping[str, Any]]) -> Record:
    """A typed row as it is, a ``(kind, columns)`` pair made typed."""
    if isinstance(item, (DecisionRecord, OutcomeRecord, LateRecord)):
        return item
    kind, row = item
    return typed(kind, row)


def encode_record(item: Record) -> dict[str, Any]:
    """The spill record of a row: ``{"k": kind, "r": columns}``."""
    return {"k": item.kind, "r": item.row}


def decode_record(obj: Any) -> Record | None:
    """The row of a parsed spill record; None for the file's header; InputError if it is not a spill record."""
    try:
        kind = obj["k"]
        if kind == HEADER_KIND:
            return None
        row = obj["r"]
    except (KeyError, TypeError) as exc:
        raise InputError(f"spill line does not parse: {exc}") from exc
    cls = RECORD_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None or not isinstance(row, dict):
        raise InputError(f"spill line has kind {kind!r} (expected one of {KINDS}) or a row that is not an object")
    return cls(row)


__all__ = ["HEADER_KIND", "KINDS", "RECORD_TYPES", "DecisionRecord", "LateRecord", "OutcomeRecord", "Record", "as_record",
           "decode_record", "encode_record", "typed"]
