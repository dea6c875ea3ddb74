"""The replay store: every decision and outcome, λ changes and policy snapshots.

Writes are idempotent by request key: a decision or outcome written twice (a
retry, a replayed spill file) is stored once. A second outcome that disagrees
with the first is a :class:`ConflictError`; an outcome for a decision the store
has never seen is an :class:`UnknownDecisionError`. The bulk write compares
every row the database already had with the stored one: a request key reused
for a *different* decision (another process, a restart) is reported as a
:class:`Conflict`, never silently dropped or joined to the other row.

A SQLite store also watches its file: deleted or replaced by another
database while serving, it is unavailable (StoreError), not written into an
unlinked inode. All SQL is built by
SQLAlchemy Core with bound parameters; the bulk write path renders its INSERT
once and runs it as a driver-level executemany (:class:`_BulkInsert`).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from stopbandit.bandit.arms import ArmSet
from stopbandit.errors import ConflictError, InputError, StopbanditError, StoreError, UnknownDecisionError
from stopbandit.replay import jsoncodec, migrate
from stopbandit.replay.deadline import Deadlines
from stopbandit.replay.engine import guard as _guard
from stopbandit.replay.engine import make_engine, redact, resolve_url, sqlite_file
from stopbandit.replay.eventlog import EventLogQueries
from stopbandit.replay.models import (
    SNAPSHOT_ROLES,
    DecisionRow,
    LambdaChangeRow,
    OutcomeRow,
    SnapshotRow,
    StoreArmRow,
    StoreIdentityRow,
)
from stopbandit.replay.validate import check_em, check_key, check_latency, check_tokens

DECISIONS = DecisionRow.__table__
OUTCOMES = OutcomeRow.__table__
SNAPSHOTS = SnapshotRow.__table__
LAMBDAS = LambdaChangeRow.__table__
IDENTITY = StoreIdentityRow.__table__
STORE_ARMS = StoreArmRow.__table__

DECISION_FIELDS = (
    "request_key", "ts", "domain", "features", "arm", "arm_index",
    "probabilities", "propensity", "lam", "token_scale", "policy_version", "experiment",
)
OUTCOME_FIELDS = ("decision_key", "ts", "em", "tokens", "latency_ms", "trace", "reference_key", "status")
# values of the optional fields when a row leaves them out (the columns' server defaults, or NULL)
DECISION_DEFAULTS: dict[str, Any] = {"domain": None, "experiment": "champion"}
OUTCOME_DEFAULTS: dict[str, Any] = {"latency_ms": None, "trace": None, "reference_key": None, "status": "ok"}
# what makes two decision rows with one request key the same decision (a replay) rather than two
DECISION_IDENTITY = ("ts", "arm", "arm_index", "propensity", "lam", "policy_version")
OUTCOME_IDENTITY = ("em", "tokens")
KEYS_PER_SELECT = 500
# largest multi-row VALUES insert on SQLite: few GIL releases per batch (so the writer keeps up with a busy
# serving thread), short GIL holds per statement (so a choose() waiting for the interpreter waits little)
MULTI_ROWS = 256
# bound parameters per statement SQLite accepts in every supported version (SQLITE_MAX_VARIABLE_NUMBER)
SQLITE_PARAMS = 999


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


@dataclass(frozen=True, slots=True)
class Event:
    """A decision joined with its outcome, in outcome order (``cursor`` = outcome id)."""

    cursor: int
    request_key: str
    ts: float
    domain: str | None
    features: dict[str, Any]
    arm: str
    arm_index: int
    probabilities: dict[str, float]
    propensity: float
    lam: float
    token_scale: float
    policy_version: str
    experiment: str
    em: float
    tokens: int
    latency_ms: float | None
    outcome_ts: float
    trace: dict[str, Any] | None
    reference_key: str | None
    status: str


@dataclass(frozen=True, slots=True)
class Conflict:
    """A row whose key the store already holds for a different row: not stored; ``stored`` is the row kept."""

    kind: str  # "d" | "o"
    key: str
    row: Mapping[str, Any]
    stored: Mapping[str, Any] | None
    why: str


@dataclass(frozen=True, slots=True)
class LambdaChange:
    id: int
    ts: float
    value: float
    reason: str
    who: str


@dataclass(frozen=True, slots=True)
class StoredSnapshot:
    version: str
    ts: float
    model: bytes
    meta: dict[str, Any]
    checksum: str
    role: str = "serving"  # serving | candidate (see SnapshotRow)


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


class ReplayStore(EventLogQueries):
    """Typed access to one replay database (its read queries over the log: :mod:`stopbandit.replay.eventlog`).

    ``ReplayStore(url)`` checks that the schema is at the newest migration;
    ``ReplayStore(url, migrate=True)`` first runs ``alembic upgrade head``.
    """

    def __init__(self, url: str | None = None, *, engine: Engine | None = None, migrate_schema: bool = False,
                 check_schema: bool = True, timeout: float | None = None) -> None:
        self.url = str(engine.url) if engine is not None else resolve_url(url)
        self.timeout = timeout
        self.engine = engine or make_engine(self.url, timeout=timeout)
        # before any connection is opened: the watch must know every connection it may have to cut
        self.deadlines = Deadlines(self.engine)
        self._identity: str | None = None
        self._file = sqlite_file(self.engine)
        if check_schema and not migrate_schema and self._file is not None and not os.path.exists(self._file):
            self.engine.dispose()
            raise StoreError(
                f"no SQLite database at {self._file}: opening a store never creates one; check the path, "
                f"or create the store with `stopbandit db upgrade --db {redact(self.url)}`"
            )
        self._file_id: tuple[int, int] | None = None
        if migrate_schema:
            migrate.upgrade(engine=self.engine)
        elif check_schema:
            migrate.require_head(self.engine)
        self._insert_decisions = self._upsert_nothing(DECISIONS, "request_key")
        self._insert_outcomes = self._upsert_nothing(OUTCOMES, "decision_key")
        # a late reward over a defaulted outcome (write_batch's third part)
        self._late_upgrade = update(OUTCOMES).where(and_(OUTCOMES.c.decision_key == bindparam("key"),
                                                         OUTCOMES.c.status == "defaulted"))
        limit = sqlite_params(self.engine) if self.engine.dialect.name == "sqlite" else 0
        self._bulk_decisions = _BulkInsert(self.engine, self._insert_decisions, DECISION_FIELDS, DECISION_DEFAULTS,
                                           ("features", "probabilities"),
                                           min(MULTI_ROWS, limit // len(DECISION_FIELDS)))
        self._bulk_outcomes = _BulkInsert(self.engine, self._insert_outcomes, OUTCOME_FIELDS, OUTCOME_DEFAULTS,
                                          ("trace",), min(MULTI_ROWS, limit // len(OUTCOME_FIELDS)))

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """One database call: connection failures become StoreError; with a ``timeout``, it has a deadline."""
        with self.deadlines.call(what, self.timeout), _guard(what, self.engine):
            yield

    # -- construction helpers -------------------------------------------------
    def _upsert_nothing(self, table, key: str):
        name = self.engine.dialect.name
        if name == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])
        if name == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
        return insert(table)  # other backends: duplicates surface as IntegrityError

    def dispose(self) -> None:
        self.engine.dispose()

    def identity(self) -> str:
        """The store's identity (a UUID written by migration 0006); StoreError if it cannot be read."""
        if self._identity is None:
            self.check_file()
            try:
                with self._call("identity"), self.engine.connect() as conn:
                    found = conn.execute(select(IDENTITY.c.id).order_by(IDENTITY.c.created).limit(1)).scalar()
            except SQLAlchemyError as exc:  # no such table: the schema is older than the identity
                raise StoreError(f"cannot read the identity of {redact(self.url)} (run `stopbandit db upgrade`): "
                                 f"{getattr(exc, 'orig', exc)}") from exc
            if found is None:
                raise StoreError(f"database {redact(self.url)} has no store identity; run `stopbandit db upgrade`")
            self._identity = str(found)
            if self._file is not None and self._file_id is None:
                self._file_id = _file_id(self._file)
        return self._identity

    def check_file(self) -> None:
        """SQLite: StoreError if the database file is gone or is now another database; no-op otherwise.

        A file replaced by a copy of the same store (same identity; a restore)
        is accepted and the pool reconnects to it.
        """
        if self._file is None or self._file_id is None:
            return
        now = _file_id(self._file)
        if now == self._file_id:
            return
        self.engine.dispose()  # pooled connections still write into the old inode
        if now is None:
            raise StoreError(f"SQLite database file {self._file} is gone (deleted or moved while serving)")
        try:
            with self.engine.connect() as conn:
                found = conn.execute(select(IDENTITY.c.id).order_by(IDENTITY.c.created).limit(1)).scalar()
        except SQLAlchemyError as exc:
            raise StoreError(f"SQLite database file {self._file} was replaced by one that is not this store: "
                             f"{getattr(exc, 'orig', exc)}") from exc
        if found != self._identity:
            raise StoreError(f"SQLite database file {self._file} was replaced by another store ({found!r}, "
                             f"expected {self._identity!r})")
        self._file_id = now

    def ping(self) -> None:
        """Raise StoreError if the database cannot be reached right now."""
        self.check_file()
        try:
            with self.deadlines.call("ping", self.timeout), self.engine.connect() as conn:
                conn.execute(select(1))
        except SQLAlchemyError as exc:
            raise StoreError(f"database {redact(self.url)} unavailable: {getattr(exc, 'orig', exc)}") from exc

    # -- writes ---------------------------------------------------------------
    def write_batch(self, decisions: Sequence[Mapping[str, Any]], outcomes: Sequence[Mapping[str, Any]],
                    late: Sequence[Mapping[str, Any]] = ()) -> list[Conflict]:
        """Insert decisions, then outcomes, then late rewards, in one transaction; returns the conflicts.

        A late reward replaces the ``defaulted`` outcome of its decision (status
        ``late``), or is inserted as ``late`` when there is none (a no-op when
        any other outcome is stored).

        A row whose key is already stored with the same content (a retry, a
        replay) is a no-op; with different content it is a :class:`Conflict`
        (not stored), and so is an outcome whose decision is one. Raises
        StoreError when the database is unreachable (or, SQLite, its file is
        gone) and IntegrityError (from SQLAlchemy) when an outcome's decision
        is missing or a value breaks a CHECK constraint.
        """
        self.check_file()
        conflicts: list[Conflict] = []
        with self._call("write_batch"), self.engine.begin() as conn:
            if decisions:
                if self._bulk_decisions.execute(conn, decisions) < len(decisions):
                    conflicts = self._compare(conn, "d", decisions)
            if conflicts:
                bad = {c.key for c in conflicts}
                kept = [o for o in outcomes if o.get("decision_key") not in bad]
                conflicts += [Conflict("o", o["decision_key"], o, None, "its decision conflicts with a stored one")
                              for o in outcomes if o.get("decision_key") in bad]
                outcomes = kept
            if outcomes:
                if self._bulk_outcomes.execute(conn, outcomes) < len(outcomes):
                    conflicts += self._compare(conn, "o", outcomes)
            for row in late:
                values = {k: row.get(k) for k in ("ts", "em", "tokens", "latency_ms", "trace", "reference_key")}
                res = conn.execute(self._late_upgrade.values(status="late", **values), {"key": row["decision_key"]})
                if res.rowcount == 0:
                    conn.execute(self._insert_outcomes, [{**row, "status": "late"}])
        self.check_file()
        return conflicts

    def _compare(self, conn: Connection, kind: str, rows: Sequence[Mapping[str, Any]]) -> list[Conflict]:
        """The rows of a batch that differ from the stored row of their key (some keys were already stored)."""
        table, key_col, fields = ((DECISIONS, "request_key", DECISION_IDENTITY) if kind == "d"
                                  else (OUTCOMES, "decision_key", OUTCOME_IDENTITY))
        keys = list(dict.fromkeys(r[key_col] for r in rows))
        stored: dict[str, dict[str, Any]] = {}
        for i in range(0, len(keys), KEYS_PER_SELECT):
            q = select(table).where(table.c[key_col].in_(keys[i:i + KEYS_PER_SELECT]))
            stored.update({r[key_col]: dict(r) for r in conn.execute(q).mappings()})
        out = []
        for r in rows:
            have = stored.get(r[key_col])
            diffs = [f for f in fields if have is not None and have[f] != r.get(f)]
            if diffs:
                detail = ", ".join(f"{f}: stored {have[f]!r} vs new {r.get(f)!r}" for f in diffs)  # type: ignore[index]
                out.append(Conflict(kind, r[key_col], r, have,
                                    f"{'request_id' if kind == 'd' else 'outcome'} {r[key_col]!r} is already stored "
                                    f"for a different {'decision' if kind == 'd' else 'outcome'} ({detail})"))
        return out

    @contextmanager
    def importing(self, *, atomic: bool) -> Iterator[ImportSession]:
        """An :class:`ImportSession` on one connection; ``atomic``: one transaction, committed by ``commit()``.

        Whatever is not committed when the block ends (an exception, or an
        atomic import that decided not to commit) is rolled back.
        """
        self.check_file()
        with _guard("import", self.engine), self.engine.connect() as conn:
            session = ImportSession(self, conn, atomic)
            try:
                yield session
            finally:
                if conn.in_transaction():
                    conn.rollback()
        self.check_file()

    def wait_for_decision(self, key: str, timeout: float) -> dict[str, Any] | None:
        """The decision ``key``, waiting up to ``timeout`` s for it to appear (another process may not have
        flushed it yet); None if it does not."""
        deadline = time.monotonic() + timeout
        pause = 0.02
        while True:
            d = self.get_decision(key)
            if d is not None or time.monotonic() >= deadline:
                return d
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.25)

    def record_decision(self, row: Mapping[str, Any]) -> None:
        self.write_batch([row], [])

    def record_outcome(self, key: str, em: float, tokens: int, latency_ms: float | None = None,
                       ts: float | None = None) -> bool:
        """Store an outcome now. True if inserted, False if the same outcome was already there."""
        row = outcome_row(key, em, tokens, latency_ms, ts)
        try:
            with self._call("record_outcome"), self.engine.begin() as conn:
                # RETURNING, not rowcount: psycopg reports -1 for ON CONFLICT inserts.
                inserted = conn.execute(self._insert_outcomes.returning(OUTCOMES.c.id), row).first() is not None
        except IntegrityError as exc:
            raise UnknownDecisionError(f"no decision with request key {key!r}; reward() needs a logged decision") from exc
        if inserted:
            return True
        existing = self.get_outcome(key)
        if existing is None:  # pragma: no cover - only on backends without ON CONFLICT
            raise StoreError(f"outcome for {key!r} neither inserted nor found")
        check_same_outcome(key, existing, row)
        return False

    # -- reads ----------------------------------------------------------------
    def get_decision(self, key: str) -> dict[str, Any] | None:
        with self._call("get_decision"), self.engine.connect() as conn:
            r = conn.execute(select(DECISIONS).where(DECISIONS.c.request_key == key)).mappings().first()
        return dict(r) if r else None

    def get_outcome(self, key: str) -> dict[str, Any] | None:
        with self._call("get_outcome"), self.engine.connect() as conn:
            r = conn.execute(select(OUTCOMES).where(OUTCOMES.c.decision_key == key)).mappings().first()
        return dict(r) if r else None

    def counts(self) -> dict[str, int]:
        with self._call("counts"), self.engine.connect() as conn:
            return {
                "decisions": conn.execute(select(func.count()).select_from(DECISIONS)).scalar_one(),
                "outcomes": conn.execute(select(func.count()).select_from(OUTCOMES)).scalar_one(),
                "snapshots": conn.execute(select(func.count()).select_from(SNAPSHOTS)).scalar_one(),
                "lambda_changes": conn.execute(select(func.count()).select_from(LAMBDAS)).scalar_one(),
            }

    def duplicate_keys(self) -> int:
        """Decision keys stored more than once (always 0 while the unique constraint holds)."""
        with self.engine.connect() as conn:
            sub = select(DECISIONS.c.request_key).group_by(DECISIONS.c.request_key).having(func.count() > 1)
            return conn.execute(select(func.count()).select_from(sub.subquery())).scalar_one()

    def iter_events(self, after: int = 0, *, chunk: int = 5000, until: int | None = None,
                    since_ts: float | None = None) -> Iterator[list[Event]]:
        """Decision+outcome events with cursor > ``after``, in chunks of at most ``chunk``.

        Keyset pagination on the outcome id: memory stays bounded by ``chunk``
        whatever the size of the log, and a learner can resume from the last
        cursor it saw.
        """
        cols = [OUTCOMES.c.id, *[DECISIONS.c[f] for f in DECISION_FIELDS],
                OUTCOMES.c.em, OUTCOMES.c.tokens, OUTCOMES.c.latency_ms, OUTCOMES.c.ts.label("outcome_ts"),
                OUTCOMES.c.trace, OUTCOMES.c.reference_key, OUTCOMES.c.status]
        cursor = after
        while True:
            q = select(*cols).join(DECISIONS, DECISIONS.c.request_key == OUTCOMES.c.decision_key)
            q = q.where(OUTCOMES.c.id > cursor)
            if until is not None:
                q = q.where(OUTCOMES.c.id <= until)
            if since_ts is not None:
                q = q.where(DECISIONS.c.ts >= since_ts)
            q = q.order_by(OUTCOMES.c.id).limit(chunk)
            with self._call("iter_events"), self.engine.connect() as conn:
                rows = conn.execute(q).all()
            if not rows:
                return
            yield [Event(*r) for r in rows]
            cursor = rows[-1][0]
            if len(rows) < chunk:
                return

    def max_cursor(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.coalesce(func.max(OUTCOMES.c.id), 0))).scalar_one()

    # -- arms -----------------------------------------------------------------
    def arms(self) -> ArmSet | None:
        """The store's arm set (what ``arm_index`` means), or None when none was recorded."""
        with self._call("arms"), self.engine.connect() as conn:
            return stored_arms(conn)

    def record_arms(self, arms: ArmSet) -> None:
        """Record the store's arm set; InputError when it already has another one."""
        with self._call("record_arms"), self.engine.begin() as conn:
            record_arms(conn, arms)

    # -- λ --------------------------------------------------------------------
    def add_lambda(self, value: float, reason: str, who: str = "api", ts: float | None = None) -> LambdaChange:
        ts = time.time() if ts is None else ts
        with self._call("set_lambda"), self.engine.begin() as conn:
            new_id = conn.execute(
                insert(LAMBDAS).values(ts=ts, value=value, reason=reason, who=who).returning(LAMBDAS.c.id)
            ).scalar_one()
        return LambdaChange(new_id, ts, value, reason, who)

    def current_lambda(self) -> LambdaChange | None:
        with self._call("current_lambda"), self.engine.connect() as conn:
            r = conn.execute(select(LAMBDAS).order_by(LAMBDAS.c.id.desc()).limit(1)).first()
        return LambdaChange(*r) if r else None

    def lambda_history(self, limit: int = 100) -> list[LambdaChange]:
        with self._call("lambda_history"), self.engine.connect() as conn:
            rows = conn.execute(select(LAMBDAS).order_by(LAMBDAS.c.id.desc()).limit(limit)).all()
        return [LambdaChange(*r) for r in rows]

    # -- snapshots ------------------------------------------------------------
    # "latest" always means the newest *serving* snapshot: that is what Selectors load and
    # hot-swap to. A candidate is reachable only by its version, so saving one promotes nothing.
    def save_snapshot(self, version: str, model: bytes, meta: Mapping[str, Any], checksum: str,
                      ts: float | None = None, *, role: str = "serving") -> None:
        """Store a snapshot; ``role="candidate"`` keeps it out of "latest" (Selectors do not swap to it)."""
        role = check_role(role)
        ts = time.time() if ts is None else ts
        with self._call("save_snapshot"), self.engine.begin() as conn:
            conn.execute(insert(SNAPSHOTS).values(version=version, ts=ts, model=model, meta=dict(meta),
                                                  checksum=checksum, role=role))

    def latest_snapshot_version(self, role: str = "serving") -> str | None:
        """The newest snapshot of ``role`` (default: the one serving Selectors follow), or None."""
        role = check_role(role)
        q = select(SNAPSHOTS.c.version).where(SNAPSHOTS.c.role == role).order_by(SNAPSHOTS.c.id.desc()).limit(1)
        with self._call("latest_snapshot"), self.engine.connect() as conn:
            return conn.execute(q).scalar()

    def resume_snapshot_version(self, checkpoint_prefix: str) -> tuple[str, str] | None:
        """(version, role) of the newest snapshot a restarted Selector resumes from, or None.

        That is the newest of the serving snapshots and the checkpoints (candidates whose version starts
        with ``checkpoint_prefix``), in the order they were saved.
        """
        q = (select(SNAPSHOTS.c.version, SNAPSHOTS.c.role)
             .where(or_(SNAPSHOTS.c.role == "serving",
                        and_(SNAPSHOTS.c.role == "candidate", SNAPSHOTS.c.version.startswith(checkpoint_prefix,
                                                                                             autoescape=True))))
             .order_by(SNAPSHOTS.c.id.desc()).limit(1))
        with self._call("latest_snapshot"), self.engine.connect() as conn:
            r = conn.execute(q).first()
        return (r[0], r[1]) if r else None

    def get_snapshot(self, version: str | None = None) -> StoredSnapshot | None:
        """The snapshot ``version`` (any role), or the newest serving one when ``version`` is None or 'latest'."""
        q = select(SNAPSHOTS.c.version, SNAPSHOTS.c.ts, SNAPSHOTS.c.model, SNAPSHOTS.c.meta, SNAPSHOTS.c.checksum,
                   SNAPSHOTS.c.role)
        if version in (None, "latest"):
            q = q.where(SNAPSHOTS.c.role == "serving").order_by(SNAPSHOTS.c.id.desc()).limit(1)
        else:
            q = q.where(SNAPSHOTS.c.version == version)
        with self._call("get_snapshot"), self.engine.connect() as conn:
            r = conn.execute(q).first()
        return StoredSnapshot(r[0], r[1], bytes(r[2]), dict(r[3]), r[4], r[5]) if r else None

    def list_snapshots(self, limit: int = 50, *, role: str | None = None) -> list[tuple[str, float, str]]:
        """(version, ts, checksum), newest first; only those of ``role`` when given."""
        q = select(SNAPSHOTS.c.version, SNAPSHOTS.c.ts, SNAPSHOTS.c.checksum)
        if role is not None:
            q = q.where(SNAPSHOTS.c.role == check_role(role))
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(SNAPSHOTS.c.id.desc()).limit(limit)).all()
        return [tuple(r) for r in rows]


