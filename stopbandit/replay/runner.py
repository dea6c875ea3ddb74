"""One streaming pass over the log that evaluates many candidate policies with many estimators.

:func:`run_targets` streams the log once: per chunk each estimator's
:meth:`~stopbandit.replay.ope.Estimator.accumulate` reduces the chunk to an
:class:`~stopbandit.replay.ope.Accumulator`, and accumulators merge exactly,
so a million events are evaluated in the memory of one chunk. Model
predictions (VW heads) are computed once per chunk and shared by every
candidate and estimator that needs them. The pass is cut into fixed ranges
of outcome ids (:func:`partition`), streamed by one process or by worker
processes and merged in range order: the estimates are the same floats
whatever the number of processes. ``benchmarks/ope_scale.py`` measures it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from stopbandit import validation
from stopbandit.bandit.arms import ArmSet
from stopbandit.bandit.learned_stop import LearnedStop
from stopbandit.errors import InputError
from stopbandit.replay.calibration import CalibrationAcc
from stopbandit.replay.logreader import EventBatch, LogCounts, LogReader, _gc_paused
from stopbandit.replay.ope import Accumulator, Estimate, Estimator, Metric
from stopbandit.replay.store import ReplayStore

if TYPE_CHECKING:  # pragma: no cover
    from stopbandit.replay.candidates import Candidate, HeadsModel

PROGRESS_AFTER_S = 2.0
"""A job still running after this long shows a progress bar (on stderr)."""
PROGRESS_EVENTS = 50_000
"""A job over more events than this shows a progress bar from the start."""
WORKER_START_S = 1.0
"""What starting one worker process costs before it streams a range (start, imports, the plan and model
shipped to it), counted against what it would save."""
PARALLEL_MIN_S = 3.0
"""A rest of a pass estimated to take less than this in one process is not worth worker processes."""
PARTITION_IDS = 50_000
"""A pass is cut into ranges of this many outcome ids, evaluated one after another or by worker processes;
either way each range is read from its start and the ranges' results are merged in order, so the
estimates are the same floats whatever the number of processes."""


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
    # the model's P(EM) against the log on the logged arms (calibration.CalibrationAcc.report): "model" is what
    # DM/DR used, "raw" the heads before their recalibration (only when the model has one)
    calibration: dict[str, dict[str, Any]] | None = None


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
    if rhat is not None and model is not None and batch.n:
        # how well DM/DR's P(EM) matches the log, on each event's logged arm (raw too when recalibrated)
        logged = np.arange(batch.n), batch.actions
        if model.calibration is not None:
            _add_calibration(accs, "raw", rhat[0][logged], batch.em)
        rhat = model.calibrated(rhat)
        _add_calibration(accs, "model", rhat[0][logged], batch.em)
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


CALIBRATION = "__calibration__"


def _add_calibration(accs: dict[AccKey, Any], which: str, p: np.ndarray, y: np.ndarray) -> None:
    key = (CALIBRATION, which, "em")
    acc = CalibrationAcc.of(p, y)
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
    spec = w["spec"]
    stop = spec.get("stop")
    reader = LogReader(w["store"], ArmSet.of(spec["arms"]), spec["options"], traces=spec["traces"],
                       after=after, upto=upto,
                       stop=None if stop is None else (LearnedStop.from_json(stop[0]), stop[1], stop[2]))
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
    validation.positive_ints("partition ", span=span)
    lo, hi = reader.cursor_bounds()
    edges = [*range(lo, hi, span), hi]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:])]


def choose_jobs(first_range_s: float, ranges_left: int, *, cores: int | None = None,
                load: float | None = None) -> int:
    """Worker processes for the rest of a pass, from what its first range cost in this process.

    The rest would take about ``first_range_s × ranges_left`` here. Workers
    pay off only when that is long (at least PARALLEL_MIN_S), when cores are
    idle (the cores less the load average, this process's own share not
    counted: on a loaded machine a second process only takes turns with the
    first) and when the time saved exceeds the workers' start (WORKER_START_S
    each). ``cores``/``load``: the machine's (None: measured now).
    """
    rest = first_range_s * ranges_left
    if ranges_left < 2 or rest < PARALLEL_MIN_S:
        return 1
    cores = (os.cpu_count() or 1) if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # pragma: no cover - no load average on this platform
            load = 0.0
    idle = int(cores - max(0.0, load - 1.0))
    jobs = max(1, min(idle, 8, ranges_left))
    if jobs > 1 and rest / jobs + WORKER_START_S * jobs >= rest:
        return 1
    return jobs


def make_plan(targets: Sequence[Target], model: HeadsModel | None) -> tuple[Plan, dict[str, str]]:
    """Each target with the estimators that can run (a model-based one needs ``model``), and why others cannot."""
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
    return plan, skipped


def finalize_accumulators(accs: dict[AccKey, Any], alpha: float) -> tuple[dict[str, dict[str, dict[str, Estimate]]],
                                                                           dict[str, dict[str, Any]] | None]:
    """The merged accumulators as ``estimates[target][estimator][metric]``, and the model's calibration report."""
    accs = dict(accs)
    calibration = {which: accs.pop((CALIBRATION, which, "em")).report()
                   for which in ("model", "raw") if (CALIBRATION, which, "em") in accs}
    estimates: dict[str, dict[str, dict[str, Estimate]]] = {}
    for (label, ename, kind), acc in accs.items():
        estimates.setdefault(label, {}).setdefault(ename, {})[kind] = acc.finalize(alpha)
    return estimates, calibration or None


