"""The replay log as off-policy evaluation input: store events → :class:`LoggedData`, chunk by chunk.

:class:`LogReader` pages through the decision+outcome events of a store with
keyset pagination on the outcome id (the shape of
:meth:`ReplayStore.iter_events <stopbandit.replay.store.ReplayStore.iter_events>`),
so memory is bounded by the chunk size whatever the size of the log. Each
chunk becomes an :class:`EventBatch` (column arrays in the arm order of the
evaluation's :class:`~stopbandit.bandit.arms.ArmSet`), which becomes a
:class:`~stopbandit.replay.ope.LoggedData` once a candidate policy's
probabilities (and, for DM/DR, a model's per-arm predictions) are known.

Per event:

* ``actions`` = ``arm_index``; the stored arm name must be the arm at that
  index, and the stored probability dict must name exactly the evaluation's
  arms (any order): otherwise an :class:`~stopbandit.errors.InputError` names
  the event and both arm lists.
* ``logging_probs`` = the stored probability vector in arm order.
* ``revealed_em`` / ``revealed_tokens``: from the stored probe trace
  (``ProbeTrace.hashed().to_json()``) and ``reference_key``
  (``answer_key(reference)``): the outcome of every arm the trace reveals, by
  exactly the rule of :func:`stopbandit.bandit.trace.counterfactual`; EM is
  ``em_of(answer, reference_key)``, which for a hashed answer is key equality
  (``answer_key`` is deterministic). The logged arm's entry is the logged
  outcome (as the Selector learns it); a trace whose own counterfactual
  disagrees with the logged outcome is counted (``trace_disagreements``).
  Events without a trace or without a reference are untraced (all NaN).
* ``status`` (``ok`` / ``defaulted`` / ``late``): every status is counted;
  only ``include`` (default ``ok``) reaches the estimates.

:func:`run_targets` streams the log once and evaluates any number of
candidate policies with any estimators: per chunk each estimator's
:meth:`~stopbandit.replay.ope.Estimator.accumulate` reduces the chunk to an
:class:`~stopbandit.replay.ope.Accumulator`, and accumulators merge exactly,
so a million events are evaluated in the memory of one chunk. Model
predictions (VW heads) are computed once per chunk and shared by every
candidate and estimator that needs them. The pass is cut into fixed ranges
of outcome ids (:func:`partition`), streamed by one process or by worker
processes and merged in range order: the estimates are the same floats
whatever the number of processes.

A chunk is decoded column by column: the probe traces of all its events are
revealed together on flat arrays (:func:`reveal_rows`, the same values as
:func:`reveal_row` per trace), and on SQLite the rows come straight from the
driver. ``benchmarks/ope_scale.py`` measures a million events this way.
"""

from __future__ import annotations

import gc
import math
import os
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import accumulate, chain
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Text, bindparam, cast, func, select
from sqlalchemy.exc import OperationalError

from stopbandit.bandit.arms import Arm, ArmSet
from stopbandit.bandit.stoprule import ProbeBatch, stops
from stopbandit.errors import ConfigError, InputError
from stopbandit.replay import jsoncodec
from stopbandit.replay.ope import Accumulator, Estimate, Estimator, LoggedData, Metric
from stopbandit.replay.store import DECISIONS, OUTCOME_STATUSES, OUTCOMES, ReplayStore, _guard

if TYPE_CHECKING:  # pragma: no cover
    from stopbandit.replay.candidates import Candidate, HeadsModel

loads_json = jsoncodec.loads
"""Decode one stored JSON text (:func:`stopbandit.replay.jsoncodec.loads`: orjson, the stdlib for what it rejects)."""
loads_many = jsoncodec.loads_many

DEFAULT_CHUNK = 5000
MAX_CHUNK = 200_000
PROGRESS_AFTER_S = 2.0
"""A job still running after this long shows a progress bar (on stderr)."""
PROGRESS_EVENTS = 50_000
"""A job over more events than this shows a progress bar from the start."""
PROB_TOL = 1e-6
PARALLEL_EVENTS = 200_000
"""Passes over at least this many events use one worker process per core by default."""
PARTITION_IDS = 50_000
"""A pass is cut into ranges of this many outcome ids, evaluated one after another or by worker processes;
either way each range is read from its start and the ranges' results are merged in order, so the
estimates are the same floats whatever the number of processes."""


# --------------------------------------------------------------------------- small parsers


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


def check_include(include: Sequence[str]) -> tuple[str, ...]:
    bad = [s for s in include if s not in OUTCOME_STATUSES]
    if bad or not include:
        raise ConfigError(f"include must name outcome statuses from {list(OUTCOME_STATUSES)}, got {list(include)!r}")
    return tuple(dict.fromkeys(include))


# --------------------------------------------------------------------------- probe traces


def reveal_row(trace: Mapping[str, Any], reference_key: str, arms: Sequence[Arm]) -> list[tuple[float, int] | None]:
    """Per arm, the (EM, tokens) a stored (hashed) trace reveals, None where it reveals nothing.

    The same result as ``counterfactual(ProbeTrace.from_json(trace), arm)``
    with ``em_of(cf.answer, reference_key)`` for every arm, read straight from
    the stored JSON (this is the path of traces off the canonical form; the
    canonical ones go through :func:`reveal_rows`' column path). The stop rule
    is :func:`stopbandit.bandit.stoprule.stops` on the batch of one. A trace
    whose probes are out of offset order raises ValueError (malformed).
    """
    probes = trace["p"]
    stop = int(trace["s"])
    offsets = [int(p[0]) for p in probes]
    confs = [float(p[1]) for p in probes]
    tokens = [int(p[3]) for p in probes]
    answers = [p[2] for p in probes]
    if any(b < a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"trace probe offsets must be non-decreasing, got {offsets}")
    found = stops(ProbeBatch(offsets, confs, tokens, [len(offsets)], answers), arms, [stop], [trace["r"] == "end"])
    ref = reference_key.strip()
    out: list[tuple[float, int] | None] = []
    for col in range(len(arms)):
        if not found.known[0, col]:
            out.append(None)
            continue
        src = int(found.probe[0, col])
        if src >= 0:
            answer, n = answers[src], int(found.tokens[0, col])
        else:  # the run's own final answer: read only when an arm needs it
            answer, n = trace["a"], int(found.tokens[0, col]) + int(trace["n"])
        out.append((1.0 if str(answer).strip() == ref else 0.0, n))
    return out


