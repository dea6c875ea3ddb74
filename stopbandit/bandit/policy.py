"""Policies: map a request's context to a probability vector over arms, and learn.

Looked up by name in :data:`POLICIES`:

* ``heads`` (default): two VW regression heads over (context × arm) features —
  P(EM | x, a) (logistic loss on ±1) and E[tokens | x, a]/token_scale
  (squared loss) — combined as ``EM̂ − λ·tokenŝ/token_scale`` at scoring time
  and passed through an :class:`Exploration` rule. λ can change per request.
* ``vw-native``: VW's own ``--cb_explore_adf --squarecb`` on the scalar reward
  at the λ in force when each reward arrived: the baseline the decomposed
  design is measured against. Changing λ only takes effect as it relearns.

Both heads are ``--cb_adf --cb_type mtr`` workspaces: a regression of the
logged arm's label on the shared context crossed with the arm features
(``-q ca``; plus domain × arm and domain × context × arm, see
``vw.shared_line``), predicting a value for every arm in one call. Labels carry
probability 1, so the regression is unweighted — the online regression oracle
SquareCB assumes (Foster & Rakhlin 2020) — instead of MTR's 1/p weights, which
blow up on rarely explored arms. (``--cb_type dm`` looked like the obvious
choice, but in cb_adf it does not regress the logged label: on a noiseless
4-arm problem it predicted 0.30 where the truth was 1.0; MTR recovers it
exactly. ``tests/bandit/test_policy.py`` pins this down.)

:meth:`HeadsPolicy.predict_heads_batch` is :meth:`~HeadsPolicy.predict_heads`
for many contexts (offline evaluation): each distinct shared line is scored
once, through :func:`stopbandit.bandit.vw.predict_batch`, and the per-arm
outputs go through the same mapping, so the floats are those of the
one-at-a-time call. ``weight=`` on learning is an importance weight (label
probability ``1/weight``), used by counterfactual training.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from stopbandit.bandit.arms import ArmSet
from stopbandit.bandit.exploration import Exploration
from stopbandit.bandit.vw import VWHead, arm_line, labeled, predict_batch
from stopbandit.errors import ConfigError, InputError, SnapshotError

BASE_ARGS = "--cb_adf --cb_type mtr -q ca -q da --cubic dca -b 18"
EM_ARGS = BASE_ARGS + " --loss_function logistic"
TOKEN_ARGS = BASE_ARGS
NATIVE_ARGS = "--cb_explore_adf --squarecb -q ca -q da --cubic dca -b 18"


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-min(max(x, -30.0), 30.0)))


def _em_of_cost(cost: float) -> float:
    """P(EM) from the EM head's cost (−margin): the one mapping of single and batched predictions."""
    return _sigmoid(-cost)


def _em_of_costs(cost: np.ndarray) -> np.ndarray:
    """:func:`_em_of_cost` of every element, the same floats: numpy does the exactly rounded steps
    (negation, clipping, ``1 / (1 + e)``) and ``math.exp`` the exponential (``np.exp`` may round differently)."""
    arg = -np.minimum(np.maximum(-cost, -30.0), 30.0)
    e = np.fromiter(map(math.exp, arg.ravel().tolist()), dtype=np.float64, count=arg.size).reshape(arg.shape)
    return 1.0 / (1.0 + e)


def _check_weight(weight: float) -> float:
    w = float(weight)
    if not (math.isfinite(w) and w >= 1.0):
        raise InputError(f"weight must be a finite number >= 1 (label probability 1/weight), got {weight!r}")
    return w


