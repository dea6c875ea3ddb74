"""Bulk writes of the replay store: one rendered INSERT through the driver, and the import session.

:class:`_BulkInsert` is the batch writer's and the importer's insert path
(its docstring says why it bypasses SQLAlchemy's per-row work);
:class:`ImportSession` is one import on one connection
(:meth:`stopbandit.replay.store.ReplayStore.importing`). Both are the
store's: SQL is built here with bound parameters only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, bindparam, insert, select
from sqlalchemy.exc import SQLAlchemyError

from stopbandit.bandit.arms import ArmSet
from stopbandit.errors import InputError, StopbanditError, StoreError
from stopbandit.replay import jsoncodec
from stopbandit.replay.tables import (
    DECISION_DEFAULTS,
    DECISION_FIELDS,
    DECISIONS,
    KEYS_PER_SELECT,
    OUTCOME_DEFAULTS,
    OUTCOME_FIELDS,
    OUTCOMES,
    SQLITE_PARAMS,
    STORE_ARMS,
)

if TYPE_CHECKING:
    from stopbandit.replay.store import ReplayStore


def sqlite_params(engine: Engine) -> int:
    """Bound parameters per statement this SQLite library accepts (``SQLITE_PARAMS`` where it cannot be asked)."""
    try:
        with engine.connect() as conn:
            getlimit = getattr(conn.connection.dbapi_connection, "getlimit", None)
            if getlimit is not None:
                return max(SQLITE_PARAMS, int(getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)))
    except (SQLAlchemyError, sqlite3.Error, AttributeError):  # down or no such limit: the smallest there is
        pass
    return SQLITE_PARAMS


class _BulkInsert:
    """One ``INSERT … ON CONFLICT DO NOTHING`` of many rows, sent through the driver.

    Why: the batch writer spent about two thirds of its time per batch in
    SQLAlchemy's per-row parameter processing (a parameter dict per row, bind
    processors, JSON through the type system), more than in the database.
    SQLAlchemy still renders every statement — once, for the engine's dialect
    (quoting, PostgreSQL's casts, ON CONFLICT) — and still wraps driver errors
    (IntegrityError, OperationalError, …) through ``exec_driver_sql``; only
    the per-row work is done here: one ``itemgetter`` per row, JSON columns
    serialised by :func:`stopbandit.replay.jsoncodec.dumps` (orjson; why: encoding
    features and probabilities was the largest single cost per row). Every
    value stays a bound parameter.

    ``multi_rows`` (SQLite): rows go in multi-row ``VALUES`` statements of
    power-of-two sizes up to that many rows, not an executemany. Python's
    sqlite3 releases the GIL around every row of an executemany, and each
    re-acquisition can wait a switch interval behind a busy serving thread:
    with the serving loop on the other core, an executemany writer falls so
    far behind that batches take seconds (and rows queued behind them are
    what a crash loses). One statement per chunk releases the GIL once.
    The chunk is bounded (``MULTI_ROWS``, and SQLite's parameter limit)
    because the driver binds a statement's parameters in C holding the GIL,
    and a ``choose`` that needs the interpreter waits that long
    (``docs/benchmarks.md``, "Replay store: batch writer throughput"). PostgreSQL
    keeps psycopg's pipelined executemany.
    """

    def __init__(self, engine: Engine, stmt: Any, fields: Sequence[str], defaults: Mapping[str, Any],
                 json_fields: Sequence[str], multi_rows: int = 0) -> None:
        compiled = stmt.compile(dialect=engine.dialect, column_keys=list(fields), for_executemany=True)
        self.sql: str = compiled.string
        names = list(compiled.positiontup) if compiled.positional else list(fields)
        if sorted(names) != sorted(fields):  # pragma: no cover - the statement binds exactly the fields
            raise StoreError(f"bulk insert binds {names}, expected {list(fields)}")
        self.names = names
        self.defaults = dict(defaults)
        self._get = itemgetter(*names)
        self._json = [i for i, n in enumerate(names) if n in json_fields]
        self._positional = compiled.positional
        self._engine, self._stmt = engine, stmt
        self._multi_rows = multi_rows if compiled.positional else 0
        self._multi_sql: dict[int, str | None] = {}
        self._tmpl: tuple[str, str, str, str] | bool | None = None

    def params(self, row: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """The driver's parameters for one row; InputError (naming the row) if it cannot be stored."""
        values = self.values(row)
        return tuple(values) if self._positional else dict(zip(self.names, values))

    def values(self, row: Mapping[str, Any]) -> list[Any]:
        """One row's values in the order of ``names`` (JSON columns as text); InputError if it cannot be stored."""
        try:
            try:
                values = list(self._get(row))
            except KeyError:  # an optional field left out: its default (a missing required field raises)
                values = [row[n] if n in row or n not in self.defaults else self.defaults[n] for n in self.names]
            dumps = jsoncodec.dumps
            for i in self._json:
                values[i] = dumps(values[i])
        except (KeyError, TypeError, ValueError) as exc:
            key = row.get(self.names[0]) if isinstance(row, Mapping) else None
            raise InputError(f"row {key!r} cannot be stored: {type(exc).__name__}: {exc}") from exc
        return values

    def _render(self, n: int) -> str | None:
        """SQLAlchemy's ``n``-row VALUES insert, or None if its parameters are not in row-major field order."""
        k = len(self.names)
        rows = [{name: bindparam(f"p{i}_{j}") for j, name in enumerate(self.names)} for i in range(n)]
        compiled = self._stmt.values(rows).compile(dialect=self._engine.dialect)
        row_major = list(compiled.positiontup or ()) == [f"p{i}_{j}" for i in range(n) for j in range(k)]
        return compiled.string if row_major else None

    def _template(self) -> tuple[str, str, str, str] | None:
        """(head, row group, separator, tail) of SQLAlchemy's multi-row rendering, checked against it for 1–3 rows.

        Rendering a 256-row statement through SQLAlchemy takes tens of
        milliseconds; a fresh writer's first batches paid that for every
        size, holding the GIL while rows queued up. The template gives any
        size for the cost of a string join.
        """
        if self._tmpl is None:
            s1, s2, s3 = self._render(1), self._render(2), self._render(3)
            group = "(" + ", ".join(["?"] * len(self.names)) + ")"
            self._tmpl = False
            if s1 and s2 and s3 and s1.count(group) == 1:
                head, tail = s1.split(group)
                sep = s2[len(head) + len(group):len(s2) - len(tail) - len(group)]
                if s2 == head + sep.join([group] * 2) + tail and s3 == head + sep.join([group] * 3) + tail:
                    self._tmpl = (head, group, sep, tail)
        return self._tmpl or None

    def _multi(self, n: int) -> str | None:
        """The SQL of an ``n``-row VALUES insert (built once per size), or None where it cannot be built."""
        if n not in self._multi_sql:
            t = self._template()
            self._multi_sql[n] = t[0] + t[2].join([t[1]] * n) + t[3] if t else self._render(n)
        return self._multi_sql[n]

    def execute(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert ``rows``; returns how many were inserted (the others' keys were already there).

        A chunk's parameters are built just before it is sent.

        Building parameters holds the GIL and sending a statement releases it:
        interleaving them chunk by chunk keeps the writer from holding the
        interpreter for a whole batch (a serving thread waiting for it would
        wait that long).
        """
        params: Callable[[Mapping[str, Any]], Any] = self.params
        i, n, inserted = 0, len(rows), 0
        while self._multi_rows and n - i > 1:
            size = min(self._multi_rows, 1 << ((n - i).bit_length() - 1))
            sql = self._multi(size)
            if sql is None:
                break
            inserted += conn.exec_driver_sql(sql, tuple([v for r in rows[i:i + size] for v in params(r)])).rowcount
            i += size
        if i < n:
            inserted += conn.exec_driver_sql(self.sql, [params(r) for r in rows[i:]]).rowcount
        return inserted


# an import's key lookups: one statement each, compiled once (the keys are one expanding bound parameter)
_LOOKUP_DECISIONS = select(DECISIONS.c.request_key, DECISIONS.c.arm_index, DECISIONS.c.propensity).where(
    DECISIONS.c.request_key.in_(bindparam("keys", expanding=True)))
_LOOKUP_OUTCOMES = select(OUTCOMES.c.decision_key, OUTCOMES.c.em, OUTCOMES.c.tokens).where(
    OUTCOMES.c.decision_key.in_(bindparam("keys", expanding=True)))


class ImportSession:
    """The writes of one import, on one connection (:meth:`ReplayStore.importing`).

    Lookups run on the connection that writes, so an atomic import (one
    transaction, rolled back when the import fails) sees the rows of its own
    earlier batches. Rows go in as bulk inserts: on PostgreSQL through ``COPY``
    into a temporary table and one ``INSERT … SELECT … ON CONFLICT DO
    NOTHING`` per table (a key another process stored meanwhile is a no-op,
    like the executemany path); on SQLite through multi-row ``VALUES``
    inserts as large as the driver's parameter limit allows.
    """

    def __init__(self, store: ReplayStore, conn: Connection, atomic: bool) -> None:
        self._store, self._conn, self._atomic = store, conn, atomic
        self._copy = store.engine.dialect.name == "postgresql"
        self._temp: set[str] = set()
        if store.engine.dialect.name == "sqlite":
            self._dec = _BulkInsert(store.engine, store._insert_decisions, DECISION_FIELDS, DECISION_DEFAULTS,
                                    ("features", "probabilities"), SQLITE_PARAMS // len(DECISION_FIELDS))
            self._out = _BulkInsert(store.engine, store._insert_outcomes, OUTCOME_FIELDS, OUTCOME_DEFAULTS,
                                    ("trace",), SQLITE_PARAMS // len(OUTCOME_FIELDS))
        else:
            self._dec, self._out = store._bulk_decisions, store._bulk_outcomes

    def lookup(self, keys: Sequence[str]) -> tuple[dict[str, tuple[int, float]], dict[str, tuple]]:
        """Stored (arm_index, propensity) per decision key and (em, tokens) per outcome key, among ``keys``."""
        decisions: dict[str, tuple[int, float]] = {}
        outcomes: dict[str, tuple] = {}
        with self._store._call("import lookup"):
            for i in range(0, len(keys), KEYS_PER_SELECT):
                part = {"keys": list(keys[i:i + KEYS_PER_SELECT])}
                decisions.update({k: (a, p) for k, a, p in self._conn.execute(_LOOKUP_DECISIONS, part).all()})
                outcomes.update({k: (e, t) for k, e, t in self._conn.execute(_LOOKUP_OUTCOMES, part).all()})
        return decisions, outcomes

    def write(self, decisions: Sequence[Mapping[str, Any]], outcomes: Sequence[Mapping[str, Any]]) -> None:
        """Insert the rows (decisions first: the outcomes reference them); non-atomic sessions commit each call."""
        with self._store._call("import write"):
            if self._copy:
                self._copy_rows(DECISIONS, self._dec, decisions, "request_key")
                self._copy_rows(OUTCOMES, self._out, outcomes, "decision_key")
            else:
                if decisions:
                    self._dec.execute(self._conn, decisions)
                if outcomes:
                    self._out.execute(self._conn, outcomes)
            if not self._atomic:
                self._conn.commit()

    def _copy_rows(self, table: Any, bulk: _BulkInsert, rows: Sequence[Mapping[str, Any]], key: str) -> None:
        if not rows:
            return
        q = self._store.engine.dialect.identifier_preparer
        cols = ", ".join(q.quote(n) for n in bulk.names)
        name, temp = q.format_table(table), q.quote(f"stopbandit_import_{table.name}")
        raw = self._conn.connection.dbapi_connection
        with raw.cursor() as cur:  # type: ignore[union-attr]
            if temp not in self._temp:
                # identifiers only (quoted by the dialect); every value travels through COPY
                cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {temp} ON COMMIT DELETE ROWS AS "
                            f"SELECT {cols} FROM {name} WITH NO DATA")
                self._temp.add(temp)
            with cur.copy(f"COPY {temp} ({cols}) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row(bulk.values(r))
            cur.execute(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM {temp} "
                        f"ON CONFLICT ({q.quote(key)}) DO NOTHING")
            cur.execute(f"TRUNCATE {temp}")

    def record_arms(self, arms: ArmSet) -> None:
        """Record ``arms`` as the store's arm set, or check that they are the one it has (InputError if not)."""
        with self._store._call("import arms"):
            record_arms(self._conn, arms)
            if not self._atomic:
                self._conn.commit()

    def commit(self) -> None:
        with self._store._call("import commit"):
            self._conn.commit()

    def rollback(self) -> None:
        self._conn.rollback()


__all__ = ["ImportSession"]


def stored_arms(conn: Connection) -> ArmSet | None:
    """The arm set recorded in ``store_arms`` (None when empty); a malformed one is a StoreError."""
    rows = conn.execute(select(STORE_ARMS.c.position, STORE_ARMS.c.spec).order_by(STORE_ARMS.c.position)).all()
    if not rows:
        return None
    if [r[0] for r in rows] != list(range(len(rows))):
        raise StoreError(f"the store's arm set has gaps in its positions {[r[0] for r in rows]}")
    try:
        return ArmSet.of([r[1] for r in rows])
    except StopbanditError as exc:
        raise StoreError(f"the store's arm set is malformed: {exc}") from exc


def record_arms(conn: Connection, arms: ArmSet) -> None:
    """Write ``arms`` as the store's arm set when it has none; refuse (InputError) another set than the recorded one."""
    have = stored_arms(conn)
    if have is None:
        conn.execute(insert(STORE_ARMS), [{"position": i, "name": a.name, "spec": a.to_dict()}
                                          for i, a in enumerate(arms)])
    elif have.to_list() != arms.to_list():
        raise InputError(f"the store's decisions were logged with the arms {list(have.names)} {have.to_list()}; "
                         f"this import maps to {list(arms.names)} {arms.to_list()}: import into another store, "
                         "or pass --config with the store's arms")
