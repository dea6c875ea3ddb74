"""Candidate policies for offline evaluation, looked up by name in one small registry.

``--policy`` accepts:

* ``latest``: the newest stored *serving* snapshot, scored with its heads at λ and
  played greedily (exploration off; ties go to the most lenient arm).
  ``explore=True`` plays it with its own exploration rule instead.
* ``current``: what serving runs now: the newest serving snapshot with its
  exploration rule, at λ (by default the λ in force in the store).
* a snapshot version (``v20240501…``): that snapshot, like ``latest``; the
  only way to evaluate a *candidate* snapshot (``replay train --candidate``).
* ``arm:NAME``: always the arm NAME (a static stopping rule).
* ``uniform``: every arm with probability 1/K.
* ``logging``: the logged probabilities themselves (the logging policy's own,
  on-policy value: every importance weight is 1).

A snapshot of the ``vw-native`` baseline has no EM/token heads: it is played
with its own probabilities (``Policy.decide``) and cannot serve as the model of
DM/DR-type estimators.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stopbandit.config import snapshot_key
from stopbandit.bandit.arms import ArmSet, arms_from_config
from stopbandit.bandit.policy import HeadsPolicy, Policy
from stopbandit.bandit.snapshot import unpack
from stopbandit.bandit.vw import shared_lines
from stopbandit.replay import calibration as em_calibration
from stopbandit.errors import ConfigError, InputError, SnapshotError
from stopbandit.replay.logreader import EventBatch
from stopbandit.replay.store import ReplayStore
from stopbandit.replay.sweep import greedy_probs, lenience_rank, policy_scores

Heads = tuple[np.ndarray, np.ndarray]


# --------------------------------------------------------------------------- models


def batch_shared_lines(batch: EventBatch) -> list[str]:
    """``[shared_line(f) for f in batch.features()]``, each distinct stored context turned into a line once."""
    distinct, inv = batch.distinct_features()
    lines = shared_lines(distinct)
    return lines if inv is None else [lines[i] for i in inv]


class HeadsModel:
    """A loaded policy (usually a snapshot) asked for per-arm predictions on a batch of logged events."""

    def __init__(self, policy: Policy, version: str, meta: Mapping[str, Any] | None = None) -> None:
        self.policy = policy
        self.version = version
        self.meta = dict(meta or {})
        self.has_heads = isinstance(policy, HeadsPolicy)
        self.token_scale = float(policy.token_scale)
        self.arms = policy.arms
        extra = self.meta.get("extra")
        try:
            self.calibration = em_calibration.check(extra.get("em_calibration") if isinstance(extra, Mapping)
                                                    else None)
        except InputError as exc:
            raise SnapshotError(f"snapshot {version!r}: {exc}") from None

    def with_calibration(self, calibration: Mapping[str, Any] | None) -> HeadsModel:
        """This model with ``calibration`` (:mod:`stopbandit.replay.calibration`) applied to DM/DR's P(EM)."""
        extra = dict(self.meta.get("extra") or {})
        extra["em_calibration"] = calibration
        return HeadsModel(self.policy, self.version, {**self.meta, "extra": extra})

    def calibrated(self, heads: Heads) -> Heads:
        """``heads`` with P(EM) recalibrated (what DM and DR use); candidates decide on the raw heads."""
        if self.calibration is None:
            return heads
        return em_calibration.apply(heads[0], self.calibration), heads[1]

    @classmethod
    def load(cls, store: ReplayStore, version: str, arms: ArmSet | None = None) -> HeadsModel:
        """Load snapshot ``version`` (``latest``: the newest); its arms must be ``arms`` when given."""
        stored = store.get_snapshot(version)
        if stored is None:
            known = [v for v, _, _ in store.list_snapshots(10)]
            hint = f"known snapshots (newest first): {known}" if known else "the store has no snapshots yet " \
                "(run `stopbandit replay train`)"
            raise ConfigError(f"no snapshot {version!r} in the store; {hint}")
        policy = unpack(stored.model, stored.meta, stored.checksum, arms=arms, key=snapshot_key())
        return cls(policy, stored.version, stored.meta)

    def __getstate__(self) -> dict[str, Any]:
        """Model bytes and settings (for worker processes; stored snapshots never use pickle)."""
        p = self.policy
        return {"version": self.version, "meta": self.meta, "kind": p.name, "arms": p.arms.to_list(),
                "exploration": p.exploration.to_dict(), "token_scale": p.token_scale, "blobs": p.blobs(),
                "args": p.vw_args(), "t": p.t}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from stopbandit.bandit.exploration import exploration_from_config
        from stopbandit.bandit.policy import make_policy

        policy = make_policy(state["kind"], ArmSet.of(state["arms"]), exploration_from_config(state["exploration"]),
                             state["token_scale"], state["blobs"], state["args"])
        policy.t = state["t"]
        self.__init__(policy, state["version"], state["meta"])  # type: ignore[misc]

    def predict(self, batch: EventBatch) -> Heads:
        """(em_hat (n, K) = P(EM | x, a), tokens_hat (n, K) = E[tokens | x, a]) for every event of the batch."""
        if not self.has_heads:
            raise ConfigError(f"snapshot {self.version!r} is a {self.policy.name!r} policy: it has no EM/token heads")
        return self.predict_lines(batch_shared_lines(batch))

    def predict_lines(self, shared: Sequence[str]) -> Heads:
        """``HeadsPolicy.predict_heads`` for many shared lines at once (``HeadsPolicy.predict_heads_batch``)."""
        policy = self.policy
        if not isinstance(policy, HeadsPolicy):
            raise ConfigError(f"snapshot {self.version!r} is a {policy.name!r} policy: it has no EM/token heads")
        return policy.predict_heads_batch(shared)

    def decide(self, batch: EventBatch, lam: float) -> np.ndarray:
        """(n, K) the policy's own serving probabilities at ``lam`` (exploration included)."""
        decide = self.policy.decide
        return np.array([decide(line, lam)[0] for line in batch_shared_lines(batch)], dtype=np.float64)

    def close(self) -> None:
        self.policy.close()