def run_targets(reader: LogReader, targets: Sequence[Target], *, model: HeadsModel | None = None,
                partition_ids: int = PARTITION_IDS) -> StreamResult:
    """Stream the log once; evaluate every target with every estimator on every metric.

    ``model``: the per-arm predictions DM/DR-type estimators use (None: they are
    skipped, with the reason in ``skipped``). Candidates built on heads get
    their own model's predictions; a model shared by several targets (a λ
    sweep) is asked once per chunk. The reader's options give the interval
    level (``alpha``), the progress bar (``progress``) and the worker
    processes (``jobs``; None: the first range runs here and :func:`choose_jobs`
    decides from its cost how many workers take the rest). The outcome ids are cut
    into ranges of ``partition_ids`` ids (:func:`partition`); each range is
    streamed from its own start, by this process one after another or by the
    workers independently, and the ranges' accumulators are merged in range
    order. The merges are the same in both cases, so the estimates are the
    same floats whatever ``jobs`` is (and whichever worker finishes first).
    """
    alpha, progress, jobs = reader.options.alpha, reader.options.progress, reader.options.jobs
    t0 = time.perf_counter()
    plan, skipped = make_plan(targets, model)
    total = reader.count_total() if progress is not False else None
    private = reader.store.engine.url.get_backend_name() == "sqlite" and \
        reader.store.engine.url.database in (None, "", ":memory:")  # an in-memory database: this process's only
    measure = jobs is None and not private
    jobs = 1 if jobs is None or private else jobs
    ranges = partition(reader, partition_ids)
    results: list[tuple[dict[AccKey, Accumulator], LogCounts]] = []
    if jobs == 1:
        bar = _Progress(total, progress, "evaluating")
        try:
            for a, b in ranges:
                started = time.perf_counter()
                results.append(_run_range(reader.part(a, b), plan, model, bar.advance))
                if measure and len(results) == 1:
                    jobs = choose_jobs(time.perf_counter() - started, len(ranges) - 1)
                    if jobs > 1:
                        break
        finally:
            bar.close()
    if jobs > 1:
        from concurrent.futures.process import BrokenProcessPool

        try:
            results += _run_parallel(reader, plan, model, ranges[len(results):], jobs, total, progress)
        except BrokenProcessPool as exc:  # workers could not start (e.g. spawned from an interactive main)
            import logging

            logging.getLogger("stopbandit.replay").warning("worker processes failed (%s); evaluating in one", exc)
            one = LogReader(reader.store, reader.arms, reader.options.with_(jobs=1), traces=reader.traces,
                            after=reader.after, upto=reader.upto, stop=reader.stop)
            result = run_targets(one, targets, model=model, partition_ids=partition_ids)
            reader.counts = one.counts
            return result
    accs: dict[AccKey, Accumulator] = {}
    counts = LogCounts()
    for part_accs, part_counts in results:
        _merge_into(accs, part_accs)
        counts = counts.merge(part_counts)
    reader.counts = counts
    estimates, calibration = finalize_accumulators(accs, alpha)
    return StreamResult(estimates, counts, time.perf_counter() - t0, skipped, jobs, calibration)


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


__all__ = ["PARTITION_IDS", "StreamResult", "Target", "choose_jobs", "finalize_accumulators", "make_plan", "partition",
           "run_targets"]
