"""The replay log as off-policy evaluation input: store events → :class:`EventBatch` chunks.

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
* ``revealed_em`` / ``revealed_tokens``: the outcome of every arm the stored
  probe trace reveals (:mod:`stopbandit.replay.reveal`, the stop-rule kernel
  on the chunk's traces); EM is exact match of the hashed answer against
  ``reference_key``. The logged arm's entry is the logged outcome (as the
  Selector learns it); a trace whose own counterfactual disagrees with the
  logged outcome is counted (``trace_disagreements``). Events without a trace
  or without a reference are untraced (all NaN).
* ``status`` (``ok`` / ``defaulted`` / ``late``): every status is counted;
  only ``options.include`` (default ``ok``) reaches the estimates.

A chunk is decoded column by column, and on SQLite the rows come straight
from the driver.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np

from stopbandit.bandit.arms import ArmSet
from stopbandit.bandit.learned_stop import CONTEXT_FEATURES, LearnedInputs, LearnedStop, stop_context
from stopbandit.errors import ConfigError, InputError
from stopbandit.replay import jsoncodec
from stopbandit.replay.ope import LoggedData
from stopbandit.replay.options import PROB_TOL, ReplayOptions
from stopbandit.replay.reveal import reveal_rows
from stopbandit.replay.eventlog import EVENT_COLUMNS
from stopbandit.replay.store import ReplayStore

if TYPE_CHECKING:  # pragma: no cover
    from stopbandit.replay.candidates import Candidate, HeadsModel

loads_many = jsoncodec.loads_many


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


_STATUS_AT = EVENT_COLUMNS.index("status")
_STATUS = itemgetter(_STATUS_AT)


class LogReader:
    """Streams a store's events as :class:`EventBatch` chunks (keyset pagination, bounded memory).

    ``options``: which events and how many per chunk (:class:`ReplayOptions`:
    ``include``, ``since``/``until``, ``chunk``; its ``alpha``, ``progress``
    and ``jobs`` are for the pass that reads this reader). ``traces=False``
    does not decode the probe traces (no revealed outcomes; only the
    graph-feedback estimators and training need them); traced events are
    counted either way. ``after`` / ``upto``: outcome-id range
    ``after < id <= upto`` (how parallel workers split a pass).

    JSON columns are read as text and decoded here: the decode is the largest
    per-event cost of a pass, and reading text lets it skip what a pass does
    not need (features when no model is used).
    """

    def __init__(self, store: ReplayStore, arms: ArmSet, options: ReplayOptions | None = None, *,
                 traces: bool = True, after: int = 0, upto: int | None = None,
                 stop: tuple[LearnedStop, float, float] | None = None) -> None:
        if not isinstance(arms, ArmSet):
            raise ConfigError(f"arms must be an ArmSet, got {type(arms).__name__}")
        if options is None:
            options = ReplayOptions()
        elif not isinstance(options, ReplayOptions):
            raise ConfigError(f"options must be a ReplayOptions, got {type(options).__name__}")
        self.store = store
        self.arms = arms
        self.options = options
        self.include = options.include
        self.since = options.since
        self.until = options.until
        self.chunk = options.chunk
        self.traces = traces
        self.after = int(after)
        self.upto = upto
        self.counts = LogCounts()
        # (the learned stop rule, λ, token_scale) a trace reveals learned arms with; None: it reveals none
        self.stop = stop
        self._names = arms.names
        self._orders: dict[tuple[str, ...], list[int] | None] = {self._names: None}
        self._names_array = np.array(self._names, dtype=object)

    # -- counting ------------------------------------------------------------------
    def _scope(self) -> dict[str, Any]:
        return {"since": self.since, "until": self.until, "after": self.after, "upto": self.upto}

    def count(self) -> dict[str, int]:
        """Events in the window by outcome status (one aggregate query)."""
        return self.store.count_events_by_status(**self._scope())

    def count_total(self) -> int:
        """Events in the window, every status (one ``count(*)``, cheaper than :meth:`count`)."""
        return self.store.count_events(**self._scope())

    def cursor_bounds(self) -> tuple[int, int]:
        """(after, upto): the outcome-id range ``after < id <= upto`` this reader covers."""
        return self.store.event_id_bounds(**self._scope())

    def part(self, after: int, upto: int) -> LogReader:
        """The same reader over the outcome ids ``after < id <= upto`` only."""
        return LogReader(self.store, self.arms, self.options, traces=self.traces, after=after, upto=upto,
                         stop=self.stop)

    def spec(self) -> dict[str, Any]:
        """What a worker process needs to read the same events (the URL keeps its password)."""
        return {"url": self.store.engine.url.render_as_string(hide_password=False), "arms": self.arms.to_list(),
                "options": self.options, "traces": self.traces,
                "stop": None if self.stop is None else [self.stop[0].to_json(), self.stop[1], self.stop[2]]}

    # -- reading -------------------------------------------------------------------
    def raw_chunks(self) -> Iterator[Sequence[Any]]:
        """Raw rows (:data:`~stopbandit.replay.eventlog.EVENT_COLUMNS`, JSON as text), ``chunk`` at a time."""
        return self.store.event_rows(chunk=self.chunk, **self._scope())

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
            learned = None
            if self.stop is not None and any(a.learned for a in arms):
                rule, stop_lam, stop_scale = self.stop
                ctx = np.stack([stop_context(f) for f in loads_many([feats[i] for i in rows_t])]) if rows_t else \
                    np.zeros((0, len(CONTEXT_FEATURES)))
                learned = LearnedInputs(rule, stop_lam, ctx, stop_scale)
            got_em, got_tok, ok = reveal_rows([decoded[j] for j in keep], [ref_col[i] for i in rows_t], self.arms.arms,
                                              learned)
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


def iter_logged(reader: LogReader, candidate: Candidate, model: HeadsModel | None = None) -> Iterator[LoggedData]:
    """The log as LoggedData chunks for one candidate (``model``'s predictions as em_hat/tokens_hat)."""
    for batch in reader.batches():
        heads = model.predict(batch) if model is not None else None
        cand_heads = candidate.model.predict(batch) if candidate.model is not None else None
        probs = candidate.probs(batch, cand_heads)
        yield batch.logged_data(probs, *(heads if heads is not None else (None, None)))


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


__all__ = ["EventBatch", "LogCounts", "LogReader", "iter_logged", "require_events"]