def reveal_rows(traces: Sequence[Any], reference_keys: Sequence[str], arms: Sequence[Arm],
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`reveal_row` of many stored traces: (EM (E, K), tokens (E, K), ok (E,)).

    NaN where :func:`reveal_row` gives None; ``ok`` is False where it raises
    on a malformed trace (KeyError, TypeError, ValueError or IndexError).
    Traces in canonical form (what ``ProbeTrace.to_json`` writes: probe lists
    ``[offset, confidence, answer, tokens]`` of integers and finite
    confidences, offsets non-decreasing and non-negative) are revealed
    together on flat probe columns, one batch of the stop-rule kernel for the
    whole chunk; any other trace goes through :func:`reveal_row` itself.
    """
    arms = tuple(arms)
    n_ev, k = len(traces), len(arms)
    em = np.full((n_ev, k), np.nan)
    tok = np.full((n_ev, k), np.nan)
    ok = np.ones(n_ev, dtype=bool)
    fast: list[int] = []
    slow: list[int] = []
    try:  # the canonical case: every field present, column by column
        fields = list(map(_TRACE_FIELDS, traces))
    except (KeyError, TypeError, IndexError):
        fields = []
        for i, tr in enumerate(traces):
            try:
                fields.append(_TRACE_FIELDS(tr))
                fast.append(i)
            except (KeyError, TypeError, IndexError):
                slow.append(i)
    else:
        fast = list(range(n_ev))
    if fields:
        ps, stops_, reasons, finals, final_n = zip(*fields)
        if set(map(type, ps)) != {list}:
            slow, fast = sorted(slow + fast), []
    if fast and not _reveal_flat(fast, ps, stops_, reasons, finals, final_n, reference_keys, arms, em, tok):
        slow = sorted(slow + fast)
    for i in slow:
        try:
            got = reveal_row(traces[i], reference_keys[i], arms)
        except (KeyError, TypeError, ValueError, IndexError):
            ok[i] = False  # its rows stay NaN
            continue
        em[i] = [np.nan if v is None else v[0] for v in got]
        tok[i] = [np.nan if v is None else v[1] for v in got]
    return em, tok, ok


_TRACE_FIELDS = itemgetter("p", "s", "r", "a", "n")
_NUMBERS = frozenset((int, float))


def _reveal_flat(rows: list[int], ps: Sequence[list], stops_: Sequence[Any], reasons: Sequence[Any],
                 finals: Sequence[Any], final_n: Sequence[Any], refs: Sequence[str],
                 arms: Sequence[Arm], em: np.ndarray, tok: np.ndarray) -> bool:
    """Fill ``em``/``tok`` rows ``rows`` from the flattened probes; False (nothing written) when not canonical."""
    n_ev = len(rows)
    lens = list(map(len, ps))
    probes = list(chain.from_iterable(ps))
    n_pr = len(probes)
    del ps
    stop = np.array(stops_)
    fin_n = np.array(final_n)
    if stop.dtype.kind != "i" or fin_n.dtype.kind != "i" or stop.shape != (n_ev,) or fin_n.shape != (n_ev,):
        return False
    is_end = np.array([r == "end" for r in reasons], dtype=bool)
    if n_pr:
        # columns of the flattened [offset, confidence, answer, tokens] probes (exactly four fields each);
        # offsets and tokens must be ints and confidences ints or floats, as ProbeTrace writes them
        if set(map(len, probes)) != {4}:
            return False
        flat = list(chain.from_iterable(probes))
        del probes
        offs, confs, answers, ntoks = flat[0::4], flat[1::4], flat[2::4], flat[3::4]
        del flat
        if set(map(type, offs)) != {int} or set(map(type, ntoks)) != {int} or not set(map(type, confs)) <= _NUMBERS:
            return False  # text, None, booleans: reveal_row converts them its way
        try:
            off = np.fromiter(offs, dtype=np.int64, count=n_pr)
            ntok = np.fromiter(ntoks, dtype=np.int64, count=n_pr)
        except OverflowError:
            return False
        conf = np.fromiter(confs, dtype=np.float64, count=n_pr)
        if not np.isfinite(conf).all() or off.min() < 0:
            return False
    else:
        off = ntok = np.zeros(0, dtype=np.int64)
        conf = np.zeros(0)
        answers = []
    batch = ProbeBatch(off, conf, ntok, lens, answers)
    if n_pr > 1 and (np.diff(off)[batch.event[1:] == batch.event[:-1]] < 0).any():
        return False  # offsets out of order: reveal_row decides
    found = stops(batch, arms, stop, is_end, fin_n)
    refs_s = [refs[i].strip() for i in rows]
    for col in range(len(arms)):
        known = found.known[:, col]
        src_l = found.probe[:, col].tolist()
        out_em = [math.nan] * n_ev
        for e in np.flatnonzero(known).tolist():
            q = src_l[e]
            answer = answers[q] if q >= 0 else finals[e]
            ref = refs_s[e]
            out_em[e] = 1.0 if answer == ref or str(answer).strip() == ref else 0.0
        em[rows, col] = out_em
        tok[rows, col] = np.where(known, found.tokens[:, col], np.nan)
    return True


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True, slots=True)
class LogCounts:
    """What a pass over the log saw. ``events``: every event read; ``used``: those estimated on."""

    events: int = 0
    used: int = 0
    ok: int = 0
    defaulted: int = 0
    late: int = 0
    traced: int = 0
    trace_disagreements: int = 0
    malformed_traces: int = 0

    def merge(self, other: LogCounts) -> LogCounts:
        return LogCounts(*(getattr(self, f) + getattr(other, f) for f in self.__slots__))  # type: ignore[attr-defined]

    @property
    def excluded(self) -> int:
        return self.events - self.used

    def to_dict(self) -> dict[str, int]:
        out = {f: getattr(self, f) for f in self.__slots__}  # type: ignore[attr-defined]
        out["excluded"] = self.excluded
        return out

    def warnings(self) -> list[str]:
        out = []
        if self.trace_disagreements:
            out.append(
                f"TRACES: in {self.trace_disagreements} traced events the trace's own outcome for the logged arm "
                "differs from the logged outcome (EM judged by something other than exact match, or tokens "
                "counted differently); revealed outcomes of the other arms use exact match of the hashed answers"
            )
        if self.malformed_traces:
            out.append(f"TRACES: {self.malformed_traces} stored traces are malformed and were treated as untraced")
        return out


@dataclass(eq=False)
class EventBatch:
    """One chunk of events in column form, arm order = the evaluation's arms.

    Shapes: ``n`` events, ``K`` arms. ``revealed_em`` / ``revealed_tokens`` are
    (n, K) with NaN where unknown, or None when no event of the chunk is traced.
    """

    arms: ArmSet
    cursors: np.ndarray
    keys: list[str]
    ts: np.ndarray
    domains: list[str | None]
    actions: np.ndarray
    logging_probs: np.ndarray
    em: np.ndarray
    tokens: np.ndarray
    lam: np.ndarray
    token_scale: np.ndarray
    status: list[str]
    features_raw: list[Any]
    revealed_em: np.ndarray | None
    revealed_tokens: np.ndarray | None
    _features: list[dict[str, Any]] | None = field(default=None, repr=False)
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return int(self.actions.shape[0])

    def features(self) -> list[dict[str, Any]]:
        """The stored feature dicts (decoded on first use: only models need them)."""
        if self._features is None:
            self._features = loads_many(self.features_raw)
        return self._features

    def distinct_features(self) -> tuple[list[dict[str, Any]], list[int] | None]:
        """(the distinct feature dicts, per event the index of its dict; None: all distinct, in event order).

        Events often log the very same features: each distinct stored text is
        decoded once (a model then scores each distinct context once).
        """
        raw = self.features_raw
        if self._features is not None or set(map(type, raw)) != {str}:
            return self.features(), None
        distinct = dict.fromkeys(raw)
        if len(distinct) == len(raw):
            return loads_many(raw), None
        index = {f: i for i, f in enumerate(distinct)}
        return loads_many(list(distinct)), list(map(index.__getitem__, raw))

    def logged_data(self, candidate_probs: np.ndarray | None = None, em_hat: np.ndarray | None = None,
                    tokens_hat: np.ndarray | None = None) -> LoggedData:
        """The chunk as LoggedData (candidate defaults to the logging policy itself)."""
        return LoggedData(
            actions=self.actions,
            logging_probs=self.logging_probs,
            candidate_probs=self.logging_probs if candidate_probs is None else candidate_probs,
            em=self.em,
            tokens=self.tokens,
            em_hat=em_hat,
            tokens_hat=tokens_hat,
            revealed_em=self.revealed_em,
            revealed_tokens=self.revealed_tokens,
        )


def _floats(values: list[Any]) -> np.ndarray:
    """``np.array(values, dtype=float64)`` in one pass (the same conversion of each value)."""
    return np.fromiter(values, dtype=np.float64, count=len(values))


_RAW_COLUMNS = (
    OUTCOMES.c.id, DECISIONS.c.request_key, DECISIONS.c.ts, DECISIONS.c.domain,
    cast(DECISIONS.c.features, Text), DECISIONS.c.arm, DECISIONS.c.arm_index, cast(DECISIONS.c.probabilities, Text),
    DECISIONS.c.lam, DECISIONS.c.token_scale, OUTCOMES.c.em, OUTCOMES.c.tokens, cast(OUTCOMES.c.trace, Text),
    OUTCOMES.c.reference_key, OUTCOMES.c.status,
)
_STATUS_AT = len(_RAW_COLUMNS) - 1
_STATUS = itemgetter(_STATUS_AT)


class LogReader:
    """Streams a store's events as :class:`EventBatch` chunks (keyset pagination, bounded memory).

    ``include``: outcome statuses that reach the estimates (default ``("ok",)``;
    ``defaulted`` and ``late`` events are counted either way). ``since`` /
    ``until``: decision-time window ``since <= ts < until`` (epoch seconds).
    ``traces=False`` does not decode the probe traces (no revealed outcomes;
    only the graph-feedback estimators and training need them); traced events
    are counted either way. ``after`` / ``upto``: outcome-id range
    ``after < id <= upto`` (how parallel workers split a pass).

    JSON columns are read as text and decoded here: the decode is the largest
    per-event cost of a pass, and reading text lets it skip what a pass does
    not need (features when no model is used).
    """

    def __init__(self, store: ReplayStore, arms: ArmSet, *, include: Sequence[str] = ("ok",),
                 since: float | None = None, until: float | None = None, chunk: int = DEFAULT_CHUNK,
                 traces: bool = True, after: int = 0, upto: int | None = None) -> None:
        if isinstance(chunk, bool) or not isinstance(chunk, int) or not 1 <= chunk <= MAX_CHUNK:
            raise ConfigError(f"chunk must be an integer in [1, {MAX_CHUNK}], got {chunk!r}")
        if not isinstance(arms, ArmSet):
            raise ConfigError(f"arms must be an ArmSet, got {type(arms).__name__}")
        self.store = store
        self.arms = arms
        self.include = check_include(include)
        self.since = since
        self.until = until
        self.chunk = chunk
        self.traces = traces
        self.after = int(after)
        self.upto = upto
        self.counts = LogCounts()
        self._names = arms.names
        self._orders: dict[tuple[str, ...], list[int] | None] = {self._names: None}
        self._names_array = np.array(self._names, dtype=object)

    # -- counting ------------------------------------------------------------------
    def count(self) -> dict[str, int]:
        """Events in the window by outcome status (one aggregate query)."""
        q = select(OUTCOMES.c.status, func.count()).group_by(OUTCOMES.c.status)
        if self.after:
            q = q.where(OUTCOMES.c.id > self.after)
        if self.upto is not None:
            q = q.where(OUTCOMES.c.id <= self.upto)
        if self.since is not None or self.until is not None:
            q = q.join(DECISIONS, DECISIONS.c.request_key == OUTCOMES.c.decision_key)
            q = self._window(q)
        with _guard("count events", self.store.engine), self.store.engine.connect() as conn:
            return {str(s): int(c) for s, c in conn.execute(q).all()}

    def count_total(self) -> int:
        """Events in the window, every status (one ``count(*)``: SQLite answers it from an index).

        ``sum(count().values())`` without the per-status grouping, which has to
        read every outcome row (a second of I/O on a million-event log).
        """
        q = select(func.count()).select_from(OUTCOMES)
        if self.since is not None or self.until is not None:
            q = self._window(select(func.count()).select_from(
                OUTCOMES.join(DECISIONS, DECISIONS.c.request_key == OUTCOMES.c.decision_key)))
        if self.after:
            q = q.where(OUTCOMES.c.id > self.after)
        if self.upto is not None:
            q = q.where(OUTCOMES.c.id <= self.upto)
        with _guard("count events", self.store.engine), self.store.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def cursor_bounds(self) -> tuple[int, int]:
        """(after, upto): the outcome-id range ``after < id <= upto`` this reader covers.

        The first and the last id, each an ``ORDER BY id LIMIT 1`` on the key
        (``min``/``max`` with a condition make SQLite scan the table).
        """
        q = select(OUTCOMES.c.id).where(OUTCOMES.c.id > self.after)
        if self.upto is not None:
            q = q.where(OUTCOMES.c.id <= self.upto)
        if self.since is not None or self.until is not None:
            q = self._window(q.join_from(OUTCOMES, DECISIONS, DECISIONS.c.request_key == OUTCOMES.c.decision_key))
        with _guard("count events", self.store.engine), self.store.engine.connect() as conn:
            low = conn.execute(q.order_by(OUTCOMES.c.id).limit(1)).scalar()
            if low is None:
                return self.after, self.after
            top = conn.execute(q.order_by(OUTCOMES.c.id.desc()).limit(1)).scalar()
        return int(low) - 1, int(top)

    def part(self, after: int, upto: int) -> LogReader:
        """The same reader over the outcome ids ``after < id <= upto`` only."""
        return LogReader(self.store, self.arms, include=self.include, since=self.since, until=self.until,
                         chunk=self.chunk, traces=self.traces, after=after, upto=upto)

    def spec(self) -> dict[str, Any]:
        """What a worker process needs to read the same events (the URL keeps its password)."""
        return {"url": self.store.engine.url.render_as_string(hide_password=False), "arms": self.arms.to_list(),
                "include": self.include, "since": self.since, "until": self.until, "chunk": self.chunk,
                "traces": self.traces}

    def _window(self, q):
        if self.since is not None:
            q = q.where(DECISIONS.c.ts >= self.since)
        if self.until is not None:
            q = q.where(DECISIONS.c.ts < self.until)
        return q

    # -- reading -------------------------------------------------------------------
    def _chunk_query(self):
        q = select(*_RAW_COLUMNS).join(DECISIONS, DECISIONS.c.request_key == OUTCOMES.c.decision_key)
        q = q.where(OUTCOMES.c.id > bindparam("sb_after"))
        if self.upto is not None:
            q = q.where(OUTCOMES.c.id <= self.upto)
        return self._window(q).order_by(OUTCOMES.c.id).limit(self.chunk)

    def raw_chunks(self) -> Iterator[Sequence[Any]]:
        """Raw rows (JSON as text), ``chunk`` at a time, in outcome order.

        On SQLite the rows come straight from the driver's cursor (plain
        tuples; the columns need no conversion there), which skips building
        a SQLAlchemy row per event; other databases go through SQLAlchemy.
        """
        engine = self.store.engine
        q = self._chunk_query()
        raw_sql: str | None = None
        if engine.dialect.name == "sqlite":
            compiled = q.compile(dialect=engine.dialect)
            if compiled.positional and compiled.positiontup is not None:
                raw_sql, names = compiled.string, list(compiled.positiontup)
        cursor = self.after
        while True:
            with _guard("read events", engine), engine.connect() as conn:
                if raw_sql is not None:
                    params = compiled.construct_params({"sb_after": cursor})
                    rows = _fetch_raw(conn, raw_sql, tuple(params[n] for n in names))
                else:
                    rows = conn.execute(q, {"sb_after": cursor}).all()
            if not rows:
                return
            yield rows
            cursor = rows[-1][0]
            if len(rows) < self.chunk:
                return

    def batches(self) -> Iterator[EventBatch]:
        """The included events, one :class:`EventBatch` per chunk read (empty chunks are skipped)."""
        self.counts = LogCounts()
        for rows in self.raw_chunks():
            batch, counts = self.build(rows)
            self.counts = self.counts.merge(counts)
            if batch is not None:
                yield batch

    def build(self, rows: Sequence[tuple]) -> tuple[EventBatch | None, LogCounts]:
        """Turn raw rows into a batch of the included events, and count what was seen.

        Column-wise: the rows are transposed once, the JSON columns decoded in
        one pass each, the checks and the revealed outcomes computed on arrays.
        The cyclic garbage collector is paused meanwhile: a chunk's decoded
        JSON is some ten container objects per event, all acyclic and freed
        by reference counting once the chunk's arrays are built, and letting
        the collector run would trace them (and every long-lived object)
        several times per chunk (that doubled the cost of a chunk).
        """
        with _gc_paused():
            return self._build(rows)

    def _build(self, rows: Sequence[tuple]) -> tuple[EventBatch | None, LogCounts]:
        names, arms, k = self._names, self.arms, len(self._names)
        if not rows:
            return None, LogCounts()
        status_n = Counter(map(_STATUS, rows))
        counts = LogCounts(events=len(rows), ok=status_n.get("ok", 0), defaulted=status_n.get("defaulted", 0),
                           late=status_n.get("late", 0))
        include = self.include
        if all(st in include for st in status_n):
            used = rows
        else:
            used = [row for row in rows if row[_STATUS_AT] in include]
            if not used:
                return None, counts
        (cursors, keys, ts, domains, feats, arm_col, idx_col, p_col, lam, scale, em, tokens, trace_col, ref_col,
         status) = (list(c) for c in zip(*used))
        n = len(keys)
        probs = self._probabilities(p_col, keys, cursors)
        act = self._actions(arm_col, idx_col, keys, cursors)
        try:  # rows of k values each: one flat pass (np.array would first discover the nesting)
            mu = np.fromiter(chain.from_iterable(probs), dtype=np.float64, count=n * k).reshape(n, k)
        except (TypeError, ValueError):
            mu = np.array(probs, dtype=np.float64)
        em_a = _floats(em)
        tok_a = _floats(tokens)
        self._check(mu, act, em_a, tok_a, keys, cursors)
        traced_rows = [i for i, (tr, ref) in enumerate(zip(trace_col, ref_col))
                       if tr is not None and ref is not None and tr != "null"]
        rev_em = rev_tok = None
        traced, disagree, malformed = len(traced_rows), 0, 0
        if traced_rows and self.traces:
            decoded = loads_many([trace_col[i] for i in traced_rows])
            keep = [j for j, tr in enumerate(decoded) if tr is not None]
            traced = len(keep)
            rows_t = [traced_rows[j] for j in keep]
            got_em, got_tok, ok = reveal_rows([decoded[j] for j in keep], [ref_col[i] for i in rows_t], self.arms.arms)
            malformed = int((~ok).sum())
            traced -= malformed
            if ok.any():
                sel = np.flatnonzero(ok)
                at = np.asarray(rows_t, dtype=np.int64)[sel]
                got_em, got_tok = got_em[sel], got_tok[sel]
                own = np.arange(at.size), act[at]
                own_em, own_tok = got_em[own], got_tok[own]
                # an unrevealed own arm (NaN) disagrees too; then the logged outcome is the logged arm's revealed one
                disagree = int((~(own_em == em_a[at]) | ~(own_tok == tok_a[at])).sum())
                got_em[own], got_tok[own] = em_a[at], tok_a[at]
                rev_em = np.full((n, k), np.nan)
                rev_tok = np.full((n, k), np.nan)
                rev_em[at] = got_em
                rev_tok[at] = got_tok
        batch = EventBatch(
            arms=arms, cursors=np.array(cursors, dtype=np.int64), keys=keys, ts=_floats(ts),
            domains=domains, actions=act, logging_probs=mu, em=em_a, tokens=tok_a,
            lam=_floats(lam), token_scale=_floats(scale), status=status,
            features_raw=feats, revealed_em=rev_em, revealed_tokens=rev_tok,
        )
        counts = LogCounts(counts.events, n, counts.ok, counts.defaulted, counts.late, traced, disagree, malformed)
        return batch, counts

    def _probabilities(self, p_col: list[Any], keys: list[str], cursors: list[int]) -> list[list[Any]]:
        """The stored probability dicts as rows in the evaluation's arm order (any stored key order)."""
        orders = self._orders
        decoded = loads_many(p_col)
        try:  # the common case: every row a dict with the arms in the evaluation's order
            if set(map(type, decoded)) == {dict} and set(map(tuple, decoded)) == {self._names}:
                return list(map(list, map(dict.values, decoded)))
        except TypeError:
            pass
        out = []
        for pd, key, cur in zip(decoded, keys, cursors):
            if not isinstance(pd, dict):
                raise InputError(f"event {key!r} (cursor {cur}): stored probabilities are not a mapping: {pd!r}")
            stored = tuple(pd)
            order = orders.get(stored, False)
            if order is False:
                order = self._order_of(stored, key, cur)
            vals = list(pd.values())
            out.append(vals if order is None else [vals[j] for j in order])
        return out

    def _actions(self, arm_col: list[Any], idx_col: list[Any], keys: list[str], cursors: list[int]) -> np.ndarray:
        """(n,) logged arm indices; each must index the logged arm's name in the evaluation's arms."""
        names, k = self._names, len(self._names)
        if set(map(type, idx_col)) == {int}:  # the common case, checked on arrays
            act = np.fromiter(idx_col, dtype=np.int64, count=len(idx_col))
            if ((act >= 0) & (act < k)).all() and (self._names_array[act] == np.array(arm_col, dtype=object)).all():
                return act
        bad = next((i for i, (arm, idx) in enumerate(zip(arm_col, idx_col))
                    if not (0 <= idx < k) or names[idx] != arm), None)
        if bad is not None:
            raise InputError(
                f"event {keys[bad]!r} (cursor {cursors[bad]}): logged arm {arm_col[bad]!r} at arm_index "
                f"{idx_col[bad]} does not match the evaluation's arms {list(names)}; pass --config with the arms "
                "the log was written with"
            )
        return np.array(idx_col, dtype=np.int64)

    def _order_of(self, stored: tuple[str, ...], key: str, cursor: int) -> list[int] | None:
        if sorted(stored) != sorted(self._names):
            raise InputError(
                f"event {key!r} (cursor {cursor}): logged probabilities name arms {list(stored)}, the evaluation's "
                f"arms are {list(self._names)}; pass --config with the arms the log was written with"
            )
        pos = {name: j for j, name in enumerate(stored)}
        order = [pos[name] for name in self._names]
        self._orders[stored] = order
        return order

    @staticmethod
    def _check(mu: np.ndarray, act: np.ndarray, em: np.ndarray, tok: np.ndarray, keys: list[str],
               cursors: list[int]) -> None:
        """Name the first bad event (LoggedData would only name its index in the chunk)."""
        problems = [
            (~np.isfinite(mu).all(axis=1) | (mu < 0).any(axis=1) | (mu > 1).any(axis=1), "probabilities outside [0, 1]"),
            (np.abs(mu.sum(axis=1) - 1.0) > PROB_TOL, "probabilities that do not sum to 1"),
            (mu[np.arange(len(act)), act] <= 0, "probability 0 for its logged arm"),
            (~np.isfinite(em) | (em < 0) | (em > 1), "em outside [0, 1]"),
            (~np.isfinite(tok) | (tok < 0), "negative or non-finite tokens"),
        ]
        for bad, what in problems:
            if bad.any():
                i = int(np.argmax(bad))
                raise InputError(f"event {keys[i]!r} (cursor {cursors[i]}) has {what}: probabilities row "
                                 f"{mu[i].tolist()}, arm_index {int(act[i])}, em {em[i]!r}, tokens {tok[i]!r}")


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector inside the block (reference counting still frees everything acyclic)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


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


