"""Policies played on a :class:`~.streams.Stream`; each returns a :class:`Trajectory`.

* :func:`run_selector` -- the product: ``Selector.open(sqlite_url, ...)`` on a
  real SQLite replay store in a temporary directory, ``choose`` →
  :func:`stopbandit.sim.run` on the chosen arm → ``reward``. With
  ``nested=True`` the reward carries the probe trace and the reference answer,
  so the Selector learns every stricter arm the trace reveals. λ changes go
  through ``set_lambda``. Works for ``policy="heads"`` and ``"vw-native"``.
* :func:`run_thompson` -- a context-free Thompson-sampling bandit over the
  arms (Beta posterior on EM, Gaussian on tokens, combined at the current λ).
* :func:`run_full_information` -- the same VW heads, greedy, learning *every*
  arm's outcome on every request (no exploration needed): the learning-speed
  and feature-quality ceiling of the heads design.
* :func:`static`, :func:`oracle`, :func:`best_static` -- table look-ups.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stopbandit import Selector
from stopbandit.bandit.exploration import EpsilonGreedy, Exploration
from stopbandit.bandit.policy import HeadsPolicy
from stopbandit.bandit.trace import revealed_outcomes
from stopbandit.bandit.vw import shared_line
from stopbandit.config import LearningConfig, SelectorConfig
from stopbandit.features.extract import FeatureConfig, FeatureExtractor
from stopbandit.sim import SimRequest
from stopbandit.sim import run as sim_run

from .heldout import Curve, policy_value
from .streams import ARMS, Stream


@dataclass
class Trajectory:
    """What one policy did on one stream; arrays of shape (n,).

    ``revealed``: arm outcomes the learner learned from in all (1 per request
    without traces); ``store``: row counts of its replay store (Selector runs).
    """

    name: str
    arm: np.ndarray
    em: np.ndarray
    tokens: np.ndarray
    revealed: int = 0
    wall_s: float = 0.0
    store: dict[str, int] = field(default_factory=dict)
    curve: Curve | None = None

    def rewards(self, stream: Stream) -> np.ndarray:
        return self.em - stream.lam * self.tokens / stream.token_scale


def from_arms(name: str, stream: Stream, arms: np.ndarray) -> Trajectory:
    rows = np.arange(stream.n)
    return Trajectory(name, arms.astype(np.int8), stream.em[rows, arms], stream.tokens[rows, arms])


def static(stream: Stream, j: int) -> Trajectory:
    return from_arms(f"static {ARMS[j].name}", stream, np.full(stream.n, j))


def oracle(stream: Stream) -> Trajectory:
    return from_arms("oracle (per request)", stream, stream.oracle_arms())


def best_static(stream: Stream) -> Trajectory:
    """The single arm with the highest mean reward over the whole stream, chosen in hindsight."""
    j = int(stream.rewards().mean(axis=0).argmax())
    return from_arms(f"best static in hindsight ({ARMS[j].name})", stream, np.full(stream.n, j))


def run_selector(
    stream: Stream,
    workdir: Path,
    *,
    name: str,
    policy: str = "heads",
    nested: bool = False,
    exploration: Exploration | None = None,
    seed: int = 0,
    held: Stream | None = None,
    checkpoints: Sequence[int] = (),
    extra_features: Callable[[SimRequest], dict[str, float]] | None = None,
    progress: Callable[[str], None] | None = None,
    features_version: int = 2,
    learning: LearningConfig | None = None,
) -> Trajectory:
    """Play the stream through a real Selector writing a real SQLite store under ``workdir``.

    With ``held``, the policy as it stands after each of ``checkpoints``
    requests is evaluated on the held-out stream (:mod:`.heldout`).
    ``extra_features``: caller features passed to ``choose`` (prototypes only).
    ``features_version``: ``FeatureConfig.version`` of the Selector's features.
    ``learning``: the Selector's ``[learning]`` settings (default: the library default).
    """
    url = f"sqlite:///{Path(workdir) / (name.replace(' ', '_') + f'-s{stream.seed}.db')}"
    n = stream.n
    arm = np.zeros(n, np.int8)
    em = np.zeros(n)
    tokens = np.zeros(n, np.int64)
    revealed = 0
    arms = ARMS.arms
    marks = set(checkpoints) if held is not None else set()
    curve = Curve() if held is not None else None
    t0 = time.perf_counter()
    cfg = SelectorConfig(features=FeatureConfig(version=features_version), learning=learning or LearningConfig())
    sel = Selector.open(url, config=cfg, lam=float(stream.lam[0]), token_scale=stream.token_scale, policy=policy,
                        exploration=exploration, seed=seed, snapshot=None)
    try:
        for i, req in enumerate(stream.requests):
            if i in stream.lam_changes:
                sel.set_lambda(float(stream.lam_changes[i]), reason=f"benchmark schedule at request {i}")
            extra = extra_features(req) if extra_features is not None else None
            d = sel.choose(req.prompt, domain=req.domain, request_id=req.request_id, features=extra)
            out = sim_run(req, d.arm)
            if nested:
                sel.reward(d.decision_id, em=out.em, tokens=out.tokens, trace=out.trace, reference=req.reference)
                revealed += sum(1 for e, _ in revealed_outcomes(out.trace, arms, req.reference).values()
                                if e is not None)
            else:
                sel.reward(d.decision_id, em=out.em, tokens=out.tokens)
                revealed += 1
            arm[i], em[i], tokens[i] = d.arm_index, out.em, out.tokens
            if i + 1 in marks:
                curve.add(i + 1, *policy_value(sel.extractor, sel.policy, held, sel.lam,  # type: ignore[union-attr]
                                               extra_features))
            if progress is not None and (i + 1) % 10_000 == 0:
                progress(f"{name} seed {stream.seed}: {i + 1}/{n}")
        sel.flush(60.0)
        counts = sel.store.counts()
    finally:
        sel.close()
    return Trajectory(name, arm, em, tokens, revealed, time.perf_counter() - t0, counts, curve)


def run_thompson(stream: Stream, seed: int = 0, name: str = "context-free Thompson", *,
                 held: Stream | None = None, checkpoints: Sequence[int] = ()) -> Trajectory:
    """Context-free Thompson sampling over the arms.

    Per arm: EM ~ Beta(1 + hits, 1 + misses); mean tokens ~ Normal(mean,
    sd/√n) (sd floored at 50 tokens). The sampled reward uses the λ in force,
    so a λ change applies at once, as it does for the heads. Each arm is played
    once before sampling starts. Held-out ``value`` is the expected reward of
    the sampling distribution (estimated from 2,000 posterior draws),
    ``greedy`` that of the arm with the best posterior mean.
    """
    rng = np.random.default_rng(10_000 + seed)
    k = len(ARMS)
    hits, plays = np.zeros(k), np.zeros(k)
    tok_sum, tok_sq = np.zeros(k), np.zeros(k)
    n = stream.n
    arms = np.zeros(n, np.int64)
    marks = set(checkpoints) if held is not None else set()
    curve = Curve() if held is not None else None

    def sample(lam: float, size: int | None = None) -> np.ndarray:
        shape = (k,) if size is None else (size, k)
        p_em = rng.beta(1.0 + hits, 1.0 + plays - hits, size=shape)
        mean = tok_sum / plays
        sd = np.maximum(np.sqrt(np.maximum(tok_sq / plays - mean**2, 0.0)), 50.0)
        tok = mean + sd / np.sqrt(plays) * rng.standard_normal(shape)
        return p_em - lam * tok / stream.token_scale

    t0 = time.perf_counter()
    for i in range(n):
        a = i if i < k else int(np.argmax(sample(float(stream.lam[i]))))
        arms[i] = a
        e, t = stream.em[i, a], float(stream.tokens[i, a])
        hits[a] += e
        plays[a] += 1
        tok_sum[a] += t
        tok_sq[a] += t * t
        if i + 1 in marks and i + 1 >= k:
            lam = float(stream.lam[i])
            r = (held.em - lam * held.tokens / held.token_scale).mean(axis=0)  # type: ignore[union-attr]
            probs = np.bincount(sample(lam, 2000).argmax(axis=1), minlength=k) / 2000
            best_mean = int(np.argmax(hits / plays - lam * tok_sum / plays / stream.token_scale))
            curve.add(i + 1, float(probs @ r), float(r[best_mean]))  # type: ignore[union-attr]
    traj = from_arms(name, stream, arms)
    traj.revealed, traj.wall_s, traj.curve = n, time.perf_counter() - t0, curve
    return traj


def run_full_information(stream: Stream, name: str = "full-information heads (ceiling)", *,
                         held: Stream | None = None, checkpoints: Sequence[int] = (),
                         features_version: int = 2) -> Trajectory:
    """The heads design with every arm's outcome learned on every request, greedy.

    Same features (``FeatureExtractor``), same VW heads and arguments as the
    Selector's ``heads`` policy; no exploration and no store. Its curve is how
    fast the heads can learn with perfect feedback; its plateau is what the
    features let any such policy reach.
    """
    fx = FeatureExtractor(FeatureConfig(version=features_version))
    pol = HeadsPolicy(ARMS, EpsilonGreedy(0.0), stream.token_scale)
    n, k = stream.n, len(ARMS)
    arms = np.zeros(n, np.int64)
    marks = set(checkpoints) if held is not None else set()
    curve = Curve() if held is not None else None
    t0 = time.perf_counter()
    try:
        for i, req in enumerate(stream.requests):
            lam = float(stream.lam[i])
            shared = shared_line(fx.extract(req.prompt, req.domain))
            _, scores = pol.decide(shared, lam)
            a = int(np.argmax(scores))
            arms[i] = a
            pol.learn_revealed(shared, {j: (float(stream.em[i, j]), int(stream.tokens[i, j])) for j in range(k)},
                               a, 1.0, lam)
            fx.observe(req.domain, float(stream.em[i, a]))
            if i + 1 in marks:
                curve.add(i + 1, *policy_value(fx, pol, held, lam))  # type: ignore[arg-type,union-attr]
    finally:
        pol.close()
    traj = from_arms(name, stream, arms)
    traj.revealed, traj.wall_s, traj.curve = n * k, time.perf_counter() - t0, curve
    return traj


__all__ = [
    "Trajectory",
    "best_static",
    "from_arms",
    "oracle",
    "run_full_information",
    "run_selector",
    "run_thompson",
    "static",
]
