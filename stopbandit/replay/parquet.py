"""The replay log as partitioned Parquet, and off-policy evaluation of its partitions on Ray (or locally).

Export (``stopbandit replay export --format parquet --out DIR``): one file
``part-NNNNN.parquet`` per range of :data:`~stopbandit.replay.runner.PARTITION_IDS`
outcome ids, the ranges :func:`~stopbandit.replay.runner.partition` cuts a
pass into, rows in outcome order. Columns: every field of an event
(:class:`~stopbandit.replay.store.Event`; ``cursor`` is the outcome id, the
JSON fields ``features``, ``probabilities`` and ``trace`` are JSON text). The
arm set and the format version are in each file's schema metadata
(``stopbandit.arms``, ``stopbandit.format``). The directory is written as
``DIR.partial`` and renamed when complete.

Evaluation (:func:`evaluate_parquet`, ``stopbandit replay evaluate-parquet``):
each partition is a map task — read the file, cut it into ``chunk``-row
batches exactly as the store's reader would (:meth:`LogReader.build` on the
same rows), and sum every estimator's :class:`Accumulator`; the reduce merges
the partitions' accumulators in partition order. These are the chunks and
the merges of the single-process pass over the store, so the estimates are
the same floats (for the whole log; a ``--since``/``--until`` window cuts
the store's pass at other ranges, and then they agree to rounding).

Why Ray: the map step is our own Python (VW models for DM/DR, numpy
accumulators); Ray runs Python functions as tasks on a local or remote
cluster without a JVM or a DataFrame translation, ships the model once per
worker, and its local mode starts in seconds on a laptop. Spark would run
the same code only through Python UDFs on a JVM. ``engine="local"`` runs the
same map and reduce in this process (no cluster), and is what the tests
compare against.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from stopbandit import validation
from stopbandit.bandit.arms import ArmSet
from stopbandit.errors import ConfigError, InputError
from stopbandit.replay import jsoncodec
from stopbandit.replay.eventlog import EVENT_COLUMNS
from stopbandit.replay.logreader import LogCounts, LogReader
from stopbandit.replay.options import ReplayOptions
from stopbandit.replay.runner import PARTITION_IDS, AccKey, Plan, _accumulate, finalize_accumulators, partition
from stopbandit.replay.store import Event, ReplayStore

FORMAT = 1
ENGINES = ("ray", "local")
COLUMNS = ("cursor", "request_key", "ts", "domain", "features", "arm", "arm_index", "probabilities", "propensity",
           "lam", "token_scale", "policy_version", "experiment", "em", "tokens", "latency_ms", "outcome_ts", "trace",
           "reference_key", "status")
JSON_COLUMNS = ("features", "probabilities", "trace")


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - the parquet extra is installed in the tests
        raise ConfigError("Parquet needs pyarrow: pip install 'stopbandit[parquet]'") from None
    return pa, pq


def _schema(arms: ArmSet) -> Any:
    pa, _ = _pyarrow()
    types = {"cursor": pa.int64(), "ts": pa.float64(), "arm_index": pa.int32(), "propensity": pa.float64(),
             "lam": pa.float64(), "token_scale": pa.float64(), "em": pa.float64(), "tokens": pa.int64(),
             "latency_ms": pa.float64(), "outcome_ts": pa.float64()}
    fields = [pa.field(c, types.get(c, pa.string())) for c in COLUMNS]
    meta = {b"stopbandit.arms": json.dumps(arms.to_list()).encode(), b"stopbandit.format": str(FORMAT).encode()}
    return pa.schema(fields, metadata=meta)


def _columns(events: Sequence[Event]) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    dumps = jsoncodec.dumps
    for ev in events:
        for c in COLUMNS:
            v = getattr(ev, c)
            if c in JSON_COLUMNS and v is not None:
                v = dumps(v)
            cols[c].append(v)
    return cols


def export_parquet(store: ReplayStore, out_dir: str, arms: ArmSet, *, span: int = PARTITION_IDS,
                   chunk: int = 50_000) -> dict[str, Any]:
    """Write every event of the store as partitioned Parquet under ``out_dir`` (see the module docstring)."""
    pa, pq = _pyarrow()
    if os.path.exists(out_dir):
        raise ConfigError(f"--out {out_dir!r} exists; Parquet export writes a new directory")
    tmp = f"{out_dir}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    schema = _schema(arms)
    reader = LogReader(store, arms, ReplayOptions(progress=False, jobs=1), traces=False)
    files, events = [], 0
    try:
        for i, (after, upto) in enumerate(partition(reader, span)):
            name = f"part-{i:05d}.parquet"
            with pq.ParquetWriter(os.path.join(tmp, name), schema) as writer:
                for chunk_events in store.iter_events(after, chunk=chunk, until=upto):
                    for ev in chunk_events:
                        if not 0 <= ev.arm_index < len(arms) or arms[ev.arm_index].name != ev.arm:
                            raise InputError(f"event {ev.request_key!r}: logged arm {ev.arm!r} (index "
                                             f"{ev.arm_index}) does not fit the arms {list(arms.names)}; pass "
                                             "--config with the arms the log was written with")
                    writer.write_table(pa.Table.from_pydict(_columns(chunk_events), schema=schema))
                    events += len(chunk_events)
            files.append(name)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": out_dir, "files": files, "events": events, "span": span}


def partitions(path: str) -> list[str]:
    """The partition files of an exported directory, in partition order."""
    if not os.path.isdir(path):
        raise ConfigError(f"{path!r} is not a directory of Parquet partitions (replay export --format parquet)")
    files = sorted(f for f in os.listdir(path) if f.startswith("part-") and f.endswith(".parquet"))
    if not files:
        raise ConfigError(f"{path!r} holds no part-*.parquet files")
    return [os.path.join(path, f) for f in files]


def parquet_arms(path: str) -> ArmSet:
    """The arm set recorded in a partition's schema metadata."""
    _, pq = _pyarrow()
    meta = pq.read_schema(path).metadata or {}
    if b"stopbandit.arms" not in meta:
        raise InputError(f"{path}: no stopbandit.arms in the schema metadata (not a stopbandit export)")
    return ArmSet.of(json.loads(meta[b"stopbandit.arms"]))


