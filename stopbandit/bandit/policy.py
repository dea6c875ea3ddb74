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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from stopbandit.bandit import vw
from stopbandit.bandit.arms import ArmSet
from stopbandit.bandit.exploration import Exploration, TraceShare
from stopbandit.bandit.reward import reward
from stopbandit.bandit.vw import ContextScorer, VWHead, arm_line, cb_label, labeled, predict_batch, with_label
from stopbandit.errors import ConfigError, InputError, SnapshotError

HEADS_LEARNING_RATE = 0.25
"""VW's ``-l`` for both heads: half VW's default (0.5). Why: the heads are an
online regression whose late jitter, not bias, keeps learners below their
plateau, and nested feedback gives ~2.5 updates per request, so the default
rate jitters most where the most is learned. At 0.25 the nested learner with
graph-aware exploration reaches 90 % of the reachable gap within about a
thousand requests at λ = 0.4 (``docs/benchmarks.md``, "Learning"). Stored
snapshots keep the arguments they were trained with."""
BASE_ARGS = f"--cb_adf --cb_type mtr -q ca -q da --cubic dca -b 18 -l {HEADS_LEARNING_RATE}"
EM_ARGS = BASE_ARGS + " --loss_function logistic"
TOKEN_ARGS = BASE_ARGS
NATIVE_ARGS = "--cb_explore_adf --squarecb -q ca -q da --cubic dca -b 18"


def _em_of_costs(cost: np.ndarray) -> np.ndarray:
    """P(EM) = sigmoid(−cost) of every element of the EM head's costs (−margin), clipped to ±30.

    numpy does the exactly rounded steps (clipping, ``1 / (1 + e)``) and
    ``math.exp`` the exponential, so a float is the same whichever batch it
    is computed in (``np.exp`` may round differently from one call to another).
    """
    arg = np.maximum(np.minimum(np.asarray(cost, dtype=np.float64), 30.0), -30.0)
    e = np.fromiter(map(math.exp, arg.ravel().tolist()), dtype=np.float64, count=arg.size).reshape(arg.shape)
    return 1.0 / (1.0 + e)


def _check_weight(weight: float) -> float:
    w = float(weight)
    if not (math.isfinite(w) and w >= 1.0):
        raise InputError(f"weight must be a finite number >= 1 (label probability 1/weight), got {weight!r}")
    return w


REVEALED_WEIGHTINGS = ("none", "inverse-observation")
"""How updates revealed by a probe trace are weighted (``[learning] revealed_weighting``)."""


def observation_weights(probs: Sequence[float], reveals: Sequence[Sequence[int]], logged: int,
                        revealed: Iterable[int], clip: float) -> dict[int, float]:
    """Per revealed arm ``a``: ``min(1/q(a), clip)``, the importance weight of its nested-feedback update.

    Why: with nested feedback a stricter arm's outcome is revealed whenever
    the logged arm is at least as lenient, so stricter arms are learned on
    almost every context and lenient ones only where they were chosen; the
    shared regression then fits a skewed context distribution per arm.
    Weighting each revealed update by the inverse of its observation
    probability re-balances it (importance-weighted regression; the same
    ``q`` as graph-feedback OPE, ``stopbandit.replay.ope``):

        q(a) = Σ_j probs[j] · 1[reveals[j] ∋ a  or  reveals[j] ∋ logged]

    ``probs`` (K,): the decision's probability vector; ``reveals[j]``: the
    arms a run of arm ``j`` reveals (``ArmSet.revealed_by``). The second term
    covers an arm that this trace revealed beyond the arms' static structure
    (a run that ended on its own reveals the more lenient arms too): any arm
    at least as lenient as the logged one would have revealed it as well.
    Weights are clipped to ``[1, clip]`` (``clip >= 1``): 1/q is unbounded
    for rarely chosen arms, and one huge VW update would swamp the heads.
    """
    k = len(probs)
    has_logged = [logged in reveals[j] for j in range(k)]
    out: dict[int, float] = {}
    for a in revealed:
        q = math.fsum(probs[j] for j in range(k) if has_logged[j] or a in reveals[j])
        out[a] = min(max(1.0 / q, 1.0), clip) if q > 0.0 else clip
    return out