def iter_logged(reader: LogReader, candidate: Candidate, model: HeadsModel | None = None) -> Iterator[LoggedData]:
    """The log as LoggedData chunks for one candidate (``model``'s predictions as em_hat/tokens_hat)."""
    for batch in reader.batches():
        heads = model.predict(batch) if model is not None else None
        cand_heads = candidate.model.predict(batch) if candidate.model is not None else None
        probs = candidate.probs(batch, cand_heads)
        yield batch.logged_data(probs, *(heads if heads is not None else (None, None)))


# --------------------------------------------------------------------------- streaming evaluation


@dataclass(frozen=True)
class Target:
    """One candidate evaluated with some estimators on some metrics (the unit of a streaming pass)."""

    label: str
    candidate: Candidate
    estimators: Mapping[str, Estimator]
    metrics: tuple[Metric, ...]


@dataclass(frozen=True)
class StreamResult:
    """``estimates[target][estimator][metric]`` (metric = ``em`` / ``tokens`` / ``reward``) and the counts."""

    estimates: dict[str, dict[str, dict[str, Estimate]]]
    counts: LogCounts
    seconds: float
    skipped: dict[str, str]
    jobs: int = 1


class _Progress:
    """A rich progress bar on stderr, shown for big jobs or once a job has run a couple of seconds."""

    def __init__(self, total: int | None, mode: bool | None, what: str) -> None:
        self.total, self.mode, self.what = total, mode, what
        self.t0 = time.monotonic()
        self.done = 0
        self._bar: Any = None
        self._task: Any = None
        if mode is True or (mode is None and total is not None and total > PROGRESS_EVENTS):
            self._start()

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                             transient=True)
        self._bar.start()
        self._task = self._bar.add_task(self.what, total=self.total, completed=self.done)

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is None and self.mode is None and time.monotonic() - self.t0 > PROGRESS_AFTER_S:
            self._start()
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


