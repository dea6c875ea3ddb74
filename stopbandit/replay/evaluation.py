"""Library-level offline evaluation: a candidate's estimates, and the λ sweep of a snapshot's heads.

:func:`evaluate` and :func:`sweep_log` are what ``stopbandit replay
evaluate`` / ``replay sweep`` and ``stopbandit lambda target`` run; benchmarks
and notebooks call them in-process. Each is one streaming pass
(:func:`stopbandit.replay.runner.run_targets`) over the events
:class:`~stopbandit.replay.options.ReplayOptions` selects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from stopbandit.bandit.arms import ArmSet
from stopbandit.errors import ConfigError
from stopbandit.replay.candidates import Candidate, FixedArm, HeadsCandidate, HeadsModel, LoggingCandidate
from stopbandit.replay.logreader import LogCounts, LogReader, require_events
from stopbandit.replay.ope import ESTIMATORS, IPS, Estimate, Estimator, Metric, make_estimator, reveal_matrix
from stopbandit.replay.options import ReplayOptions
from stopbandit.replay.runner import PARTITION_IDS, Target, make_plan, run_targets
from stopbandit.replay.store import ReplayStore

DEFAULT_ESTIMATORS = ("ips", "snips", "dr", "dm")
GRAPH_ESTIMATORS = ("graph-ips", "graph-dr", "graph-chain-dr")


@dataclass(frozen=True)
class Evaluation:
    """What ``replay evaluate`` computes (``estimates[estimator][metric]``, metric em/tokens/reward)."""

    policy: dict[str, Any]
    lam: float
    token_scale: float
    arms: tuple[str, ...]
    estimates: dict[str, dict[str, Estimate]]
    logging: dict[str, Estimate]
    counts: LogCounts
    skipped: dict[str, str]
    model: str | None
    seconds: float
    jobs: int = 1
    notes: dict[str, str] = field(default_factory=dict)
    # DM/DR's P(EM) against the log on the logged arms: Brier score and reliability table
    # (calibration.CalibrationAcc.report; "raw" too when the model is recalibrated); None without a model
    calibration: dict[str, Any] | None = None

    def warnings(self) -> list[str]:
        out = list(self.counts.warnings())
        for name, reason in self.skipped.items():
            out.append(f"SKIPPED {name}: {reason}")
        for by_metric in self.estimates.values():
            seen: list[str] = []
            for est in by_metric.values():
                for w in est.warnings:
                    if w not in seen:
                        seen.append(w)
            label = next(iter(by_metric.values())).estimator
            out.extend(f"[{label}] {w}" for w in seen)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy, "lam": self.lam, "token_scale": self.token_scale, "arms": list(self.arms),
            "model": self.model, "counts": self.counts.to_dict(),
            "estimates": {e: {m: est.to_dict() for m, est in ms.items()} for e, ms in self.estimates.items()},
            "logging": {m: est.to_dict() for m, est in self.logging.items()},
            "skipped": self.skipped, "warnings": self.warnings(), "seconds": round(self.seconds, 3),
            "jobs": self.jobs, "calibration": self.calibration,
            **({"notes": self.notes} if self.notes else {}),
        }


def parse_estimators(spec: str | Sequence[str], *, traced: bool) -> list[str]:
    """Estimator names from ``"ips,snips,dr"``; ``auto`` = ips,snips,dr,dm plus graph-ips,graph-dr when traced."""
    items = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise ConfigError("estimators is empty: name at least one of " + ", ".join(ESTIMATORS))
    out: list[str] = []
    for item in items:
        if item == "auto":
            out.extend(DEFAULT_ESTIMATORS + (GRAPH_ESTIMATORS if traced else ()))
        elif item == "all":
            out.extend(ESTIMATORS)
        elif item in ESTIMATORS:
            out.append(item)
        else:
            raise ConfigError(f"unknown estimator {item!r}; known estimators: {', '.join(ESTIMATORS)} (or auto, all)")
    return list(dict.fromkeys(out))


def has_traces(store: ReplayStore) -> bool:
    """Whether any outcome carries a reference key (every traced, evaluable outcome has one)."""
    return store.has_traces()


def evaluate(
    store: ReplayStore,
    arms: ArmSet,
    candidate: Candidate,
    estimators: Sequence[str],
    *,
    lam: float,
    token_scale: float,
    model: HeadsModel | None = None,
    options: ReplayOptions | None = None,
    stop: tuple[Any, float, float] | None = None,
    partition_ids: int = PARTITION_IDS,
) -> Evaluation:
    """Estimate ``candidate``'s EM, tokens and reward at ``lam`` with each estimator, in one streaming pass.

    The logging policy's own (on-policy) value on the same events comes along
    as the reference row. Memory is bounded by ``options.chunk``. ``stop``: (the
    learned stop rule, λ, token_scale) the traces reveal learned arms with.
    ``partition_ids``: outcome ids per range of the pass (:func:`~stopbandit.replay.runner.partition`).
    """
    targets = _targets(arms, candidate, estimators, lam, token_scale)
    reader = LogReader(store, arms, options, traces=_traced(estimators), stop=stop)
    result = run_targets(reader, targets, model=model, partition_ids=partition_ids)
    return _evaluation(candidate, lam, token_scale, arms, model, result.estimates, result.counts, result.skipped,
                       seconds=result.seconds, jobs=result.jobs, calibration=result.calibration)


def evaluate_parquet(
    path: str,
    arms: ArmSet | None,
    candidate: Candidate,
    estimators: Sequence[str],
    *,
    lam: float,
    token_scale: float,
    model: HeadsModel | None = None,
    options: ReplayOptions | None = None,
    engine: str = "ray",
    workers: int = 2,
) -> Evaluation:
    """:func:`evaluate` over a Parquet export (:mod:`stopbandit.replay.parquet`): partitions mapped on ``engine``.

    ``arms``: None takes the export's own (its schema metadata).
    """
    import time

    from stopbandit.replay.parquet import parquet_arms, partitions, run_parquet

    t0 = time.perf_counter()
    files = partitions(path)
    arms = parquet_arms(files[0]) if arms is None else arms
    options = options if options is not None else ReplayOptions()
    plan, skipped = make_plan(_targets(arms, candidate, estimators, lam, token_scale), model)
    run = run_parquet(files, arms, plan, model, options, traces=_traced(estimators), engine=engine, workers=workers)
    return _evaluation(candidate, lam, token_scale, arms, model, run.estimates, run.counts, skipped,
                       seconds=time.perf_counter() - t0, jobs=workers if engine == "ray" else 1,
                       calibration=run.calibration, notes={"engine": engine, "partitions": str(run.partitions)})


def _targets(arms: ArmSet, candidate: Candidate, estimators: Sequence[str], lam: float,
             token_scale: float) -> list[Target]:
    """The candidate under every named estimator, and the logging policy on-policy as the reference row."""
    reveals = reveal_matrix(arms)
    ests: dict[str, Estimator] = {name: make_estimator(name, reveals=reveals) for name in estimators}
    metrics = (Metric("em"), Metric("tokens"), Metric("reward", lam, token_scale))
    return [Target("candidate", candidate, ests, metrics),
            Target("logging", LoggingCandidate(), {"on-policy": IPS()}, metrics)]


def _traced(estimators: Sequence[str]) -> bool:
    """Whether an estimator reads probe traces (the graph ones), so the reader must decode them."""
    return any(name.startswith("graph") for name in estimators)


def _evaluation(candidate: Candidate, lam: float, token_scale: float, arms: ArmSet, model: HeadsModel | None,
                estimates: dict[str, dict[str, dict[str, Estimate]]], counts: LogCounts, skipped: dict[str, str], *,
                seconds: float, jobs: int, calibration: dict[str, Any] | None,
                notes: dict[str, str] | None = None) -> Evaluation:
    """The :class:`Evaluation` of a finished pass over :func:`_targets`; InputError when it saw no event."""
    require_events(counts)
    return Evaluation(
        policy=candidate.describe(), lam=lam, token_scale=token_scale, arms=arms.names,
        estimates=estimates.get("candidate", {}), logging=estimates["logging"]["on-policy"],
        counts=counts, skipped=skipped, model=model.version if model is not None else None,
        seconds=seconds, jobs=jobs, notes=notes or {}, calibration=calibration,
    )


@dataclass(frozen=True)
class SweepResult:
    points: list[Any]  # SweepPoint
    fixed: dict[str, tuple[Estimate, Estimate]]
    logging: dict[str, Estimate]
    counts: LogCounts
    estimator: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimator": self.estimator,
            "points": [{"lam": p.lam, "em": p.em.to_dict(), "tokens": p.tokens.to_dict(), "reward": p.reward.to_dict()}
                       for p in self.points],
            "fixed_arms": {n: {"em": e.to_dict(), "tokens": t.to_dict()} for n, (e, t) in self.fixed.items()},
            "logging": {m: est.to_dict() for m, est in self.logging.items()},
            "counts": self.counts.to_dict(), "seconds": round(self.seconds, 3),
        }


def sweep_log(
    store: ReplayStore,
    arms: ArmSet,
    model: HeadsModel,
    lambdas: Sequence[float],
    *,
    estimator: str = "dr",
    token_scale: float,
    explore: bool = False,
    options: ReplayOptions | None = None,
    stop: tuple[Any, float, float] | None = None,
) -> SweepResult:
    """The heads' policy at every λ and every fixed arm, EM and mean tokens with intervals, in one pass.

    The heads are asked once per chunk; every λ reuses them. The most lenient
    arm is labelled "(full reasoning)".
    """
    from stopbandit.replay.sweep import SweepPoint

    if not model.has_heads:
        raise ConfigError(f"the sweep needs EM/token heads; snapshot {model.version!r} is a "
                          f"{model.policy.name!r} policy without them")
    est = make_estimator(estimator, reveals=reveal_matrix(arms))
    targets = []
    for lam in lambdas:
        targets.append(Target(f"lam={lam!r}", HeadsCandidate(model=model, lam=lam, explore=explore),
                              {estimator: est}, (Metric("em"), Metric("tokens"), Metric("reward", lam, token_scale))))
    full = arms.most_conservative()
    labels = {}
    for k, arm in enumerate(arms):
        label = f"{arm.name} (full reasoning)" if k == full else arm.name
        labels[label] = f"arm:{arm.name}"
        targets.append(Target(f"arm:{arm.name}", FixedArm(index=k, name=arm.name), {estimator: est},
                              (Metric("em"), Metric("tokens"))))
    targets.append(Target("logging", LoggingCandidate(), {"on-policy": IPS()},
                          (Metric("em"), Metric("tokens"))))
    reader = LogReader(store, arms, options, traces=_traced([estimator]), stop=stop)
    result = run_targets(reader, targets, model=model)
    require_events(result.counts)
    res = result.estimates
    if estimator not in res.get(f"lam={lambdas[0]!r}", {}):
        raise ConfigError(f"estimator {estimator!r} could not run: {result.skipped.get(estimator, 'no model')}")
    points = []
    for lam in lambdas:
        r = res[f"lam={lam!r}"][estimator]
        points.append(SweepPoint(lam, r["em"], r["tokens"], r["reward"]))
    fixed = {label: (res[key][estimator]["em"], res[key][estimator]["tokens"]) for label, key in labels.items()}
    return SweepResult(points, fixed, res["logging"]["on-policy"], result.counts, est.name, result.seconds)


__all__ = ["DEFAULT_ESTIMATORS", "GRAPH_ESTIMATORS", "Evaluation", "SweepResult", "evaluate", "evaluate_parquet",
           "has_traces", "parse_estimators", "sweep_log"]