class Policy(ABC):
    """Template: :meth:`decide` validates; subclasses fill :meth:`_decide`."""

    name: ClassVar[str]

    def __init__(self, arms: ArmSet, exploration: Exploration, token_scale: float) -> None:
        self.arms = arms
        self.exploration = exploration
        self.token_scale = token_scale
        self.arm_lines = [arm_line(a) for a in arms]
        self.t = 0  # rewards learned

    def decide(self, shared: str, lam: float) -> tuple[list[float], list[float]]:
        """(probabilities (K,), reward scores (K,)) for one context line."""
        probs, scores = self._decide([shared, *self.arm_lines], lam)
        if len(probs) != len(self.arm_lines) or abs(math.fsum(probs) - 1.0) > 1e-6 or min(probs) < 0.0:
            raise SnapshotError(f"policy {self.name} returned an invalid distribution {probs!r}")
        return probs, scores

    @abstractmethod
    def _decide(self, lines: list[str], lam: float) -> tuple[list[float], list[float]]: ...

    @abstractmethod
    def learn(self, shared: str, arm: int, em: float, tokens: int, prob: float, lam: float, *,
              weight: float = 1.0) -> None:
        """Learn from the logged arm's outcome (``weight >= 1``: importance weight, where supported)."""

    def learn_revealed(self, shared: str, outcomes: Mapping[int, tuple[float, int]], logged: int,
                       prob: float, lam: float, *, weights: Mapping[int, float] | None = None) -> None:
        """Learn from every arm whose outcome is known (nested feedback); default: the logged arm only."""
        em, tokens = outcomes[logged]
        self.learn(shared, logged, em, tokens, prob, lam, weight=1.0 if weights is None else weights[logged])

    def predict_heads(self, shared: str) -> tuple[np.ndarray, np.ndarray]:
        """(P(EM) (K,), expected tokens (K,)) — only policies with heads have them."""
        raise ConfigError(f"policy {self.name!r} has no EM/token heads")

    def predict_heads_batch(self, shared: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(P(EM) (n, K), expected tokens (n, K)) for n shared lines — only policies with heads have them."""
        raise ConfigError(f"policy {self.name!r} has no EM/token heads")

    @abstractmethod
    def blobs(self) -> dict[str, bytes]: ...

    @abstractmethod
    def vw_args(self) -> dict[str, str]: ...

    @abstractmethod
    def close(self) -> None: ...


class HeadsPolicy(Policy):
    name = "heads"

    def __init__(self, arms: ArmSet, exploration: Exploration, token_scale: float,
                 blobs: Mapping[str, bytes] | None = None, args: Mapping[str, str] | None = None) -> None:
        super().__init__(arms, exploration, token_scale)
        args = dict(args or {"em": EM_ARGS, "tokens": TOKEN_ARGS})
        blobs = blobs or {}
        self.em = VWHead(args["em"], blobs.get("em"))
        self.tokens = VWHead(args["tokens"], blobs.get("tokens"))

    def predict_heads(self, shared: str) -> tuple[np.ndarray, np.ndarray]:
        em, tok = self._heads([shared, *self.arm_lines])
        return np.asarray(em), np.asarray(tok) * self.token_scale

    def predict_heads_batch(self, shared: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``predict_heads`` of every line, as (n, K) arrays: the same floats, row by row.

        Identical lines are scored once (logged contexts repeat); both heads
        score one parse of each line (:func:`~stopbandit.bandit.vw.predict_batch`).
        """
        n, k = len(shared), len(self.arm_lines)
        distinct = list(dict.fromkeys(shared))
        cost_em, cost_tok = predict_batch([self.em, self.tokens], distinct, self.arm_lines)
        em = _em_of_costs(cost_em)
        tok = np.where(cost_tok > 0.0, cost_tok, 0.0) * self.token_scale
        if len(distinct) < n:
            index = {line: i for i, line in enumerate(distinct)}
            rows = np.fromiter(map(index.__getitem__, shared), dtype=np.intp, count=n)
            em, tok = em[rows], tok[rows]
        return em.reshape(n, k), tok.reshape(n, k)

    def _heads(self, lines: list[str]) -> tuple[list[float], list[float]]:
        """(P(EM) per arm, tokens/token_scale per arm)."""
        # cb_adf predicts a *cost* per arm: the EM cost is −margin, the token cost is tokens/scale.
        em = [_em_of_cost(m) for m in self.em.predict(lines)]
        tok = [c if c > 0.0 else 0.0 for c in self.tokens.predict(lines)]
        return em, tok

    def _decide(self, lines: list[str], lam: float) -> tuple[list[float], list[float]]:
        em, tok = self._heads(lines)
        scores = [e - lam * t for e, t in zip(em, tok)]
        return self.exploration.probabilities(scores, self.t), scores

    def _learn_arm(self, lines: list[str], arm: int, em: float, tokens: float, weight: float = 1.0) -> None:
        # Logistic loss wants a ±1 label; as a cost, a hit (em=1) is −1. A fractional
        # EM (aggregated rewards) is fed as the pair of labels, so its expectation is right.
        # MTR weighs a label by 1/probability: an importance weight w is the label probability 1/w.
        if em >= 1.0 or em <= 0.0:
            self.em.learn(labeled(lines, arm, -1.0 if em >= 1.0 else 1.0, 1.0 / weight))
        else:
            # VW clamps probabilities above 1, so the weights w·em : w·(1 − em) are scaled
            # up until the smaller is at least 1 (probabilities ≤ 1); w = 1: the smaller is 1.
            hit, miss = weight * em, weight * (1.0 - em)
            low = min(hit, miss, 1.0)
            self.em.learn(labeled(lines, arm, -1.0, low / hit))
            self.em.learn(labeled(lines, arm, 1.0, low / miss))
        self.tokens.learn(labeled(lines, arm, tokens / self.token_scale, 1.0 / weight))

    def learn(self, shared: str, arm: int, em: float, tokens: int, prob: float, lam: float, *,
              weight: float = 1.0) -> None:
        self._learn_arm([shared, *self.arm_lines], arm, em, tokens, _check_weight(weight))
        self.t += 1

    def learn_revealed(self, shared: str, outcomes: Mapping[int, tuple[float, int]], logged: int,
                       prob: float, lam: float, *, weights: Mapping[int, float] | None = None) -> None:
        """Every arm of ``outcomes`` (in its order), ``weights[arm]`` each when given; one reward (``t``)."""
        lines = [shared, *self.arm_lines]
        ws = {arm: 1.0 if weights is None else _check_weight(weights[arm]) for arm in outcomes}
        for arm, (em, tokens) in outcomes.items():
            self._learn_arm(lines, arm, em, tokens, ws[arm])
        self.t += 1

    def blobs(self) -> dict[str, bytes]:
        return {"em": self.em.to_bytes(), "tokens": self.tokens.to_bytes()}

    def vw_args(self) -> dict[str, str]:
        return {"em": self.em.args, "tokens": self.tokens.args}

    def close(self) -> None:
        self.em.close()
        self.tokens.close()


class NativePolicy(Policy):
    """VW ``--cb_explore_adf --squarecb`` on cost = −reward at the λ of each reward."""

    name = "vw-native"

    def __init__(self, arms: ArmSet, exploration: Exploration, token_scale: float,
                 blobs: Mapping[str, bytes] | None = None, args: Mapping[str, str] | None = None) -> None:
        super().__init__(arms, exploration, token_scale)
        args = dict(args or {"cb": NATIVE_ARGS})
        self.cb = VWHead(args["cb"], (blobs or {}).get("cb"))

    def _decide(self, lines: list[str], lam: float) -> tuple[list[float], list[float]]:
        p = [x if x > 0.0 else 0.0 for x in self.cb.predict(lines)]
        total = math.fsum(p)
        p = [x / total for x in p]
        return p, list(p)

    def learn(self, shared: str, arm: int, em: float, tokens: int, prob: float, lam: float, *,
              weight: float = 1.0) -> None:
        if weight != 1.0:
            raise ConfigError(f"policy {self.name!r} learns from logged propensities only; got weight={weight!r}")
        cost = -(em - lam * tokens / self.token_scale)
        self.cb.learn(labeled([shared, *self.arm_lines], arm, cost, prob))
        self.t += 1

    def blobs(self) -> dict[str, bytes]:
        return {"cb": self.cb.to_bytes()}

    def vw_args(self) -> dict[str, str]:
        return {"cb": self.cb.args}

    def close(self) -> None:
        self.cb.close()


POLICIES: dict[str, type[Policy]] = {HeadsPolicy.name: HeadsPolicy, NativePolicy.name: NativePolicy}


def make_policy(name: str, arms: ArmSet, exploration: Exploration, token_scale: float,
                blobs: Mapping[str, bytes] | None = None, args: Mapping[str, str] | None = None) -> Policy:
    if name not in POLICIES:
        raise ConfigError(f"policy must be one of {sorted(POLICIES)}, got {name!r}")
    return POLICIES[name](arms, exploration, token_scale, blobs, args)


def policy_state(policy: Policy) -> dict[str, Any]:
    return {"t": policy.t}


__all__ = ["HeadsPolicy", "NativePolicy", "POLICIES", "Policy", "make_policy"]