Plan = list[tuple[Target, dict[str, Estimator]]]
AccKey = tuple[str, str, str]


def _accumulate(batch: EventBatch, plan: Plan, model: HeadsModel | None, accs: dict[AccKey, Accumulator]) -> None:
    """Add one chunk to every (target, estimator, metric) accumulator; each model is asked once.

    The cyclic collector is paused as in :meth:`LogReader.build` (the decoded
    features and the VW lines of a chunk are acyclic and die with the chunk).
    """
    with _gc_paused():
        _accumulate_chunk(batch, plan, model, accs)


def _accumulate_chunk(batch: EventBatch, plan: Plan, model: HeadsModel | None,
                      accs: dict[AccKey, Accumulator]) -> None:
    preds: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def heads_of(m: HeadsModel | None) -> tuple[np.ndarray, np.ndarray] | None:
        if m is None or not m.has_heads:
            return None
        got = preds.get(id(m))
        if got is None:
            got = preds[id(m)] = m.predict(batch)
        return got

    rhat = heads_of(model)
    base = batch.logged_data(None, *(rhat if rhat is not None else (None, None)))
    for target, ests in plan:
        if not ests:
            continue
        probs = target.candidate.probs(batch, heads_of(target.candidate.model))
        try:
            data = base.with_candidate(probs)
        except InputError as exc:
            raise InputError(f"candidate {target.label!r} gave invalid probabilities: {exc}") from None
        for ename, est in ests.items():
            for metric in target.metrics:
                acc = est.accumulate(data, metric)
                key = (target.label, ename, metric.kind)
                prev = accs.get(key)
                accs[key] = acc if prev is None else prev.merge(acc)


