"""Synthetic prompt text whose observable properties carry noisy difficulty signal.

A feature extractor sees only the prompt (and the domain from the caller), so
the prompt must leak difficulty the way real prompts do -- imperfectly:

* length: ``prompt_base_words + prompt_difficulty_words · x · exp(0.55·z)`` words
  (harder questions are longer, with multiplicative noise);
* cue words: each word slot is a "hard" cue (:data:`HARD_CUES`: *prove*,
  *optimal*, *nested*, ...) with probability ``0.02 + 0.16·x``, an "easy" cue
  (:data:`EASY_CUES`) with probability ``0.10·(1 − x)``, a domain term with
  probability 0.25, else a filler word.

The text is a bag of words, not English; what matters is that length and cue
rates correlate with the latent difficulty without revealing it (measured at the
defaults, 20k requests: Spearman 0.70 for the word count, 0.65 for the rate of
hard cues).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HARD_CUES: tuple[str, ...] = (
    "prove", "derive", "optimal", "rigorous", "nested", "generalize", "asymptotic",
    "constraint", "multi-step", "worst-case", "invariant", "counterexample",
)
EASY_CUES: tuple[str, ...] = ("simple", "basic", "quick", "single", "directly", "briefly")
FILLER: tuple[str, ...] = (
    "the", "a", "of", "given", "find", "value", "each", "which", "following", "and",
    "is", "for", "with", "when", "that", "what", "how", "many", "if", "then",
)
OPENERS: dict[str, str] = {"math": "Solve:", "science": "Explain:", "code": "Write code:", "trivia": "Q:"}

MAX_PROMPT_WORDS = 256
LENGTH_NOISE = 0.55  # sd of the log-noise on the difficulty-driven part of the prompt length
P_DOMAIN_TERM = 0.25


def word_counts(difficulty: np.ndarray, z: np.ndarray, base: int, per_difficulty: float) -> np.ndarray:
    """Words per prompt, shape (n,): grows with difficulty, lognormal noise."""
    n = np.rint(base + per_difficulty * difficulty * np.exp(LENGTH_NOISE * z))
    return np.clip(n, 1, MAX_PROMPT_WORDS).astype(np.int64)


def word_kinds(difficulty: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Kind of each word slot, shape (n, MAX_PROMPT_WORDS): 0 filler, 1 domain, 2 hard cue, 3 easy cue."""
    x = difficulty[:, None]
    p_hard = 0.02 + 0.16 * x
    p_easy = 0.10 * (1.0 - x)
    kinds = np.zeros(u.shape, dtype=np.int8)
    kinds[u < p_hard + p_easy + P_DOMAIN_TERM] = 1
    kinds[u < p_hard + p_easy] = 3
    kinds[u < p_hard] = 2
    return kinds


class Vocabulary:
    """All prompt words of a set of domains in one array, so word choice is vectorised.

    Slot kind 0 draws from :data:`FILLER`, 1 from the domain's terms, 2 from
    :data:`HARD_CUES`, 3 from :data:`EASY_CUES`; a uniform ``pick`` in [0, 1)
    selects the word inside the pool.
    """

    def __init__(self, domain_terms: Sequence[tuple[str, ...]]) -> None:
        words: list[str] = list(FILLER) + list(HARD_CUES) + list(EASY_CUES)
        shared = {0: (0, len(FILLER)), 2: (len(FILLER), len(HARD_CUES)),
                  3: (len(FILLER) + len(HARD_CUES), len(EASY_CUES))}
        n_dom = len(domain_terms)
        self._start = np.zeros((n_dom, 4), dtype=np.int64)
        self._size = np.zeros((n_dom, 4), dtype=np.int64)
        for d, terms in enumerate(domain_terms):
            for kind, (start, size) in shared.items():
                self._start[d, kind], self._size[d, kind] = start, size
            self._start[d, 1], self._size[d, 1] = len(words), len(terms)
            words.extend(terms)
        self.words = np.array(words, dtype=object)

    def word_ids(self, domain: np.ndarray, kinds: np.ndarray, picks: np.ndarray) -> np.ndarray:
        """Word ids, shape (n, MAX_PROMPT_WORDS), from domain index (n,), slot kinds and picks (n, W)."""
        start = self._start[domain[:, None], kinds]
        size = self._size[domain[:, None], kinds]
        return start + np.minimum((picks * size).astype(np.int64), size - 1)

    def prompt(self, domain: str, ids: np.ndarray, n_words: int) -> str:
        """The prompt text: a domain opener, ``n_words`` words, a question mark."""
        opener = OPENERS.get(domain, f"{domain.capitalize()}:")
        return opener + " " + " ".join(self.words[ids[:n_words]].tolist()) + "?"


__all__ = ["EASY_CUES", "FILLER", "HARD_CUES", "MAX_PROMPT_WORDS", "OPENERS", "Vocabulary", "word_counts", "word_kinds"]
