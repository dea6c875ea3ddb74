"""The store's queries over the event log: what evaluation, training, import and A/B reports read.

Part of :class:`~stopbandit.replay.store.ReplayStore` (a mixin it inherits),
kept in its own module because these queries serve the offline readers,
not the serving path. Every query has bound parameters only and runs as one
store call (its deadline; an unreachable database is a
:class:`~stopbandit.errors.StoreError`, never a raw driver error).

An *event* is an outcome joined to its decision, addressed by the outcome id
(``after < id <= upto``) and filtered by decision time (``since <= ts <
until``). Rows come as plain tuples in :data:`EVENT_COLUMNS` order, JSON
columns as text (the reader decodes only what it needs); on SQLite they come
straight from the driver's cursor, which skips building a SQLAlchemy row per
event.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Engine, Integer, Text, bindparam, case, cast, func, select
from sqlalchemy.exc import OperationalError

from stopbandit import validation
from stopbandit.replay.models import DecisionRow, OutcomeRow

DECISIONS = DecisionRow.__table__
OUTCOMES = OutcomeRow.__table__

EVENT_COLUMNS = ("id", "request_key", "ts", "domain", "features", "arm", "arm_index", "probabilities", "lam",
                 "token_scale", "em", "tokens", "trace", "reference_key", "status")
"""The fields of an event row, in order (``features``, ``probabilities`` and ``trace`` as JSON text)."""

_RAW = (
    OUTCOMES.c.id, DECISIONS.c.request_key, DECISIONS.c.ts, DECISIONS.c.domain,
    cast(DECISIONS.c.features, Text), DECISIONS.c.arm, DECISIONS.c.arm_index, cast(DECISIONS.c.probabilities, Text),
    DECISIONS.c.lam, DECISIONS.c.token_scale, OUTCOMES.c.em, OUTCOMES.c.tokens, cast(OUTCOMES.c.trace, Text),
    OUTCOMES.c.reference_key, OUTCOMES.c.status,
)
_JOIN = DECISIONS.c.request_key == OUTCOMES.c.decision_key


def _window(q: Any, since: float | None, until: float | None) -> Any:
    if since is not None:
        q = q.where(DECISIONS.c.ts >= since)
    if until is not None:
        q = q.where(DECISIONS.c.ts < until)
    return q


def _ids(q: Any, after: int, upto: int | None) -> Any:
    if after:
        q = q.where(OUTCOMES.c.id > after)
    if upto is not None:
        q = q.where(OUTCOMES.c.id <= upto)
    return q


def _fetch_raw(conn: Any, sql: str, params: tuple) -> list[tuple]:
    """Rows of ``sql`` from the connection's DBAPI cursor (driver errors as SQLAlchemy's OperationalError)."""
    import sqlite3

    cur = conn.connection.dbapi_connection.cursor()
    try:
        cur.execute(sql, params)
        return cur.fetchall()
    except sqlite3.OperationalError as exc:
        raise OperationalError(sql, params, exc) from exc
    finally:
        cur.close()


class EventLogQueries:
    """Read queries over decisions + outcomes.

    The host class (:class:`~stopbandit.replay.store.ReplayStore`) provides
    ``engine`` and ``_call(what)``, the context of one database call: the
    store's deadline, and driver failures turned into StoreError.
    """

    engine: Engine
    _call: Callable[[str], AbstractContextManager[None]]

    def has_traces(self) -> bool:
        """Whether any outcome carries a reference key (every traced, evaluable outcome has one)."""
        q = select(OUTCOMES.c.id).where(OUTCOMES.c.reference_key.is_not(None)).limit(1)
        with self._call("has_traces"), self.engine.connect() as conn:
            return conn.execute(q).first() is not None

    def count_events_by_status(self, *, since: float | None = None, until: float | None = None, after: int = 0,
                               upto: int | None = None) -> dict[str, int]:
        """Events in the window by outcome status (one aggregate query)."""
        q = _ids(select(OUTCOMES.c.status, func.count()).group_by(OUTCOMES.c.status), after, upto)
        if since is not None or until is not None:
            q = _window(q.join(DECISIONS, _JOIN), since, until)
        with self._call("count events"), self.engine.connect() as conn:
            return {str(s): int(c) for s, c in conn.execute(q).all()}

    def count_events(self, *, since: float | None = None, until: float | None = None, after: int = 0,
                     upto: int | None = None) -> int:
        """Events in the window, every status (one ``count(*)``: SQLite answers it from an index).

        Without the per-status grouping, which has to read every outcome row.
        """
        q = select(func.count()).select_from(OUTCOMES)
        if since is not None or until is not None:
            q = _window(select(func.count()).select_from(OUTCOMES.join(DECISIONS, _JOIN)), since, until)
        q = _ids(q, after, upto)
        with self._call("count events"), self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def event_id_bounds(self, *, since: float | None = None, until: float | None = None, after: int = 0,
                        upto: int | None = None) -> tuple[int, int]:
        """(after, upto): the outcome-id range ``after < id <= upto`` holding the window's events.

        The first and the last id, each an ``ORDER BY id LIMIT 1`` on the key
        (``min``/``max`` with a condition make SQLite scan the table).
        """
        q = select(OUTCOMES.c.id).where(OUTCOMES.c.id > after)
        if upto is not None:
            q = q.where(OUTCOMES.c.id <= upto)
        if since is not None or until is not None:
            q = _window(q.join_from(OUTCOMES, DECISIONS, _JOIN), since, until)
        with self._call("count events"), self.engine.connect() as conn:
            low = conn.execute(q.order_by(OUTCOMES.c.id).limit(1)).scalar()
            if low is None:
                return after, after
            top = conn.execute(q.order_by(OUTCOMES.c.id.desc()).limit(1)).scalar()
        return int(low) - 1, int(top)

    def event_rows(self, *, chunk: int, since: float | None = None, until: float | None = None, after: int = 0,
                   upto: int | None = None) -> Iterator[Sequence[tuple]]:
        """Event rows (:data:`EVENT_COLUMNS`), ``chunk`` at a time, in outcome-id order (keyset pagination)."""
        engine = self.engine
        q = self._event_query(chunk=chunk, since=since, until=until, upto=upto)
        raw_sql: str | None = None
        if engine.dialect.name == "sqlite":
            compiled = q.compile(dialect=engine.dialect)
            if compiled.positional and compiled.positiontup is not None:
                raw_sql, names = compiled.string, list(compiled.positiontup)
        cursor = after
        while True:
            with self._call("read events"), engine.connect() as conn:
                if raw_sql is not None:
                    params = compiled.construct_params({"sb_after": cursor})
                    rows = _fetch_raw(conn, raw_sql, tuple(params[n] for n in names))
                else:
                    rows = conn.execute(q, {"sb_after": cursor}).all()
            if not rows:
                return
            yield rows
            cursor = rows[-1][0]
            if len(rows) < chunk:
                return

    def _event_query(self, *, chunk: int | None, since: float | None = None, until: float | None = None,
                     upto: int | None = None) -> Any:
        """The keyset page of :meth:`event_rows` (bound parameter ``sb_after``; SQLAlchemy's path)."""
        q = select(*_RAW).join(DECISIONS, _JOIN).where(OUTCOMES.c.id > bindparam("sb_after"))
        if upto is not None:
            q = q.where(OUTCOMES.c.id <= upto)
        return _window(q, since, until).order_by(OUTCOMES.c.id).limit(chunk)

    def decision_time_at(self, k: int) -> float:
        """The decision time of the ``k``-th event (0-based) in decision-time order."""
        q = (select(DECISIONS.c.ts).select_from(OUTCOMES.join(DECISIONS, _JOIN))
             .order_by(DECISIONS.c.ts).offset(k).limit(1))
        with self._call("split"), self.engine.connect() as conn:
            return float(conn.execute(q).scalar_one())

    def latest_experiment_version(self, experiment: str) -> str | None:
        """The logged ``policy_version`` of the newest decision of ``experiment``."""
        q = (select(DECISIONS.c.policy_version).where(DECISIONS.c.experiment == experiment)
             .order_by(DECISIONS.c.id.desc()).limit(1))
        with self._call("latest experiment decision"), self.engine.connect() as conn:
            return conn.execute(q).scalar()

    def experiment_period(self, experiment: str, versions: Sequence[str]) -> tuple[float, float, int]:
        """(first ts, last ts, decisions) of ``experiment``'s decisions logged with one of ``versions``."""
        q = (select(func.min(DECISIONS.c.ts), func.max(DECISIONS.c.ts), func.count())
             .where(DECISIONS.c.experiment == experiment, DECISIONS.c.policy_version.in_(list(versions))))
        with self._call("experiment period"), self.engine.connect() as conn:
            lo, hi, n = conn.execute(q).one()
        return (float(lo) if lo is not None else math.nan, float(hi) if hi is not None else math.nan, int(n))

    def activity(self, *, buckets: int = 24, since: float | None = None) -> tuple[float, float, list[tuple]]:
        """Decisions and their outcomes in ``buckets`` equal time slices: what the operator dashboard plots.

        Returns ``(t0, width, rows)``; each row is ``(bucket, domain, arm, experiment, decisions, rewarded,
        sum_em, sum_tokens, sum_reward)`` over decisions with ``ts >= since`` (every decision when None);
        the sums cover outcomes with status ``ok`` only (defaulted and late ones are not learned from),
        the reward is ``em − lam·tokens/token_scale`` with each decision's own λ. Two aggregate queries.
        """
        validation.within(buckets, "buckets", low=1, high=1000, integral=True)
        bounds = _window(select(func.min(DECISIONS.c.ts), func.max(DECISIONS.c.ts)), since, None)
        with self._call("activity bounds"), self.engine.connect() as conn:
            lo, hi = conn.execute(bounds).one()
        if lo is None:
            return (math.nan, math.nan, [])
        t0, width = float(lo), max((float(hi) - float(lo)) / buckets, 1e-6)
        offset = (DECISIONS.c.ts - bindparam("t0", t0)) / bindparam("width", width)
        # floor of a non-negative number: SQLite's CAST truncates, PostgreSQL's rounds
        bucket = (cast(offset, Integer) if self.engine.dialect.name == "sqlite" else func.floor(offset)).label("b")
        ok = OUTCOMES.c.status == "ok"
        reward = OUTCOMES.c.em - DECISIONS.c.lam * OUTCOMES.c.tokens / DECISIONS.c.token_scale
        q = _window(
            select(bucket, DECISIONS.c.domain, DECISIONS.c.arm, DECISIONS.c.experiment, func.count(DECISIONS.c.id),
                   func.count(case((ok, OUTCOMES.c.id))), func.sum(case((ok, OUTCOMES.c.em))),
                   func.sum(case((ok, OUTCOMES.c.tokens))), func.sum(case((ok, reward))))
            .select_from(DECISIONS.outerjoin(OUTCOMES, _JOIN)), since, None
        ).group_by(bucket, DECISIONS.c.domain, DECISIONS.c.arm, DECISIONS.c.experiment)
        with self._call("activity"), self.engine.connect() as conn:
            rows = conn.execute(q).all()
        out = [(min(int(b), buckets - 1), dom, arm, exp, int(n), int(k), float(em or 0.0), float(tok or 0.0),
                float(rew or 0.0)) for b, dom, arm, exp, n, k, em, tok, rew in rows]
        return (t0, width, out)

    def latest_decision_time(self) -> float | None:
        """The newest decision's ``ts`` (None on an empty store): how fresh the log is."""
        with self._call("latest decision"), self.engine.connect() as conn:
            ts = conn.execute(select(func.max(DECISIONS.c.ts))).scalar()
        return float(ts) if ts is not None else None


__all__ = ["EVENT_COLUMNS", "EventLogQueries"]