def _merge_into(accs: dict[AccKey, Accumulator], part: Mapping[AccKey, Accumulator]) -> None:
    for key, acc in part.items():
        prev = accs.get(key)
        accs[key] = acc if prev is None else prev.merge(acc)


# Process-parallel passes: each worker streams a range of outcome ids with its own
# connection and its own copy of the models, and returns its accumulators and counts.
_WORKER: dict[str, Any] = {}


def _worker_init(spec: dict[str, Any], plan: Plan, model: HeadsModel | None) -> None:
    import gc

    store = ReplayStore(spec.pop("url"), check_schema=False)
    _WORKER.update(store=store, spec=spec, plan=plan, model=model)
    gc.freeze()  # what is loaded now lives as long as the worker: keep the collector off it


def _worker_task(after: int, upto: int) -> tuple[dict[AccKey, Accumulator], LogCounts]:
    w = _WORKER
    reader = LogReader(w["store"], ArmSet.of(w["spec"]["arms"]), include=w["spec"]["include"],
                       since=w["spec"]["since"], until=w["spec"]["until"], chunk=w["spec"]["chunk"],
                       traces=w["spec"]["traces"], after=after, upto=upto)
    return _run_range(reader, w["plan"], w["model"])


def _run_range(reader: LogReader, plan: Plan, model: HeadsModel | None,
               advance: Callable[[int], None] | None = None) -> tuple[dict[AccKey, Accumulator], LogCounts]:
    """One range of a pass, chunk by chunk from its start: its accumulators and counts."""
    accs: dict[AccKey, Accumulator] = {}
    seen = 0
    for batch in reader.batches():
        _accumulate(batch, plan, model, accs)
        if advance is not None:
            advance(reader.counts.events - seen)
            seen = reader.counts.events
    if advance is not None:
        advance(reader.counts.events - seen)  # chunks with no included event
    return accs, reader.counts