def _rows(path: str, options: ReplayOptions) -> Iterator[list[tuple]]:
    """The partition's rows as the store's reader reads them (EVENT_COLUMNS), ``options.chunk`` at a time."""
    _, pq = _pyarrow()
    table = pq.read_table(path, columns=[c if c != "cursor" else "cursor" for c in
                                         ("cursor", *EVENT_COLUMNS[1:])])
    data = table.to_pydict()
    order = ["cursor", *EVENT_COLUMNS[1:]]
    rows = list(zip(*(data[c] for c in order)))
    if options.since is not None or options.until is not None:
        ts = EVENT_COLUMNS.index("ts")
        rows = [r for r in rows if (options.since is None or r[ts] >= options.since)
                and (options.until is None or r[ts] < options.until)]
    for i in range(0, len(rows), options.chunk):
        yield rows[i:i + options.chunk]


def map_partition(path: str, arms_list: list[dict[str, Any]], options: ReplayOptions, plan: Plan, model: Any,
                  traces: bool) -> tuple[dict[AccKey, Any], LogCounts]:
    """The map step: one partition's accumulators and counts (what a range of the store's pass gives)."""
    reader = LogReader(None, ArmSet.of(arms_list), options, traces=traces)  # type: ignore[arg-type]
    accs: dict[AccKey, Any] = {}
    counts = LogCounts()
    for rows in _rows(path, options):
        batch, c = reader.build(rows)
        counts = counts.merge(c)
        if batch is not None:
            _accumulate(batch, plan, model, accs)
    return accs, counts


@dataclass(frozen=True)
class ParquetRun:
    estimates: dict[str, dict[str, dict[str, Any]]]
    counts: LogCounts
    calibration: dict[str, Any] | None
    partitions: int
    engine: str
    workers: int


def run_parquet(files: Sequence[str], arms: ArmSet, plan: Plan, model: Any, options: ReplayOptions, *,
                traces: bool, engine: str = "ray", workers: int = 2,
                ray_init: Callable[[], Any] | None = None) -> ParquetRun:
    """Map every partition (Ray tasks, or here for ``engine="local"``), reduce in partition order."""
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    validation.positive_ints("", workers=workers)
    arms_list = arms.to_list()
    if engine == "local":
        results = [map_partition(f, arms_list, options, plan, model, traces) for f in files]
    else:
        import ray

        started = False
        if not ray.is_initialized():
            if ray_init is not None:
                ray_init()
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
            started = True
        try:
            task = ray.remote(num_cpus=1)(map_partition)
            shared = [ray.put(x) for x in (arms_list, options, plan, model)]
            results = ray.get([task.remote(f, *shared, traces) for f in files])
        finally:
            if started:
                ray.shutdown()
    accs: dict[AccKey, Any] = {}
    counts = LogCounts()
    for part_accs, part_counts in results:  # partition order, whatever order the tasks finished in
        for key, acc in part_accs.items():
            prev = accs.get(key)
            accs[key] = acc if prev is None else prev.merge(acc)
        counts = counts.merge(part_counts)
    estimates, calibration = finalize_accumulators(accs, options.alpha)
    return ParquetRun(estimates, counts, calibration, len(files), engine, workers)


__all__ = ["COLUMNS", "ENGINES", "FORMAT", "ParquetRun", "export_parquet", "map_partition", "parquet_arms",
           "partitions", "run_parquet"]
