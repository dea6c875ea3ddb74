"""The learners the benchmark compares, by name, and the tasks that run them.

A :class:`Task` is one learner on one seed of one scenario; :func:`run_task`
builds (and caches, per process) the stream and the held-out set and plays the
learner. Tasks are independent, so ``benchmarks/learning.py`` spreads them over
worker processes.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stopbandit.bandit.exploration import Exploration, SquareCB
from stopbandit.config import LearningConfig

from . import runners
from .prototypes import PROTOTYPE_POLICIES, LenientSquareCB, latent_difficulty, register_policies
from .streams import ARMS, Scenario, Stream, make_stream

HELD_SEED_OFFSET = 100_000


@dataclass(frozen=True)
class Learner:
    """How to play one learner. ``kind``: selector | thompson | full-info."""

    label: str
    kind: str
    policy: str = "heads"
    nested: bool = False
    gamma: float | None = None
    gamma_exponent: float | None = None  # SquareCB ρ in γ_t = γ₀·t^ρ (None: the library default, 0.5)
    explore: str | None = None  # None: SquareCB; "graph": the library's SquareCB(nested=True); "lenient": prototype
    latent: bool = False
    prototype: bool = False
    weight_clip: float | None = None  # `[learning] revealed_weighting = "inverse-observation"` with this clip

    def learning(self) -> LearningConfig | None:
        if self.weight_clip is None:
            return None
        return LearningConfig("inverse-observation", self.weight_clip)

    def exploration(self) -> Exploration | None:
        gamma = 5.0 if self.gamma is None else self.gamma
        rho = {} if self.gamma_exponent is None else {"gamma_exponent": self.gamma_exponent}
        if self.explore == "graph":  # the library option `[exploration] nested = true`; the Selector binds the arms
            return SquareCB(gamma_scale=gamma, nested=True, **rho)
        if self.explore == "lenient":
            return LenientSquareCB.of_arms(ARMS, gamma_scale=gamma)
        return SquareCB(gamma_scale=gamma, **rho) if self.gamma is not None or rho else None


LEARNERS: dict[str, Learner] = {
    "plain": Learner("stopbandit heads + SquareCB (plain)", "selector"),
    "nested": Learner("stopbandit heads + SquareCB (nested feedback)", "selector", nested=True),
    "native": Learner("vw-native cb_explore_adf (SquareCB)", "selector", policy="vw-native"),
    "thompson": Learner("context-free Thompson", "thompson"),
    "fullinfo": Learner("full-information heads (ceiling)", "full-info"),
    "nested-graph": Learner("stopbandit heads + graph-aware SquareCB (nested feedback, `nested = true`)", "selector",
                            nested=True, explore="graph"),
    # prototypes of library changes
    "nested-lenient": Learner("nested + lenient exploration", "selector", nested=True, explore="lenient",
                              prototype=True),
    "plain-g20": Learner("plain, SquareCB γ₀=20", "selector", gamma=20.0, prototype=True),
    "nested-g20": Learner("nested, SquareCB γ₀=20", "selector", nested=True, gamma=20.0, prototype=True),
    "nested-graph-g20": Learner("nested + graph exploration, γ₀=20", "selector", nested=True, explore="graph",
                                gamma=20.0, prototype=True),
    "nested-latent": Learner("nested + true difficulty feature (bound)", "selector", nested=True, latent=True,
                             prototype=True),
    "plain-latent": Learner("plain + true difficulty feature (bound)", "selector", latent=True, prototype=True),
    # issue 9: revealed updates weighted by min(1/q, clip) (`[learning] revealed_weighting = "inverse-observation"`)
    "nested-iw10": Learner("nested, revealed updates weighted 1/q (clip 10)", "selector", nested=True,
                           weight_clip=10.0, prototype=True),
    "nested-graph-iw5": Learner("nested + graph exploration, revealed updates weighted 1/q (clip 5)", "selector",
                                nested=True, explore="graph", weight_clip=5.0, prototype=True),
    "nested-graph-iw10": Learner("nested + graph exploration, revealed updates weighted 1/q (clip 10)", "selector",
                                 nested=True, explore="graph", weight_clip=10.0, prototype=True),
    "nested-graph-iw20": Learner("nested + graph exploration, revealed updates weighted 1/q (clip 20)", "selector",
                                 nested=True, explore="graph", weight_clip=20.0, prototype=True),
    # issue 9: more exploration of the lenient arms (γ₀ = 2.5), or exploration fading faster (ρ = 0.75)
    "nested-graph-g2.5": Learner("nested + graph exploration, γ₀ = 2.5", "selector", nested=True, explore="graph",
                                 gamma=2.5, prototype=True),
    "plain-g2.5": Learner("plain, SquareCB γ₀ = 2.5", "selector", gamma=2.5, prototype=True),
    # issue 9: VW's default learning rate (0.5, the library's before it was halved to 0.25); the logged arm
    # weighted 3 vs revealed arms 1 (prototypes.py policies)
    "nested-graph-lr0.5": Learner("nested + graph exploration, VW -l 0.5 (old default)", "selector",
                                  policy="heads-lr0.5", nested=True, explore="graph", prototype=True),
    "plain-lr0.5": Learner("plain, VW -l 0.5 (old default)", "selector", policy="heads-lr0.5", prototype=True),
    "nested-graph-lw3": Learner("nested + graph exploration, logged arm weighted 3", "selector",
                                policy="heads-lw3", nested=True, explore="graph", prototype=True),
    "nested-graph-r75": Learner("nested + graph exploration, SquareCB ρ = 0.75", "selector", nested=True,
                                explore="graph", gamma_exponent=0.75, prototype=True),
    "nested-graph-iw10-r75": Learner("nested + graph exploration, ρ = 0.75, revealed updates weighted 1/q "
                                     "(clip 10)", "selector", nested=True, explore="graph", gamma_exponent=0.75,
                                     weight_clip=10.0, prototype=True),
}


@dataclass(frozen=True)
class Task:
    scenario: Scenario
    seed: int
    learner: str
    held_n: int = 0  # held-out requests (0: no held-out curve)
    checkpoints: tuple[int, ...] = ()
    features_version: int = 2  # FeatureConfig.version of the learners' features


@functools.lru_cache(maxsize=4)
def stream_for(scenario: Scenario, seed: int) -> Stream:
    return make_stream(scenario, seed)


@functools.lru_cache(maxsize=4)
def held_for(lam: float, n: int, seed: int) -> Stream:
    return make_stream(Scenario("held-out", n, lam), HELD_SEED_OFFSET + seed)


def run_task(task: Task, progress: Callable[[str], None] | None = None) -> runners.Trajectory:
    learner = LEARNERS[task.learner]
    stream = stream_for(task.scenario, task.seed)
    held = held_for(task.scenario.lam, task.held_n, task.seed) if task.held_n else None
    cps = task.checkpoints
    if learner.kind == "thompson":
        traj = runners.run_thompson(stream, task.seed, learner.label, held=held, checkpoints=cps)
    elif learner.kind == "full-info":
        traj = runners.run_full_information(stream, learner.label, held=held, checkpoints=cps,
                                            features_version=task.features_version)
    else:
        if learner.policy in PROTOTYPE_POLICIES:
            register_policies()
        with tempfile.TemporaryDirectory(prefix="sb-learning-") as tmp:
            traj = runners.run_selector(
                stream, Path(tmp), name=task.learner, policy=learner.policy, nested=learner.nested,
                exploration=learner.exploration(), seed=task.seed, held=held, checkpoints=cps,
                extra_features=latent_difficulty if learner.latent else None, progress=progress,
                features_version=task.features_version, learning=learner.learning(),
            )
        traj.name = learner.label
    return traj


__all__ = ["HELD_SEED_OFFSET", "LEARNERS", "Learner", "Task", "held_for", "run_task", "stream_for"]