def partition(reader: LogReader, span: int = PARTITION_IDS) -> list[tuple[int, int]]:
    """The ranges ``(after, upto]`` of ``span`` outcome ids that a pass over ``reader`` is cut into, in order."""
    if isinstance(span, bool) or not isinstance(span, int) or span < 1:
        raise ConfigError(f"partition span must be a positive integer, got {span!r}")
    lo, hi = reader.cursor_bounds()
    edges = [*range(lo, hi, span), hi]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:])]


def auto_jobs(total_events: int | None) -> int:
    """Worker processes for a pass over ``total_events``: 1 below PARALLEL_EVENTS, else the cores (≤ 8)."""
    cores = os.cpu_count() or 1
    if total_events is None or total_events < PARALLEL_EVENTS or cores < 2:
        return 1
    return min(cores, 8)


def run_targets(reader: LogReader, targets: Sequence[Target], *, model: HeadsModel | None = None,
                alpha: float = 0.05, progress: bool | None = None, jobs: int | None = 1,
                partition_ids: int = PARTITION_IDS) -> StreamResult:
    """Stream the log once; evaluate every target with every estimator on every metric.

    ``model``: the per-arm predictions DM/DR-type estimators use (None: they are
    skipped, with the reason in ``skipped``). Candidates built on heads get
    their own model's predictions; a model shared by several targets (a λ
    sweep) is asked once per chunk. ``progress``: True/False forces the
    stderr progress bar on/off; None shows it for big or slow jobs.
    ``jobs``: worker processes (None: :func:`auto_jobs`). The outcome ids are
    cut into ranges of ``partition_ids`` ids (:func:`partition`); each range
    is streamed from its own start, by this process one after another or by
    the workers independently, and the ranges' accumulators are merged in
    range order. The merges are the same in both cases, so the estimates are
    the same floats whatever ``jobs`` is (and whichever worker finishes first).
    """
    t0 = time.perf_counter()
    skipped: dict[str, str] = {}
    plan: Plan = []
    for t in targets:
        usable = {}
        for name, est in t.estimators.items():
            if est.needs_model and (model is None or not model.has_heads):
                skipped[name] = (f"{est.name} needs per-arm EM/token predictions: no snapshot with heads to use "
                                 "as the model (run `stopbandit replay train`, or pass --model VERSION)")
                continue
            usable[name] = est
        plan.append((t, usable))
    total = reader.count_total() if (progress is not False or jobs is None) else None
    if jobs is None:
        jobs = auto_jobs(total)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be a positive integer, got {jobs!r}")
    if jobs > 1 and reader.store.engine.url.get_backend_name() == "sqlite" and \
            reader.store.engine.url.database in (None, "", ":memory:"):
        jobs = 1  # an in-memory database is private to this process
    ranges = partition(reader, partition_ids)
    results: list[tuple[dict[AccKey, Accumulator], LogCounts]] = []
    if jobs == 1:
        bar = _Progress(total, progress, "evaluating")
        try:
            for a, b in ranges:
                results.append(_run_range(reader.part(a, b), plan, model, bar.advance))
        finally:
            bar.close()
    else:
        from concurrent.futures.process import BrokenProcessPool

        try:
            results = _run_parallel(reader, plan, model, ranges, jobs, total, progress)
        except BrokenProcessPool as exc:  # workers could not start (e.g. spawned from an interactive main)
            import logging

            logging.getLogger("stopbandit.replay").warning("worker processes failed (%s); evaluating in one", exc)
            return run_targets(reader, targets, model=model, alpha=alpha, progress=progress, jobs=1,
                               partition_ids=partition_ids)
    accs: dict[AccKey, Accumulator] = {}
    counts = LogCounts()
    for part_accs, part_counts in results:
        _merge_into(accs, part_accs)
        counts = counts.merge(part_counts)
    reader.counts = counts
    estimates: dict[str, dict[str, dict[str, Estimate]]] = {}
    for (label, ename, kind), acc in accs.items():
        estimates.setdefault(label, {}).setdefault(ename, {})[kind] = acc.finalize(alpha)
    return StreamResult(estimates, counts, time.perf_counter() - t0, skipped, jobs)