# --------------------------------------------------------------------------- candidates


class Candidate(ABC):
    """A policy to evaluate: (n, K) probabilities for a batch of logged events.

    ``model``: the heads the candidate is built on (their predictions are
    passed to :meth:`probs`; DM/DR can use them as their model too).
    """

    label: str = "?"
    model: HeadsModel | None = None

    def probs(self, batch: EventBatch, heads: Heads | None) -> np.ndarray:
        out = self._probs(batch, heads)
        if out.shape != (batch.n, len(batch.arms)):  # pragma: no cover - a hook bug
            raise ConfigError(f"candidate {self.label!r} returned shape {out.shape}, expected {(batch.n, len(batch.arms))}")
        return out

    @abstractmethod
    def _probs(self, batch: EventBatch, heads: Heads | None) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]:
        return {"policy": self.label}


@dataclass(frozen=True, eq=False)
class LoggingCandidate(Candidate):
    """The logging policy itself (on-policy value; importance weights all 1)."""

    label: str = "logging"

    def _probs(self, batch: EventBatch, heads: Heads | None) -> np.ndarray:
        return batch.logging_probs


@dataclass(frozen=True, eq=False)
class UniformCandidate(Candidate):
    label: str = "uniform"

    def _probs(self, batch: EventBatch, heads: Heads | None) -> np.ndarray:
        k = len(batch.arms)
        return np.full((batch.n, k), 1.0 / k)


@dataclass(frozen=True, eq=False)
class FixedArm(Candidate):
    """Always arm ``index`` (a static stopping rule)."""

    index: int = 0
    name: str = ""

    @property
    def label(self) -> str:  # type: ignore[override]
        return f"arm:{self.name}"

    def _probs(self, batch: EventBatch, heads: Heads | None) -> np.ndarray:
        out = np.zeros((batch.n, len(batch.arms)))
        out[:, self.index] = 1.0
        return out


@dataclass(frozen=True, eq=False)
class HeadsCandidate(Candidate):
    """A policy's heads scored at ``lam`` (``EM̂ − lam·tokenŝ/token_scale``).

    ``explore=False``: greedy, ties to the most lenient arm. ``explore=True``:
    the snapshot's exploration rule at its reward count ``t``, as served.
    A ``vw-native`` policy has no heads and is always played with its own
    probabilities.
    """

    model: HeadsModel | None = None
    lam: float = 0.0
    explore: bool = False
    name: str = "latest"

    @property
    def label(self) -> str:  # type: ignore[override]
        return self.name

    def _probs(self, batch: EventBatch, heads: Heads | None) -> np.ndarray:
        model = self.model
        if model is None:  # pragma: no cover - built by make_candidate
            raise ConfigError("HeadsCandidate needs a model")
        if not model.has_heads:
            return model.decide(batch, self.lam)
        if heads is None:
            heads = model.predict(batch)
        scores = policy_scores(heads[0], heads[1], self.lam, model.token_scale)
        if self.explore:
            return model.policy.exploration.probabilities_batch(scores, model.policy.t)
        return greedy_probs(scores, tie_rank=lenience_rank(batch.arms))

    def describe(self) -> dict[str, Any]:
        m = self.model
        return {"policy": self.name, "snapshot": m.version if m else None, "lam": self.lam,
                "mode": "explore" if self.explore or (m is not None and not m.has_heads) else "greedy",
                "kind": m.policy.name if m else None}


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class CandidateContext:
    """What building a candidate may need."""

    store: ReplayStore
    arms: ArmSet
    lam: float
    explore: bool = False


def _latest(ctx: CandidateContext, spec: str) -> Candidate:
    return HeadsCandidate(model=HeadsModel.load(ctx.store, "latest", ctx.arms), lam=ctx.lam, explore=ctx.explore,
                          name="latest")


def _current(ctx: CandidateContext, spec: str) -> Candidate:
    return HeadsCandidate(model=HeadsModel.load(ctx.store, "latest", ctx.arms), lam=ctx.lam, explore=True,
                          name="current")