class Policy(ABC):
    """Template: :meth:`decide` validates; subclasses fill :meth:`_decide`."""

    name: ClassVar[str]

    def __init__(self, arms: ArmSet, exploration: Exploration, token_scale: float) -> None:
        self.arms = arms
        self.exploration = exploration
        self.token_scale = token_scale
        self.arm_lines = [arm_line(a) for a in arms]
        self.t = 0  # rewards learned
        self.trace_share = TraceShare()  # whether its rewards carry traces; a Selector binds its own

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
        # one parse of the context for both heads (when they parse alike, as the defaults do)
        same = self.em.parse_key() == self.tokens.parse_key()
        self._scorer = ContextScorer([self.em, self.tokens], self.arm_lines) if same and vw.FAST_PATH else None

    def predict_heads(self, shared: str) -> tuple[np.ndarray, np.ndarray]:
        """(P(EM) (K,), expected tokens (K,)) of one context line: the batch of one."""
        em, tok = self.predict_heads_batch([shared])
        return em[0], tok[0]

    def predict_heads_batch(self, shared: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(P(EM), expected tokens) of every line, as (n, K) arrays.

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
        """(P(EM) per arm, tokens/token_scale per arm) of ``lines = [shared, *self.arm_lines]``."""
        # cb_adf predicts a *cost* per arm: the EM cost is −margin, the token cost is tokens/scale.
        if self._scorer is not None:
            cost_em, cost_tok = self._scorer.predict(lines[0])
        else:
            cost_em, cost_tok = self.em.predict(lines), self.tokens.predict(lines)
        em = _em_of_costs(cost_em).tolist()
        tok = [c if c > 0.0 else 0.0 for c in cost_tok]
        return em, tok

    def _decide(self, lines: list[str], lam: float) -> tuple[list[float], list[float]]:
        em, tok = self._heads(lines)  # tokens already in units of token_scale
        scores = [reward(e, t, lam, 1.0) for e, t in zip(em, tok)]
        return self.exploration.probabilities(scores, self.t, self.trace_share), scores

    def _labels(self, arm: int, em: float, tokens: float, weight: float = 1.0) -> list[tuple[int, int, str]]:
        """(head: 0 EM, 1 tokens; arm; cb label) of one arm's outcome, in learning order."""
        # Logistic loss wants a ±1 label; as a cost, a hit (em=1) is −1. A fractional
        # EM (aggregated rewards) is fed as the pair of labels, so its expectation is right.
        # MTR weighs a label by 1/probability: an importance weight w is the label probability 1/w.
        if em >= 1.0 or em <= 0.0:
            out = [(0, arm, cb_label(-1.0 if em >= 1.0 else 1.0, 1.0 / weight))]
        else:
            # VW clamps probabilities above 1, so the weights w·em : w·(1 − em) are scaled
            # up until the smaller is at least 1 (probabilities ≤ 1); w = 1: the smaller is 1.
            hit, miss = weight * em, weight * (1.0 - em)
            low = min(hit, miss, 1.0)
            out = [(0, arm, cb_label(-1.0, low / hit)), (0, arm, cb_label(1.0, low / miss))]
        out.append((1, arm, cb_label(tokens / self.token_scale, 1.0 / weight)))
        return out

    def _learn_labels(self, shared: str, labels: list[tuple[int, int, str]]) -> None:
        if self._scorer is not None:  # one parse of the context for every label
            self._scorer.learn(shared, labels)
            return
        heads, lines = (self.em, self.tokens), [shared, *self.arm_lines]
        for h, arm, label in labels:
            heads[h].learn(with_label(lines, arm, label))

    def learn(self, shared: str, arm: int, em: float, tokens: int, prob: float, lam: float, *,
              weight: float = 1.0) -> None:
        self._learn_labels(shared, self._labels(arm, em, tokens, _check_weight(weight)))
        self.t += 1

    def learn_revealed(self, shared: str, outcomes: Mapping[int, tuple[float, int]], logged: int,
                       prob: float, lam: float, *, weights: Mapping[int, float] | None = None) -> None:
        """Every arm of ``outcomes`` (in its order), ``weights[arm]`` each when given; one reward (``t``)."""
        ws = {arm: 1.0 if weights is None else _check_weight(weights[arm]) for arm in outcomes}
        labels = [x for arm, (em, tokens) in outcomes.items() for x in self._labels(arm, em, tokens, ws[arm])]
        self._learn_labels(shared, labels)
        self.t += 1

    def blobs(self) -> dict[str, bytes]:
        return {"em": self.em.to_bytes(), "tokens": self.tokens.to_bytes()}

    def vw_args(self) -> dict[str, str]:
        return {"em": self.em.args, "tokens": self.tokens.args}

    def close(self) -> None:
        if self._scorer is not None:
            self._scorer.close()  # its action examples go back to the EM head's pool first
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


class FrozenPolicy(Policy):
    """Decides exactly like the policy it wraps and never learns.

    For a Selector opened with ``learn=False``: a challenger serving a
    candidate snapshot logs its decisions and outcomes like any Selector, but
    the candidate must stay what was evaluated (and what ``ab promote`` ships).
    """

    def __init__(self, inner: Policy) -> None:
        super().__init__(inner.arms, inner.exploration, inner.token_scale)
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]
        self.t = inner.t
        self.trace_share = inner.trace_share

    def _decide(self, lines: list[str], lam: float) -> tuple[list[float], list[float]]:
        return self.inner._decide(lines, lam)

    def learn(self, shared: str, arm: int, em: float, tokens: int, prob: float, lam: float, *,
              weight: float = 1.0) -> None:
        return None

    def learn_revealed(self, shared: str, outcomes: Mapping[int, tuple[float, int]], logged: int,
                       prob: float, lam: float, *, weights: Mapping[int, float] | None = None) -> None:
        return None

    def predict_heads(self, shared: str) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.predict_heads(shared)

    def predict_heads_batch(self, shared: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.predict_heads_batch(shared)

    def blobs(self) -> dict[str, bytes]:
        return self.inner.blobs()

    def vw_args(self) -> dict[str, str]:
        return self.inner.vw_args()

    def close(self) -> None:
        self.inner.close()


def make_policy(name: str, arms: ArmSet, exploration: Exploration, token_scale: float,
                blobs: Mapping[str, bytes] | None = None, args: Mapping[str, str] | None = None) -> Policy:
    if name not in POLICIES:
        raise ConfigError(f"policy must be one of {sorted(POLICIES)}, got {name!r}")
    return POLICIES[name](arms, exploration, token_scale, blobs, args)


def policy_state(policy: Policy) -> dict[str, Any]:
    return {"t": policy.t}


__all__ = ["FrozenPolicy", "HeadsPolicy", "NativePolicy", "POLICIES", "Policy", "REVEALED_WEIGHTINGS", "make_policy",
           "observation_weights"]