def _run_parallel(reader: LogReader, plan: Plan, model: HeadsModel | None, ranges: Sequence[tuple[int, int]],
                  jobs: int, total: int | None, progress: bool | None,
                  ) -> list[tuple[dict[AccKey, Accumulator], LogCounts]]:
    """Each range by a worker process; the results in range order."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    if not ranges:
        return []
    spec = reader.spec()
    # fork is the cheapest start and safe while this process runs a single thread; with other threads
    # alive (a serving Selector's writer, say) a forked child could inherit a held lock: start clean ones
    import threading

    methods = mp.get_all_start_methods()
    method = "fork" if "fork" in methods and threading.active_count() == 1 else (
        "forkserver" if "forkserver" in methods else "spawn")
    results: dict[int, tuple[dict[AccKey, Accumulator], LogCounts]] = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context(method), initializer=_worker_init,
                             initargs=(spec, plan, model)) as pool:
        futures = {pool.submit(_worker_task, a, b): i for i, (a, b) in enumerate(ranges)}
        bar = _Progress(total, progress, f"evaluating ({jobs} processes)")  # after the fork: no thread is copied
        try:
            for fut in as_completed(futures):
                part = fut.result()
                results[futures[fut]] = part
                bar.advance(part[1].events)
        finally:
            bar.close()
    return [results[i] for i in range(len(ranges))]


def require_events(counts: LogCounts, what: str = "the selected events") -> None:
    """Raise an InputError saying why there is nothing to evaluate."""
    if counts.used:
        return
    if counts.events == 0:
        raise InputError(f"no events in {what}: the store has no decisions with outcomes there")
    raise InputError(
        f"none of the {counts.events} events in {what} is usable: {counts.defaulted} defaulted and {counts.late} late "
        "rewards are excluded by default (use --include-defaulted / --include-late to evaluate them)"
    )


# --------------------------------------------------------------------------- interchange (DSJSON, CSV)
#
# Both formats parse a line into a ParsedEvent (a decision row and, when the
# line carries an outcome, an outcome row, validated like the serving path
# validates them) or a LineError. import_events runs two passes: the first
# validates every line and checks it against the store (a key already stored
# with a different outcome or arm is a conflict), the second writes the valid
# lines through ReplayStore.write_batch. With on_error="fail" a single bad line
# stops the import before anything is written; with "skip" bad lines are
# counted, listed with their line numbers and left out. Writes are idempotent
# by request key, so importing a file twice adds nothing the second time.

ON_ERROR = ("skip", "fail")
IMPORT_BATCH = 2000
EXPERIMENTS_MAX = 32
MAX_REPORTED_ERRORS = 1000


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "error": self.message}


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    """One imported line: a decision row, its outcome row (None: decision only), and how it was mapped."""

    line: int
    decision: dict[str, Any]
    outcome: dict[str, Any] | None
    mapped_from_cost: bool = False
    clipped: bool = False


@dataclass
class ImportReport:
    """What an import read, wrote and refused (``errors``: line numbers and reasons, in file order)."""

    path: str
    format: str
    on_error: str
    lines: int = 0
    valid: int = 0
    inserted: int = 0
    duplicates: int = 0
    decisions_only: int = 0
    from_cost: int = 0
    clipped: int = 0
    error_count: int = 0
    errors: list[LineError] = field(default_factory=list)
    written: bool = False

    def add_error(self, err: LineError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(err)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "format": self.format, "on_error": self.on_error, "lines": self.lines,
            "valid": self.valid, "inserted": self.inserted, "duplicates": self.duplicates,
            "decisions_only": self.decisions_only, "mapped_from_cost": self.from_cost, "clipped": self.clipped,
            "skipped": self.error_count if self.written else 0, "errors": self.error_count,
            "error_lines": [e.to_dict() for e in self.errors], "written": self.written,
        }


def _finite(value: Any, field_: str, *, low: float | None = None, high: float | None = None,
            low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{field_} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise InputError(f"{field_} must be finite, got {value!r}")
    if low is not None and (v <= low if low_open else v < low):
        raise InputError(f"{field_} must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and v > high:
        raise InputError(f"{field_} must be <= {high:g}, got {value!r}")
    return v


def check_features(value: Any, field_: str = "features") -> dict[str, Any]:
    """A flat mapping of name → finite number or string (what the Selector logs).

    Names follow the extractor's rule (``features.extract.FEATURE_NAME``): the
    VW seam escapes values, not names, so a name must not carry VW syntax.
    """
    from stopbandit.features.extract import FEATURE_NAME

    if not isinstance(value, dict):
        raise InputError(f"{field_} must be a JSON object of name -> number or string, got {type(value).__name__}")
    out: dict[str, Any] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not FEATURE_NAME.match(k):
            raise InputError(f"{field_}: feature name {k!r} must match {FEATURE_NAME.pattern}")
        if isinstance(v, str):
            if len(v) > 256:
                raise InputError(f"{field_}: feature {k!r} is a string longer than 256 characters")
            out[k] = v
        elif isinstance(v, bool):
            out[k] = 1.0 if v else 0.0
        else:
            out[k] = _finite(v, f"{field_}.{k}")
    return out


def decision_row(arms: ArmSet, *, key: Any, ts: Any, domain: Any, features: Any, arm: Any,
                 probabilities: Mapping[str, Any], propensity: Any, lam: Any, token_scale: Any,
                 policy_version: Any, experiment: Any = "champion") -> dict[str, Any]:
    """A validated decision row (the shape ``ReplayStore.write_batch`` takes); errors name the field."""
    from stopbandit.replay.validate import check_key

    key = check_key(key, field="request_id")
    if not isinstance(arm, str) or arm not in arms.names:
        raise InputError(f"unknown arm {arm!r}; known arms: {list(arms.names)}")
    idx = arms.index(arm)
    if sorted(probabilities) != sorted(arms.names):
        raise InputError(f"probabilities must name every arm {list(arms.names)}, got {list(probabilities)}")
    probs = {name: _finite(probabilities[name], f"probability of arm {name!r}", low=0.0, high=1.0)
             for name in arms.names}
    total = math.fsum(probs.values())
    if abs(total - 1.0) > PROB_TOL:
        raise InputError(f"probabilities must sum to 1, they sum to {total!r}")
    prop = _finite(propensity, "propensity", low=0.0, high=1.0, low_open=True)
    if abs(prop - probs[arm]) > PROB_TOL:
        raise InputError(f"propensity {prop!r} differs from the probability of the logged arm {arm!r}: {probs[arm]!r}")
    if domain is not None and (not isinstance(domain, str) or not domain or len(domain) > 64):
        raise InputError(f"domain must be a string of 1-64 characters or absent, got {domain!r}")
    if not isinstance(policy_version, str) or not policy_version or len(policy_version) > 64:
        raise InputError(f"policy_version must be a string of 1-64 characters, got {policy_version!r}")
    if not isinstance(experiment, str) or not experiment or len(experiment) > EXPERIMENTS_MAX:
        raise InputError(f"experiment must be a string of 1-{EXPERIMENTS_MAX} characters, got {experiment!r}")
    return {
        "request_key": key, "ts": _finite(ts, "ts"), "domain": domain, "features": check_features(features),
        "arm": arm, "arm_index": idx, "probabilities": probs, "propensity": prop,
        "lam": _finite(lam, "lam", low=0.0), "token_scale": _finite(token_scale, "token_scale", low=0.0, low_open=True),
        "policy_version": policy_version, "experiment": experiment,
    }


def outcome_of(key: str, *, em: Any, tokens: Any, ts: Any, latency_ms: Any = None, trace: Any = None,
               reference_key: Any = None, status: Any = "ok") -> dict[str, Any]:
    """A validated outcome row; a trace must parse as a ProbeTrace and is stored in canonical form."""
    from stopbandit.bandit.trace import ProbeTrace
    from stopbandit.replay.store import outcome_row

    if trace is not None:
        if not isinstance(trace, dict):
            raise InputError(f"trace must be a JSON object (a hashed ProbeTrace), got {type(trace).__name__}")
        trace = ProbeTrace.from_json(trace).to_json()
    if reference_key is not None and (not isinstance(reference_key, str) or not reference_key
                                      or len(reference_key) > 32):
        raise InputError(f"reference_key must be a string of 1-32 characters, got {reference_key!r}")
    if not isinstance(status, str):
        raise InputError(f"status must be a string, got {status!r}")
    if isinstance(em, bool) or isinstance(tokens, bool):
        raise InputError(f"em and tokens must be numbers, got em={em!r}, tokens={tokens!r}")
    return outcome_row(key, em, tokens, latency_ms, _finite(ts, "outcome ts"), trace=trace,
                       reference_key=reference_key, status=status)


def _existing(store: ReplayStore, keys: Sequence[str]) -> tuple[dict[str, tuple[int, float]], dict[str, tuple]]:
    """Stored (arm_index, propensity) per decision key and (em, tokens) per outcome key, among ``keys``."""
    decisions: dict[str, tuple[int, float]] = {}
    outcomes: dict[str, tuple] = {}
    with _guard("import lookup", store.engine), store.engine.connect() as conn:
        for i in range(0, len(keys), 500):
            part = list(keys[i:i + 500])
            q = select(DECISIONS.c.request_key, DECISIONS.c.arm_index, DECISIONS.c.propensity).where(
                DECISIONS.c.request_key.in_(part))
            decisions.update({k: (a, p) for k, a, p in conn.execute(q).all()})
            q = select(OUTCOMES.c.decision_key, OUTCOMES.c.em, OUTCOMES.c.tokens).where(
                OUTCOMES.c.decision_key.in_(part))
            outcomes.update({k: (e, t) for k, e, t in conn.execute(q).all()})
    return decisions, outcomes


def import_events(store: ReplayStore, parse: Callable[[], Iterator[ParsedEvent | LineError]], *, path: str,
                  fmt: str, on_error: str = "skip", batch: int = IMPORT_BATCH) -> ImportReport:
    """Validate every line, then write the valid ones (see the section comment above).

    ``parse()`` is called once per pass and must yield the same sequence each time.
    """
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {list(ON_ERROR)}, got {on_error!r}")
    report = ImportReport(path=path, format=fmt, on_error=on_error)
    bad_lines: set[int] = set()
    skip_lines: set[int] = set()  # valid, but already stored (or repeated in the file)
    seen: dict[str, tuple] = {}
    pending: list[ParsedEvent] = []

    def check(items: list[ParsedEvent]) -> None:
        dec, out = _existing(store, [p.decision["request_key"] for p in items])
        for p in items:
            key = p.decision["request_key"]
            mine = (p.decision["arm_index"], p.decision["propensity"])
            outcome = None if p.outcome is None else (p.outcome["em"], p.outcome["tokens"])
            problem = None
            if key in seen:
                first_line, first = seen[key]
                if first != (mine, outcome):
                    problem = f"request_id {key!r} also on line {first_line} with a different decision or outcome"
            elif key in dec and (dec[key][0] != mine[0] or abs(dec[key][1] - mine[1]) > PROB_TOL):
                problem = (f"request_id {key!r} is already stored with arm_index {dec[key][0]} and propensity "
                           f"{dec[key][1]!r}; this line has {mine[0]} and {mine[1]!r}")
            elif key in out and outcome is not None and tuple(out[key]) != outcome:
                problem = (f"request_id {key!r} already has an outcome (em {out[key][0]!r}, tokens {out[key][1]!r}); "
                           f"this line has em {outcome[0]!r}, tokens {outcome[1]!r} (outcomes are write-once)")
            if problem is not None:
                report.add_error(LineError(p.line, f"conflict: {problem}"))
                bad_lines.add(p.line)
                continue
            report.valid += 1
            report.from_cost += p.mapped_from_cost
            report.clipped += p.clipped
            if p.outcome is None:
                report.decisions_only += 1
            if key in seen or (key in dec and (outcome is None or key in out)):
                report.duplicates += 1
                skip_lines.add(p.line)
            seen.setdefault(key, (p.line, (mine, outcome)))

    for item in parse():
        if isinstance(item, LineError):
            report.lines += 1
            report.add_error(item)
            bad_lines.add(item.line)
            continue
        report.lines += 1
        pending.append(item)
        if len(pending) >= batch:
            check(pending)
            pending = []
    if pending:
        check(pending)
    if report.error_count and on_error == "fail":
        return report
    decisions: list[dict[str, Any]] = []
    outcomes: list[dict[str, Any]] = []
    for item in parse():
        if isinstance(item, LineError) or item.line in bad_lines or item.line in skip_lines:
            continue
        decisions.append(item.decision)
        if item.outcome is not None:
            outcomes.append(item.outcome)
        report.inserted += 1
        if len(decisions) >= batch:
            store.write_batch(decisions, outcomes)
            decisions, outcomes = [], []
    if decisions:
        store.write_batch(decisions, outcomes)
    report.written = True
    return report


def export_events(store: ReplayStore, write: Callable[[Any], None], *, since: float | None = None,
                  chunk: int = DEFAULT_CHUNK) -> int:
    """Call ``write(event)`` for every stored event (every status), in outcome order; returns the count."""
    n = 0
    for events in store.iter_events(chunk=chunk, since_ts=since):
        for ev in events:
            write(ev)
            n += 1
    return n


__all__ = [
    "DEFAULT_CHUNK",
    "EventBatch",
    "LogCounts",
    "LogReader",
    "StreamResult",
    "Target",
    "ImportReport",
    "LineError",
    "ParsedEvent",
    "check_features",
    "decision_row",
    "export_events",
    "import_events",
    "iso_time",
    "outcome_of",
    "auto_jobs",
    "partition",
    "iter_logged",
    "parse_time",
    "require_events",
    "loads_json",
    "loads_many",
    "reveal_row",
    "reveal_rows",
    "run_targets",
]