def _fixed(ctx: CandidateContext, spec: str) -> Candidate:
    name = spec.split(":", 1)[1]
    try:
        return FixedArm(index=ctx.arms.index(name), name=name)
    except ConfigError:
        raise ConfigError(f"policy {spec!r}: unknown arm {name!r}; known arms: {list(ctx.arms.names)}") from None


CANDIDATES: dict[str, Callable[[CandidateContext, str], Candidate]] = {
    "latest": _latest,
    "current": _current,
    "uniform": lambda ctx, spec: UniformCandidate(),
    "logging": lambda ctx, spec: LoggingCandidate(),
}
PREFIXES: dict[str, Callable[[CandidateContext, str], Candidate]] = {"arm:": _fixed}


def make_candidate(spec: str, ctx: CandidateContext) -> Candidate:
    """The candidate named ``spec`` (see the module doc); anything else must be a stored snapshot version."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"policy must be a name, got {spec!r}")
    spec = spec.strip()
    if spec in CANDIDATES:
        return CANDIDATES[spec](ctx, spec)
    for prefix, make in PREFIXES.items():
        if spec.startswith(prefix):
            return make(ctx, spec)
    if ctx.store.get_snapshot(spec) is None:
        known = [v for v, _, _ in ctx.store.list_snapshots(5)]
        raise ConfigError(
            f"unknown policy {spec!r}: not one of {sorted(CANDIDATES)} or arm:NAME, and no snapshot of that version "
            f"is in the store (newest snapshots: {known or 'none'})"
        )
    return HeadsCandidate(model=HeadsModel.load(ctx.store, spec, ctx.arms), lam=ctx.lam, explore=ctx.explore,
                          name=spec)


def snapshot_meta(store: ReplayStore, spec: str | None) -> dict[str, Any] | None:
    """Metadata of the snapshot ``spec`` names (``latest``, ``current`` or a version), else None."""
    if spec is None or spec in ("uniform", "logging") or spec.startswith("arm:"):
        spec = "latest"
    stored = store.get_snapshot("latest" if spec == "current" else spec)
    return dict(stored.meta) if stored is not None else None


def newest_snapshot_meta(store: ReplayStore) -> dict[str, Any] | None:
    """Metadata of the newest snapshot of any role, else None.

    A serving Selector stores its arms with its checkpoints before any
    serving snapshot exists: the arms a log was written with, when nothing
    else records them.
    """
    newest = store.list_snapshots(1)
    stored = store.get_snapshot(newest[0][0]) if newest else None
    return dict(stored.meta) if stored is not None else None


def resolve_arms(config_arms: ArmSet | None, meta: Mapping[str, Any] | None,
                 store_arms: ArmSet | None = None) -> tuple[ArmSet, str]:
    """The evaluation's arms and where they came from: the config, else the store's, else the snapshot's, else
    the defaults."""
    if config_arms is not None:
        return config_arms, "config"
    if store_arms is not None:
        return store_arms, "store"
    if meta is not None and meta.get("arms"):
        try:
            return ArmSet.of(meta["arms"]), f"snapshot {meta.get('version')}"
        except ConfigError as exc:
            raise SnapshotError(f"snapshot {meta.get('version')!r} has malformed arms: {exc}") from exc
    return arms_from_config(None), "defaults"


def resolve_lambda(explicit: float | None, store: ReplayStore, meta: Mapping[str, Any] | None,
                   fallback: float) -> tuple[float, str]:
    """λ and its source: the option, else the λ in force in the store, else the snapshot's, else the config's."""
    if explicit is not None:
        return float(explicit), "--lam"
    change = store.current_lambda()
    if change is not None:
        return float(change.value), "store"
    if meta is not None and isinstance(meta.get("lam"), (int, float)):
        return float(meta["lam"]), "snapshot"
    return float(fallback), "config"


def default_model(store: ReplayStore, arms: ArmSet, candidate: Candidate,
                  version: str | None = None) -> HeadsModel | None:
    """The model for DM/DR: ``version`` if given, else the candidate's heads, else the newest snapshot's, else None."""
    if version is not None:
        return HeadsModel.load(store, version, arms)
    if candidate.model is not None and candidate.model.has_heads:
        return candidate.model
    if store.get_snapshot("latest") is None:
        return None
    try:
        model = HeadsModel.load(store, "latest", arms)
    except SnapshotError:  # the newest snapshot has other arms: no implicit model (DM/DR say why they are skipped)
        return None
    return model if model.has_heads else None


__all__ = [
    "CANDIDATES",
    "Candidate",
    "CandidateContext",
    "FixedArm",
    "HeadsCandidate",
    "HeadsModel",
    "LoggingCandidate",
    "UniformCandidate",
    "batch_shared_lines",
    "default_model",
    "make_candidate",
    "newest_snapshot_meta",
    "resolve_arms",
    "resolve_lambda",
    "snapshot_meta",
]
