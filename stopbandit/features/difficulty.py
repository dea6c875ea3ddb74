"""Difficulty estimate of a request, in [0, 1].

Two parts, both pluggable:

* a text prior, from the prompt alone: longer prompts, more digits and
  operators and more words asking for careful reasoning read as harder,
  words asking for a short answer as easier (:mod:`stopbandit.features.text`);
* an online per-domain prior learned from logged outcomes: the running miss
  rate (1 − EM) of each domain, an exponentially weighted mean so it follows
  drift. Early-exit work finds the per-request ceiling large exactly because
  difficulty varies (ThinkBrake, arXiv 2510.00546), so both parts matter.
"""

from __future__ import annotations

import math
import threading
from typing import Protocol

from stopbandit.features.text import TextStats


class DifficultyEstimator(Protocol):
    def estimate(self, stats: TextStats, domain: str) -> float: ...


class TextDifficulty:
    """Squash a weighted sum of text statistics into [0, 1].

    ``z = 1.2·(log(1+tokens) − log(1+pivot)) + 8·digit share + 6·operator share
    + w_hard·min(hard words, 8) − w_easy·min(easy words, 8)``; version 1:
    ``w_hard = 0.25`` on its step words, no easy words; version 2: 0.5 and 0.5.
    The version-2 weights were read off simulator seed 0 (Spearman of the
    estimate with the latent difficulty: 0.68 → 0.81) and checked on seed 1
    (0.81); they are a prior, not a fit: real prompts will rank differently.
    """

    def __init__(self, pivot_tokens: float = 60.0, version: int = 2) -> None:
        self.log_pivot = math.log1p(pivot_tokens)
        self.w_hard, self.w_easy = (0.25, 0.0) if version == 1 else (0.5, 0.5)

    def estimate(self, stats: TextStats, domain: str) -> float:
        z = (stats.log_tokens - self.log_pivot) * 1.2 + 8.0 * stats.digit_share + 6.0 * stats.math_share
        z += self.w_hard * min(stats.step_words, 8) - self.w_easy * min(stats.easy_words, 8)
        return 1.0 / (1.0 + math.exp(-z))


OTHER_DOMAINS = "(other)"
"""The bucket that domains beyond ``max_domains`` share (their prior is one running mean)."""


class DomainPrior:
    """Exponentially weighted miss rate per domain; 0.5 until a domain has data.

    At most ``max_domains`` domains keep their own rate (the first ones seen);
    every later domain reads and updates the shared :data:`OTHER_DOMAINS`
    bucket, so memory and snapshot size stay bounded however many distinct
    domains callers send. ``folded`` counts the outcomes that went to the bucket.
    """

    def __init__(self, halflife: float = 2000.0, start: float = 0.5, max_domains: int = 1000) -> None:
        self.alpha = 1.0 - 0.5 ** (1.0 / halflife)
        self.start = start
        self.max_domains = max_domains
        self.folded = 0
        self._miss: dict[str, float] = {}
        self._lock = threading.Lock()

    def _key(self, domain: str) -> str:
        if domain in self._miss or len(self._miss) < self.max_domains:
            return domain
        return OTHER_DOMAINS

    def get(self, domain: str) -> float:
        miss = self._miss
        v = miss.get(domain)
        if v is not None:
            return v
        return miss.get(OTHER_DOMAINS, self.start) if len(miss) >= self.max_domains else self.start

    def update(self, domain: str, em: float) -> None:
        with self._lock:
            key = self._key(domain)
            if key == OTHER_DOMAINS and domain != OTHER_DOMAINS:
                self.folded += 1
            cur = self._miss.get(key, self.start)
            self._miss[key] = cur + self.alpha * ((1.0 - em) - cur)

    @property
    def tracked(self) -> int:
        """Domains with a rate of their own (the shared bucket included once it exists)."""
        return len(self._miss)

    def state(self) -> dict[str, float]:
        with self._lock:
            return dict(self._miss)

    def load(self, state: dict[str, float]) -> None:
        """Take a stored state (its rates checked by the snapshot loader); only ``max_domains`` of it
        (the bucket included) keep their own rate."""
        loaded: dict[str, float] = {}
        for k, v in state.items():
            rate = float(v)
            if not math.isfinite(rate):
                continue
            if k == OTHER_DOMAINS or len(loaded) < self.max_domains:
                loaded[str(k)] = min(max(rate, 0.0), 1.0)
        with self._lock:
            self._miss = loaded


__all__ = ["OTHER_DOMAINS", "DifficultyEstimator", "DomainPrior", "TextDifficulty"]