OUTCOME_STATUSES = ("ok", "defaulted", "late")


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


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


def check_role(role: object) -> str:
    """A snapshot role, validated: ``serving`` or ``candidate``."""
    if role not in SNAPSHOT_ROLES:
        raise InputError(f"snapshot role must be one of {list(SNAPSHOT_ROLES)}, got {role!r}")
    return role  # type: ignore[return-value]


def outcome_row(key: str, em: float, tokens: int, latency_ms: float | None = None,
                ts: float | None = None, *, trace: dict[str, Any] | None = None,
                reference_key: str | None = None, status: str = "ok") -> dict[str, Any]:
    """A validated outcome row; errors name the field."""
    if status not in OUTCOME_STATUSES:
        raise InputError(f"outcome status must be one of {OUTCOME_STATUSES}, got {status!r}")
    return {
        "decision_key": check_key(key, field="decision_id"),
        "ts": time.time() if ts is None else float(ts),
        "em": check_em(em),
        "tokens": check_tokens(tokens),
        "latency_ms": check_latency(latency_ms),
        "trace": trace,
        "reference_key": reference_key,
        "status": status,
    }


def check_same_outcome(key: str, existing: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Raise ConflictError when a repeated outcome disagrees with the stored one."""
    diffs = [f for f in ("em", "tokens") if existing[f] != new[f]]
    if diffs:
        detail = ", ".join(f"{f}: stored {existing[f]!r} vs new {new[f]!r}" for f in diffs)
        raise ConflictError(f"conflicting outcome for decision {key!r} ({detail}); outcomes are write-once")


__all__ = ["OUTCOME_STATUSES", "SNAPSHOT_ROLES", "Conflict", "Event", "LambdaChange", "ReplayStore", "StoredSnapshot",
           "check_role", "check_same_outcome", "outcome_row"]
