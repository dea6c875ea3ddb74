"""How the batch writer's rows reach the store: one transaction a batch, else row by row.

Part of :class:`stopbandit.replay.writer.BatchWriter` (its module docstring
has the failure classes): the batch transaction, the row-by-row retry that
isolates a refused row, request-key conflicts, the rejected file, and the
spill that takes a batch the store cannot. The methods run on the writer's
state; :class:`~stopbandit.replay.writer.BatchWriter` is the only class
that mixes them in.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from stopbandit.errors import StoreError
from stopbandit.replay import migrate
from stopbandit.replay.engine import redact
from stopbandit.replay.jsoncodec import NotJSONError
from stopbandit.replay.records import DecisionRecord, LateRecord, OutcomeRecord, Record
from stopbandit.replay.spill_format import encode
from stopbandit.replay.store import Conflict

log = logging.getLogger("stopbandit.writer")

Item = Record  # DecisionRecord | OutcomeRecord | LateRecord (a late outcome over a defaulted one)
MAX_DEFERRED = 100_000
MAX_CONFLICT_KEYS = 100_000  # request keys found in conflict, remembered to refuse their outcomes


class Commits:
    """The store side of the batch writer: transactions, refused rows, conflicts, the rejected file, the spill."""

    def _commit(self, batch: Sequence[Item], *, replay: bool = False) -> int:
        """Commit the batch in one transaction, or row by row if a row is refused; returns rows written.

        Raises StoreError (nothing of the batch is known to be refused) when the store is down.
        """
        try:
            self._transaction(batch)
            return len(batch)
        except Exception as exc:  # noqa: BLE001 - classified below
            self._raise_if_down(exc)
        return self._commit_one_by_one(batch, replay=replay)

    def _commit_one_by_one(self, batch: Sequence[Item], *, replay: bool) -> int:
        written = 0
        for item in batch:
            try:
                self._transaction([item])
                written += 1
            except Exception as exc:  # noqa: BLE001 - classified below
                self._raise_if_down(exc)
                missing = isinstance(exc, IntegrityError) and type(item) is not DecisionRecord
                if missing and replay and len(self._deferred) < MAX_DEFERRED:
                    self._deferred.append(item)
                else:
                    self._reject(item.kind, item.row, _reason(exc))
        return written

    def _raise_if_down(self, exc: BaseException) -> None:
        """Raise StoreError if ``exc`` means the store is unavailable; return if it is about the rows.

        Connection-level errors (StoreError from the store) are outages; a row
        the database refuses (IntegrityError, DataError) is not. Anything else
        is decided by asking the database: if it answers and its schema is at
        head, the rows are the problem — so a poison row can never keep the
        writer "down" and spilling forever.
        """
        if isinstance(exc, StoreError):
            raise exc
        if isinstance(exc, (IntegrityError, DataError)):
            return
        try:
            with self._deadlines.call("checking the store", self.timeout):
                self.store.ping()
                migrate.require_head(self.store.engine)
        except StoreError as down:
            raise down from exc
        except SQLAlchemyError as down:
            raise StoreError(f"write to {redact(self.store.url)} failed: {_reason(down)}") from exc

    def _transaction(self, batch: Sequence[Item]) -> None:
        """Write one batch in one transaction, under the call deadline; conflicts found are recorded, not raised."""
        decisions = [i.row for i in batch if type(i) is DecisionRecord]
        outcomes = [i.row for i in batch if type(i) is OutcomeRecord]
        late = [i.row for i in batch if type(i) is LateRecord]
        refused: list[Conflict] = []
        if self._conflict_keys and outcomes:
            keys = self._conflict_keys
            refused = [Conflict("o", r["decision_key"], r, None, "its decision conflicts with a stored one")
                       for r in outcomes if r.get("decision_key") in keys]
            outcomes = [r for r in outcomes if r.get("decision_key") not in keys]
        with self._deadlines.call(f"writing {len(batch)} rows", self.timeout):
            if decisions or outcomes or late:
                refused += self.store.write_batch(decisions, outcomes, late)
        for c in refused:
            self._conflict(c)

    def _conflict(self, c: Conflict) -> None:
        """A row refused because its key is stored for another row: count, log both, keep it in the rejected file."""
        self._count("conflicts", 1)
        if c.kind == "d":
            self._conflict_keys[c.key] = None
            if len(self._conflict_keys) > MAX_CONFLICT_KEYS:
                self._conflict_keys.pop(next(iter(self._conflict_keys)))
        log.error("request key conflict, %s row not stored: %s; new row %s; stored row %s", c.kind, c.why,
                  json.dumps(c.row, default=str)[:2000], json.dumps(c.stored, default=str)[:2000])
        self._reject(c.kind, c.row, f"conflict: {c.why}", stored=c.stored)

    def _reject(self, kind: str, row: Mapping[str, Any], why: str, *, stored: Mapping[str, Any] | None = None) -> None:
        """Append the row and why to the rejected file (mode 0600, fsync'd); OSError if the disk refuses."""
        rec: dict[str, Any] = {"k": kind, "r": row, "error": why}
        if stored is not None:
            rec["stored"] = stored
        line = json.dumps(rec, default=str) + "\n"
        with self._reject_lock:
            fd = os.open(self.rejected_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            with open(fd, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        self._count("rejected", 1)
        log.error("store refused a %s row (kept in %s): %s", kind, self.rejected_path, why)

    def _reject_deferred(self) -> None:
        """Last try for outcomes whose decision was missing during a replay; reject what still fails.

        On any failure (the store down, the disk refusing the rejected file) the rows not yet settled stay deferred.
        """
        deferred, self._deferred = self._deferred, []
        for i, item in enumerate(deferred):
            try:
                try:
                    self._transaction([item])
                    self._count("written", 1)
                    self._count("replayed", 1)
                except Exception as exc:  # noqa: BLE001 - classified below
                    self._raise_if_down(exc)
                    self._reject(item.kind, item.row, _reason(exc))
            except (StoreError, OSError):
                self._deferred.extend(deferred[i:])
                raise

    def _to_spill(self, batch: Sequence[Item], *, sync: bool = False) -> bool:
        """Append to the spill: fsync'd before returning with ``sync`` (durable), else by the spill's syncer.

        Rows held from an earlier refusal go first. If the disk refuses
        (full, read-only), the rows are held in memory, at most ``max_queue``
        of them (beyond that the oldest are dropped, counted), and written
        with the next append or replay step; returns False then.
        """
        items = list(batch)
        if self._held:
            with self._held_lock:
                items, self._held = self._held + items, []
        if not items:
            return True
        try:
            try:
                n = self.spill.append(items, sync=sync)
            except (TypeError, ValueError):  # a row that is not JSON: reject it, spill the others
                items = [item for item in items if self._encodable(item)]
                n = self.spill.append(items, sync=sync)
        except OSError as exc:  # the local disk refused: hold the rows, say so, never raise into the caller
            self._last_error = f"spill: {exc}"
            log.error("cannot write the spill file %s (%s): holding %d rows in memory", self.spill.path, exc,
                      len(items))
            with self._held_lock:
                self._held = items + self._held
                over = len(self._held) - self.max_queue
                if over > 0:
                    del self._held[:over]
            if over > 0:
                self._count("dropped", over)
                log.error("more than %d rows held in memory: %d oldest dropped", self.max_queue, over)
            return False
        self._count("spilled", n)
        if n < len(items):
            self._count("dropped", len(items) - n)
            log.error("spill file %s is full (%d bytes) or unwritable: %d events dropped", self.spill.path,
                      self.spill.max_bytes, len(items) - n)
        return True

    def _encodable(self, item: Item) -> bool:
        try:
            encode([item])
            return True
        except NotJSONError as exc:  # names the key: "features.x is not JSON: …"
            self._reject(item.kind, item.row, str(exc))
            return False
        except (TypeError, ValueError) as exc:
            self._reject(item.kind, item.row, f"not JSON: {exc}")
            return False


def _reason(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
