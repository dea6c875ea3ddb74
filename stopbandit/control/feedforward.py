"""Model-based feed-forward for the λ controller: what the policy's own heads say it would spend at any λ.

Why: a controller that only sees outcomes has to tell a change in the traffic
from outcome noise, and the per-request token spread is wide (a 200-outcome
batch mean moves by ±7 % of the budget on its own), so its gain must stay low,
and a domain-mix shift takes thousands of requests to absorb. The policy's
heads already predict P(EM) and tokens for every arm of every request it
served. For the last ``size`` contexts, the λ at which the policy's choices
spend a given mean of tokens (or reach a given EM) is a cheap, nearly
noise-free computation: when the mix turns harder, the contexts change at
once and so does that λ, before outcome averages have moved much.

The heads are biased (untrained at first, and outcomes carry the probe
tokens, the holdout and everything else the heads do not see), so the
controller (:mod:`stopbandit.control.controller`) does not trust the level.
It estimates the relative bias of the model on the outcomes it observes and
aims the model at the setpoint corrected by it: the model supplies the
sensitivity and the effect of the mix, the outcomes correct the level.

:class:`ContextWindow` keeps the contexts (features of policy-served
decisions) and predicts them lazily, once each, when the controller steps.
:class:`Response` is the frozen result: per-context, per-arm predictions
(N, K), the exploration probabilities at the λ in force, and the methods the
controller uses: :meth:`Response.predict` and :meth:`Response.solve`.

Greedy choices give a monotone response (a higher λ never picks an arm with
more tokens, nor, for λ ≥ 0, more EM), which bisection solves; the
exploration's contribution is added as the offset between the explored and
the greedy means at the λ in force (exact there, first-order around it).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stopbandit.bandit.policy import Policy
from stopbandit.bandit.vw import shared_line
from stopbandit.errors import ConfigError, require_positive_ints

BISECT_STEPS = 30


@dataclass(frozen=True)
class Response:
    """The policy's predicted response to λ over a window of contexts.

    ``em``, ``tokens``: (N, K) predictions of the heads, which make the
    choices; ``p0``: (N, K) the served probabilities at ``lam0`` (exploration
    included); ``em_cal``, ``tokens_cal``: (N,) per-context calibration
    factors (observed / predicted on recent outcomes of the context's domain)
    applied to the chosen arm's predictions when the means are taken.
    """

    em: np.ndarray
    tokens: np.ndarray
    p0: np.ndarray
    lam0: float
    token_scale: float
    em_cal: np.ndarray | None = None
    tokens_cal: np.ndarray | None = None
    _offset: tuple[float, float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = self.em.shape[0]
        if self.em_cal is None:
            object.__setattr__(self, "em_cal", np.ones(n))
        if self.tokens_cal is None:
            object.__setattr__(self, "tokens_cal", np.ones(n))
        s_tok, s_em = self.served()
        g_tok, g_em = self.greedy(self.lam0)
        object.__setattr__(self, "_offset", (s_tok - g_tok, s_em - g_em))

    @property
    def n(self) -> int:
        return int(self.em.shape[0])

    def greedy(self, lam: float) -> tuple[float, float]:
        """(mean tokens, mean EM) if every context got its best arm at ``lam``."""
        idx = np.argmax(self.em - lam * self.tokens / self.token_scale, axis=1)
        rows = np.arange(self.n)
        return (float((self.tokens[rows, idx] * self.tokens_cal).mean()),
                float((self.em[rows, idx] * self.em_cal).mean()))

    def served(self, last: int | None = None) -> tuple[float, float]:
        """(mean tokens, mean EM) under the served probabilities at ``lam0``, over the ``last`` contexts."""
        sl = slice(-last, None) if last else slice(None)
        p = self.p0[sl]
        tok = (p * self.tokens[sl]).sum(axis=1) * self.tokens_cal[sl]  # type: ignore[index]
        em = (p * self.em[sl]).sum(axis=1) * self.em_cal[sl]  # type: ignore[index]
        return float(tok.mean()), float(em.mean())

    def predict(self, lam: float) -> tuple[float, float]:
        """(mean tokens, mean EM) at ``lam``: greedy, plus the exploration offset measured at ``lam0``."""
        g_tok, g_em = self.greedy(lam)
        return g_tok + self._offset[0], g_em + self._offset[1]

    def solve(self, kind: str, value: float, lo: float, hi: float) -> tuple[float, str | None]:
        """The λ in [lo, hi] whose predicted mean tokens (``token_budget``) or EM (``em_floor``) is ``value``.

        Both fall as λ rises. Returns (λ, None), or the bound and "lo"/"hi"
        when ``value`` is out of reach inside [lo, hi].
        """
        col = 0 if kind == "token_budget" else 1
        if self.predict(lo)[col] <= value:
            return lo, "lo"
        if self.predict(hi)[col] > value:
            return hi, "hi"
        a, b = lo, hi  # predict(a) > value >= predict(b)
        for _ in range(BISECT_STEPS):
            m = 0.5 * (a + b)
            if self.predict(m)[col] > value:
                a = m
            else:
                b = m
        return b, None


@dataclass(slots=True)
class _Entry:
    features: Mapping[str, Any]
    probs: np.ndarray  # (K,) served probabilities, arm order
    domain: str | None
    em: np.ndarray | None = None  # (K,) predicted P(EM)
    tokens: np.ndarray | None = None  # (K,) predicted tokens
    real: tuple[float, float] | None = None  # observed (em, tokens)


class ContextWindow:
    """The policy's recent contexts, predicted by its heads once each, and its per-domain calibration.

    ``size``: contexts in the model (the traffic mix the λ is solved for).
    ``calibration``: rewarded contexts over which the heads are calibrated per
    domain, ``c_d = Σ observed / Σ predicted`` (served probabilities at
    decision time), shrunk toward the all-domain ratio by ``prior`` pseudo
    contexts. Per domain, because the heads' errors differ by domain: a
    mix shift changes the overall bias even when no domain's bias changes.
    Thread-safe.
    """

    def __init__(self, size: int = 1000, calibration: int = 4000, prior: int = 100) -> None:
        require_positive_ints("context window ", size=size, calibration=calibration, prior=prior)
        self.size, self.calibration, self.prior = size, calibration, prior
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._cap = max(size, calibration) + 4 * size  # decisions whose reward is still out stay a while
        self.unusable: str | None = None  # why the policy cannot predict (e.g. vw-native has no heads)

    def add(self, key: str, features: Mapping[str, Any], probabilities: list[float]) -> None:
        """Remember one policy-served decision (no model work on the request path)."""
        with self._lock:
            self._entries[key] = _Entry(features, np.asarray(probabilities, dtype=float),
                                        features.get("domain"))  # type: ignore[arg-type]
            while len(self._entries) > self._cap:
                self._entries.popitem(last=False)

    def outcome(self, key: str, em: float, tokens: float) -> None:
        """The observed outcome of a remembered decision (ignored when it has left the window)."""
        with self._lock:
            e = self._entries.get(key)
            if e is not None and e.real is None:
                e.real = (float(em), float(tokens))

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _refresh(self, policy: Policy) -> None:
        with self._lock:
            todo = [e for e in self._entries.values() if e.em is None]
        try:
            preds = [policy.predict_heads(shared_line(e.features)) for e in todo]
        except ConfigError as exc:  # a policy without heads: no model, the controller stays pure PI
            self.unusable = str(exc)
            return
        with self._lock:
            for e, (em, tok) in zip(todo, preds):
                e.em, e.tokens = np.asarray(em, dtype=float), np.asarray(tok, dtype=float)

    def _factors(self, entries: list[_Entry]) -> tuple[dict[str | None, float], dict[str | None, float],
                                                      float, float]:
        """Per-domain (EM, tokens) calibration factors over the last ``calibration`` rewarded entries,
        and the all-domain ones (for a domain without outcomes yet)."""
        done = [e for e in entries if e.real is not None and e.em is not None][-self.calibration:]
        sums: dict[str | None, list[float]] = {}  # domain -> [n, obs em, pred em, obs tokens, pred tokens]
        for e in done:
            acc = sums.setdefault(e.domain, [0.0, 0.0, 0.0, 0.0, 0.0])
            acc[0] += 1
            acc[1] += e.real[0]  # type: ignore[index]
            acc[2] += float(e.probs @ e.em)  # type: ignore[operator]
            acc[3] += e.real[1]  # type: ignore[index]
            acc[4] += float(e.probs @ e.tokens)  # type: ignore[operator]
        total = np.sum(list(sums.values()), axis=0) if sums else np.zeros(5)
        g_em = total[1] / total[2] if total[2] > 0 else 1.0
        g_tok = total[3] / total[4] if total[4] > 0 else 1.0
        em_f, tok_f = {}, {}
        for dom, (n, oe, pe, ot, pt) in sums.items():
            w = self.prior / n  # the prior's weight in units of this domain's mean prediction
            em_f[dom] = (oe + w * g_em * pe) / (pe * (1 + w)) if pe > 0 else g_em
            tok_f[dom] = (ot + w * g_tok * pt) / (pt * (1 + w)) if pt > 0 else g_tok
        return em_f, tok_f, g_em, g_tok

    def response(self, policy: Policy, lam: float, min_contexts: int = 1) -> Response | None:
        """Predict the new contexts; the window's calibrated :class:`Response` at ``lam`` (None: too few)."""
        if self.unusable is not None:
            return None
        self._refresh(policy)
        with self._lock:
            entries = [e for e in self._entries.values() if e.em is not None]
        if len(entries) < max(1, min_contexts):
            return None
        em_f, tok_f, g_em, g_tok = self._factors(entries)
        recent = entries[-self.size:]
        em = np.vstack([e.em for e in recent])  # type: ignore[misc]
        tok = np.vstack([e.tokens for e in recent])  # type: ignore[misc]
        em_cal = np.array([em_f.get(e.domain, g_em) for e in recent])
        tok_cal = np.array([tok_f.get(e.domain, g_tok) for e in recent])
        scale = float(policy.token_scale)
        p0 = policy.exploration.probabilities_batch(em - lam * tok / scale, policy.t, policy.trace_share)
        return Response(em, tok, p0, float(lam), scale, em_cal, tok_cal)


__all__ = ["ContextWindow", "Response"]
