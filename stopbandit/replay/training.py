"""Counterfactual training from the replay log, with an honest held-out evaluation.

:func:`time_split` splits the log by decision time: the training part is every
event before the cutoff, the held-out part every event from it on (``--since``
names the cutoff; ``--test-frac f`` puts it at the ``1 − f`` quantile of the
decision times). :func:`train_heads` fits fresh EM/token heads on the training
part in outcome order, the order the online learner saw them: a traced event
(probe trace + reference) updates every arm its trace reveals
(``HeadsPolicy.learn_revealed``, the nested feedback of the design), an
untraced one its logged arm only (the same call with that one outcome).
:func:`fit_calibration` fits the EM head's logistic recalibration on the
training part (:mod:`stopbandit.replay.calibration`: DM/DR read P(EM) as a
probability, and an online fit on sparse binary rewards is off in level).
:func:`train_and_evaluate` then scores the new heads on the held-out part
off-policy (DR and SNIPS, with intervals; the new heads are DR's model, never
fitted on those events) next to the logging policy's on-policy value on the
same events, and saves the heads as a snapshot.

Importance weighting (``importance_weighting=True``). The heads are a
regression on whatever (context, arm) pairs the log holds, so arms the logging
policy rarely chose in some context are fitted from few, unrepresentative
examples. Weighting each example by ``w = 1/q`` — ``q`` the probability that
its arm was observed: the logging probability ``μ(a|x)`` of the logged arm,
``q_k = Σ_j μ_j·reveals[j, k]`` for an arm a trace revealed — makes the fit
target the uniform mix of arms (the regression analogue of IPS). Weights are
clipped to ``[1, IW_CLIP]`` (VW treats a label probability above 1 as 1, and
large weights make the heads chase single events) and passed to
``HeadsPolicy.learn_revealed(weights=…)``, which feeds an EM between 0 and 1
(aggregated rewards) as the two labels with weights in the ratio
``em : 1 − em``, scaled so that the smaller is at least 1 (VW clamps a label
probability above 1 to 1, which would otherwise flatten the ratio).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from stopbandit import validation
from stopbandit.config import snapshot_key
from stopbandit.bandit.arms import ArmSet
from stopbandit.bandit.exploration import Exploration
from stopbandit.bandit.learned_stop import LearnedStop
from stopbandit.bandit.policy import HeadsPolicy
from stopbandit.bandit.snapshot import new_version, pack
from stopbandit.errors import ConfigError, InputError
from stopbandit.replay.candidates import HeadsCandidate, HeadsModel, LoggingCandidate, batch_shared_lines
from stopbandit.replay.calibration import fit_platt
from stopbandit.replay.logreader import LogCounts, LogReader, require_events
from stopbandit.replay.options import ReplayOptions
from stopbandit.replay.runner import Target, _Progress, run_targets
from stopbandit.replay.times import iso_time
from stopbandit.replay.ope import DoublyRobust, Estimate, Metric, SNIPS, IPS, reveal_matrix
from stopbandit.replay.store import ReplayStore, check_role

IW_CLIP = 50.0


@dataclass(frozen=True, slots=True)
class Split:
    """Train on decision ts < ``cutoff``; hold out ts >= ``cutoff`` (counts: events of every status)."""

    cutoff: float
    n_train: int
    n_test: int
    how: str

    def to_dict(self) -> dict[str, Any]:
        return {"cutoff": self.cutoff, "cutoff_iso": iso_time(self.cutoff), "n_train": self.n_train,
                "n_test": self.n_test, "how": self.how}


def time_split(store: ReplayStore, *, since: float | None = None, test_frac: float | None = None) -> Split:
    """The train/test split by decision time (give ``since`` or ``test_frac``; default ``test_frac=0.2``)."""
    if since is not None and test_frac is not None:
        raise ConfigError("give either --since (the held-out part starts there) or --test-frac, not both")
    total = store.count_events()  # every outcome has its decision (foreign key)
    if total < 2:
        raise InputError(f"the store holds {total} event(s) with outcomes; a train/test split needs at least 2")
    if since is None:
        frac = 0.2 if test_frac is None else test_frac
        validation.within(frac, "test_frac", low=0, high=1, low_open=True, high_open=True, expected="a number {range}")
        k = min(total - 1, max(1, int(math.floor(total * (1.0 - frac)))))
        cutoff = store.decision_time_at(k)
        how = f"test-frac {frac:g}"
    else:
        cutoff, how = float(since), "since"
    n_test = store.count_events(since=cutoff)
    n_train = total - n_test
    if n_train == 0:
        raise InputError(f"no events before the split at {iso_time(cutoff)}: nothing to train on "
                         "(move --since later or use --test-frac)")
    if n_test == 0:
        raise InputError(f"no events at or after the split at {iso_time(cutoff)}: nothing to evaluate on")
    return Split(cutoff, n_train, n_test, how)


# --------------------------------------------------------------------------- training


@dataclass(frozen=True, slots=True)
class TrainStats:
    events: int
    learned: int
    revealed_updates: int
    traced: int
    importance_weighting: bool
    seconds: float
    counts: LogCounts

    def to_dict(self) -> dict[str, Any]:
        return {"events": self.events, "learned": self.learned, "revealed_updates": self.revealed_updates,
                "traced": self.traced, "importance_weighting": self.importance_weighting,
                "seconds": round(self.seconds, 3), "counts": self.counts.to_dict()}


def train_heads(
    store: ReplayStore,
    arms: ArmSet,
    *,
    exploration: Exploration,
    token_scale: float,
    options: ReplayOptions | None = None,
    importance_weighting: bool = False,
    stop: tuple[LearnedStop, float, float] | None = None,
) -> tuple[HeadsPolicy, TrainStats]:
    """Fresh heads fitted on the events ``options`` select (decision ts in ``[since, until)``, outcome order).

    ``stop``: (the learned stop rule, λ, token_scale) the traces reveal learned arms with (without it a
    trace reveals no learned arm; the logged arm is learned either way).
    """
    t0 = time.perf_counter()
    reader = LogReader(store, arms, options, stop=stop)
    progress = reader.options.progress
    reveals = reveal_matrix(arms).astype(np.float64)
    policy = HeadsPolicy(arms, exploration, token_scale)
    learned = revealed_updates = traced = 0
    total = None if progress is False else reader.count_total()
    bar = _Progress(total, progress, "training")
    seen = 0
    try:
        for batch in reader.batches():
            lines = batch_shared_lines(batch)
            rev = batch.revealed_em is not None
            q = batch.logging_probs @ reveals if importance_weighting else None
            for i in range(batch.n):
                a = int(batch.actions[i])
                outcomes: dict[int, tuple[float, int]] = {}
                if rev and not np.isnan(batch.revealed_em[i]).all():  # type: ignore[index]
                    row_em, row_tok = batch.revealed_em[i], batch.revealed_tokens[i]  # type: ignore[index]
                    outcomes = {k: (float(row_em[k]), int(row_tok[k])) for k in range(len(arms))
                                if not math.isnan(row_em[k])}
                    traced += 1
                outcomes[a] = (float(batch.em[i]), int(batch.tokens[i]))
                weights = None
                if q is not None:
                    weights = {}
                    for k in outcomes:
                        prob = batch.logging_probs[i, a] if k == a else q[i, k]
                        weights[k] = min(IW_CLIP, max(1.0, 1.0 / prob)) if prob > 0 else IW_CLIP
                policy.learn_revealed(lines[i], outcomes, a, float(batch.logging_probs[i, a]), 0.0, weights=weights)
                learned += 1
                revealed_updates += len(outcomes)
            bar.advance(reader.counts.events - seen)
            seen = reader.counts.events
    finally:
        bar.close()
    stats = TrainStats(reader.counts.events, learned, revealed_updates, traced, importance_weighting,
                       time.perf_counter() - t0, reader.counts)
    return policy, stats


# --------------------------------------------------------------------------- train + evaluate


@dataclass(frozen=True)
class TrainReport:
    version: str | None
    saved: bool
    split: Split
    lam: float
    token_scale: float
    train: TrainStats
    test_counts: LogCounts
    candidate: dict[str, dict[str, Estimate]]
    logging: dict[str, Estimate]
    skipped: dict[str, str]
    role: str = "serving"
    stop_training: dict[str, Any] | None = None
    exact: dict[str, Any] | None = None
    # the EM recalibration fitted on the training part and the held-out Brier score / reliability table of the
    # heads before ("raw") and after it ("model"): calibration.fit_platt, CalibrationAcc.report
    calibration: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshot": self.version, "saved": self.saved, "role": self.role, "split": self.split.to_dict(),
            "lam": self.lam,
            "token_scale": self.token_scale, "train": self.train.to_dict(), "test_counts": self.test_counts.to_dict(),
            "candidate": {e: {m: est.to_dict() for m, est in ms.items()} for e, ms in self.candidate.items()},
            "logging": {m: est.to_dict() for m, est in self.logging.items()},
            "skipped": self.skipped, "stop_rule": self.stop_training, "exact_stop_rules": self.exact,
            "calibration": self.calibration,
        }


def train_and_evaluate(
    store: ReplayStore,
    arms: ArmSet,
    *,
    exploration: Exploration,
    lam: float,
    token_scale: float,
    feature_config: Mapping[str, Any],
    split: Split,
    options: ReplayOptions | None = None,
    importance_weighting: bool = False,
    save: bool = True,
    role: str = "serving",
    stop_label: str = "auto",
) -> TrainReport:
    """Train on the part before ``split.cutoff``, evaluate on the rest, save the heads (unless ``save=False``).

    ``options``: statuses, chunk, interval level, progress and processes of
    both passes (the split decides their time windows). ``role="candidate"``
    stores the heads without making them what following Selectors hot-swap
    to: they are served only as a challenger until promoted.

    The learned stop rule is trained on the training part's traces that reached
    the end (:func:`stopbandit.replay.stop_rules.train_stop_rule`, ``stop_label``),
    reveals the learned arms to the heads' training, is evaluated exactly on the
    held-out traces next to every other stop rule, and is stored in the snapshot.
    """
    from stopbandit.replay.stop_rules import exact_stop_rules, stop_rule_arms, traced_events, train_stop_rule

    check_role(role)
    options = options if options is not None else ReplayOptions()
    train_opts = options.with_(since=None, until=split.cutoff)
    stop_training = train_stop_rule(traced_events(store, train_opts), label=stop_label)
    rule = stop_training.rule if stop_training.rule.trained else None
    policy, stats = train_heads(store, arms, exploration=exploration, token_scale=token_scale,
                                options=train_opts, importance_weighting=importance_weighting,
                                stop=None if rule is None else (rule, lam, token_scale))
    if stats.learned == 0:
        policy.close()
        require_events(stats.counts, f"the training part (decision time before {iso_time(split.cutoff)})")
    version = new_version("r")
    model = HeadsModel(policy, version)
    try:
        fit = fit_calibration(store, arms, model, options.with_(since=None, until=split.cutoff))
        model = model.with_calibration(fit)
        metrics = (Metric("em"), Metric("tokens"), Metric("reward", lam, token_scale))
        reader = LogReader(store, arms, options.with_(since=split.cutoff, until=None), traces=False)
        targets = [
            Target("candidate", HeadsCandidate(model=model, lam=lam, name=version),
                   {"dr": DoublyRobust(), "snips": SNIPS()}, metrics),
            Target("logging", LoggingCandidate(), {"on-policy": IPS()}, metrics),
        ]
        result = run_targets(reader, targets, model=model)
        require_events(result.counts, f"the held-out part (decision time from {iso_time(split.cutoff)})")
        held = traced_events(store, options.with_(since=split.cutoff, until=None))
        exact = exact_stop_rules(held, stop_rule_arms(arms, rule), lam=lam, token_scale=token_scale, rule=rule)
        if save:
            packed = pack(policy, lam=lam, feature_config=feature_config, version=version, extra={
                "trained_by": "stopbandit replay train", "train_events": stats.learned,
                "train_until": split.cutoff, "importance_weighting": importance_weighting,
                "em_calibration": fit,
            }, key=snapshot_key(), stop_rule=rule)
            store.save_snapshot(packed.version, packed.model, packed.meta, packed.checksum, role=role)
    finally:
        policy.close()
    return TrainReport(
        version=version, saved=save, split=split, lam=lam, token_scale=token_scale, train=stats,
        test_counts=result.counts, candidate=result.estimates.get("candidate", {}),
        logging=result.estimates.get("logging", {}).get("on-policy", {}), skipped=result.skipped,
        role=role, stop_training=stop_training.to_dict(), exact=exact.to_dict(),
        calibration={"fit": fit, "held_out": result.calibration},
    )


def fit_calibration(store: ReplayStore, arms: ArmSet, model: HeadsModel,
                    options: ReplayOptions) -> dict[str, Any] | None:
    """The Platt recalibration of ``model``'s P(EM) on the logged arms of the events ``options`` select.

    None when those events' EM is all one value (nothing to calibrate against).
    """
    preds: list[np.ndarray] = []
    ems: list[np.ndarray] = []
    reader = LogReader(store, arms, options.with_(jobs=1), traces=False)
    for batch in reader.batches():
        if batch.n:
            em_hat, _ = model.predict(batch)
            preds.append(em_hat[np.arange(batch.n), batch.actions])
            ems.append(np.asarray(batch.em, dtype=np.float64))
    if not preds:
        return None
    p, y = np.concatenate(preds), np.concatenate(ems)
    if y.min() == y.max():
        return None
    return fit_platt(p, y)


__all__ = ["IW_CLIP", "Split", "TrainReport", "TrainStats", "fit_calibration", "time_split", "train_and_evaluate",
           "train_heads"]
