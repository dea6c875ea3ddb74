"""Domain-mix feed-forward for the λ controller: how much a change of the traffic mix alone moves the mean.

Why: the PI step (:mod:`stopbandit.control.controller`) only sees the batch
error, and its gain must stay low because a 100-outcome batch is noisy
(±15 % tokens). When the domain mix turns harder, the error jumps at once
but λ follows only a third of it per step, so the 2,000-request windows
right after a shift overshoot. The domain of every request is known, and the
per-domain means barely move with the mix, so the part of the change that is
due to the mix is known as soon as the mix is (post-stratification):

    Δm_t = Σ_d (w_d,t − w_d,t−1) · m̄_d

``w_d,t``: share of domain ``d`` among the last ``recent`` outcomes at step
``t``; ``m̄_d``: mean tokens (or EM) of domain ``d`` over the controller's
rolling window (the overall window mean for a domain with fewer than
``min_n`` outcomes there, so it contributes nothing: ``Σ_d Δw_d = 0``).
Both terms use the *same* per-domain means, so ``Δm_t`` moves only with the
mix: a λ move changes ``m̄_d`` but not ``Δm_t``'s sign or size to first
order, and the feed-forward never fights the PI step. The controller turns
``Δm_t`` into a λ move with a gain that is the inverse of the plant's
sensitivity; the PI step then only has to integrate what the mix does not
explain.

:class:`MixTracker` is a pure, single-threaded helper: the controller calls
it under its own lock.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Hashable

Domain = Hashable  # a domain name, or None when the request had none


class MixTracker:
    """Per-domain rolling means over ``window`` outcomes and the domain shares of the last ``recent``.

    >>> t = MixTracker(window=8, recent=4, min_n=1)
    >>> for d, tok in [("a", 100), ("a", 100), ("b", 300), ("b", 300)]:
    ...     t.add(d, 1.0, tok)
    >>> t.step()           # the first step only records the mix
    (0.0, 0.0)
    >>> for _ in range(4):
    ...     t.add("b", 1.0, 300)
    >>> t.step()           # the recent mix went from 50 % b to 100 % b: +0.5·(300 − 100) tokens
    (0.0, 100.0)
    """

    def __init__(self, window: int, recent: int, min_n: int) -> None:
        self.window, self.recent, self.min_n = window, recent, min_n
        self.clear()

    def clear(self) -> None:
        """Forget everything (the controller's :meth:`reset`)."""
        self._win: deque[tuple[Domain, float, float]] = deque()
        self._sums: dict[Domain, list[float]] = {}  # domain -> [n, Σ em, Σ tokens] over the window
        self._tot = [0.0, 0.0, 0.0]
        self._recent: deque[Domain] = deque()
        self._counts: Counter[Domain] = Counter()
        self._prev: dict[Domain, float] | None = None
        self._ref: dict[Domain, float] | None = None

    def add(self, domain: Domain, em: float, tokens: float) -> None:
        """Count one outcome of ``domain``."""
        self._win.append((domain, em, tokens))
        s = self._sums.setdefault(domain, [0.0, 0.0, 0.0])
        for acc in (s, self._tot):
            acc[0] += 1.0
            acc[1] += em
            acc[2] += tokens
        if len(self._win) > self.window:
            d, e, t = self._win.popleft()
            old = self._sums[d]
            for acc in (old, self._tot):
                acc[0] -= 1.0
                acc[1] -= e
                acc[2] -= t
            if old[0] <= 0:
                del self._sums[d]
        self._recent.append(domain)
        self._counts[domain] += 1
        if len(self._recent) > self.recent:
            self._counts[self._recent.popleft()] -= 1

    def shares(self) -> dict[Domain, float]:
        """Domain shares among the last ``recent`` outcomes."""
        n = len(self._recent)
        return {d: c / n for d, c in self._counts.items() if c > 0} if n else {}

    def means(self) -> tuple[dict[Domain, float], dict[Domain, float]]:
        """Per-domain window means of (EM, tokens); a domain with fewer than ``min_n`` outcomes gets the overall."""
        if self._tot[0] <= 0:
            return {}, {}
        all_em, all_tok = self._overall()
        em: dict[Domain, float] = {}
        tok: dict[Domain, float] = {}
        for d, (k, e, t) in self._sums.items():
            em[d], tok[d] = (e / k, t / k) if k >= self.min_n else (all_em, all_tok)
        return em, tok

    def _overall(self) -> tuple[float, float]:
        """Window means of (EM, tokens) over every domain; zeros while the window is empty."""
        n = self._tot[0]
        return (self._tot[1] / n, self._tot[2] / n) if n else (0.0, 0.0)

    def _change(self, now: dict[Domain, float], before: dict[Domain, float],
                em: dict[Domain, float], tok: dict[Domain, float]) -> tuple[float, float]:
        """``Σ_d (now_d − before_d)·m̄_d`` for (EM, tokens); a domain without a mean gets the overall one."""
        all_em, all_tok = self._overall()
        d_em = d_tok = 0.0
        for d in set(now) | set(before):
            dw = now.get(d, 0.0) - before.get(d, 0.0)
            if dw:
                d_em += dw * em.get(d, all_em)
                d_tok += dw * tok.get(d, all_tok)
        return d_em, d_tok

    def step(self) -> tuple[float, float]:
        """``(Δm_EM, Δm_tokens)`` since the previous step: the mix change weighted by the current domain means.

        The first call (and the first after :meth:`forget_step`) records the
        mix and returns zeros.
        """
        now = self.shares()
        prev, self._prev = self._prev, now
        if prev is None or not now:
            return 0.0, 0.0
        return self._change(now, prev, *self.means())

    def set_reference(self) -> None:
        """Freeze the current recent mix as the reference that :meth:`shift` compares against."""
        self._ref = self.shares() or None

    @property
    def has_reference(self) -> bool:
        return self._ref is not None

    def shift(self) -> tuple[float, float, float, float]:
        """The recent mix against the reference: ``(level_EM, level_tokens, sd_EM, sd_tokens)``.

        ``level = Σ_d (w_d − w_d^ref)·m̄_d`` with the current domain means;
        ``sd`` is its standard deviation when both mixes are independent
        samples of ``recent`` requests from the reference mix (no shift):
        ``sqrt(2·Σ_d w_d^ref (m̄_d − m̄^ref)² / recent)``. Zeros without a reference.
        """
        ref, now = self._ref, self.shares()
        if ref is None or not now:
            return 0.0, 0.0, 0.0, 0.0
        em, tok = self.means()
        lv_em, lv_tok = self._change(now, ref, em, tok)
        all_em, all_tok = self._overall()
        ref_em = {d: em.get(d, all_em) for d in ref}
        ref_tok = {d: tok.get(d, all_tok) for d in ref}
        mu_em = sum(w * ref_em[d] for d, w in ref.items())
        mu_tok = sum(w * ref_tok[d] for d, w in ref.items())
        var_em = sum(w * (ref_em[d] - mu_em) ** 2 for d, w in ref.items())
        var_tok = sum(w * (ref_tok[d] - mu_tok) ** 2 for d, w in ref.items())
        k = 2.0 / max(1, self.recent)
        return lv_em, lv_tok, (k * var_em) ** 0.5, (k * var_tok) ** 0.5

    def forget_step(self) -> None:
        """Start the mix differences afresh (after a reset or a new target)."""
        self._prev = None
        self._ref = None


__all__ = ["MixTracker"]
