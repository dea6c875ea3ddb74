"""Cheap text statistics of a prompt, computed with C-speed string operations.

These are the raw material of the length and difficulty features. They must
stay cheap: they run on every ``choose`` on the serving path.

Cue words (feature-set version 2, the default). ``hard_words`` counts words
that ask for long or careful reasoning (*prove*, *derive*, *rigorous*,
*optimal*, *worst-case*, ...); ``easy_words`` counts words that ask for a short
answer (*simple*, *quick*, *briefly*, ...). Version 1 counted a "step word"
list that also held filler (*then*, *each*, *after*, *total*) and domain nouns
(*sum*, *product*, *probability*, *integral*), which every prompt of a domain
uses whatever its difficulty; on the simulator that list ranked difficulty
worse than the prompt length alone (``docs/benchmarks.md``, learning section).
Version 1 stays available (``FeatureConfig(version=1)``) so snapshots trained
on it keep loading with the features they were trained on.

The version-2 lists hold every cue word of the simulator's prompt vocabulary
(:mod:`stopbandit.sim.prompts`) and were checked against it, so the simulator
overstates how well they rank real prompts; a learned difficulty estimate
would not depend on a word list.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat

_DIGITS = b"0123456789"
_MATHSYMS = b"=+-*/^<>%"
_PUNCT = ".,;:?!()\"'"

STEP_WORDS_V1 = frozenset(
    "then after each every total remaining prove derive show least most probability integral sum product "
    "why explain compare step steps".split()
)
"""Version 1 "step words" (kept only to reproduce version-1 features)."""

HARD_WORDS = frozenset(
    "prove proof derive justify rigorous rigorously optimal optimize minimize maximize generalize asymptotic "
    "asymptotically constraint constraints invariant counterexample worst-case multi-step nested tricky subtle".split()
)
"""Version 2: words that ask for long or careful reasoning."""

EASY_WORDS = frozenset("simple simply basic quick quickly single directly briefly brief".split())
"""Version 2: words that ask for a short, direct answer."""

FEATURE_VERSIONS = (1, 2)

TokenCounter = Callable[[str], int]


def _count_ascii(raw: bytes, chars: bytes) -> int:
    """Occurrences of the ASCII ``chars`` in UTF-8 ``raw``: one C pass, not one ``str.count`` per character.

    UTF-8 encodes every non-ASCII character with bytes >= 0x80 only, so the
    ASCII bytes of ``raw`` are exactly the ASCII characters of the text.
    """
    return len(raw) - len(raw.translate(None, chars))


def whitespace_tokens(text: str) -> int:
    """Default length counter: whitespace-separated words (a cheap proxy for tokens)."""
    return len(text.split())


def chars_over_four(text: str) -> int:
    """The usual "4 characters per token" rule of thumb."""
    return (len(text) + 3) // 4


TOKEN_COUNTERS: dict[str, TokenCounter] = {"whitespace": whitespace_tokens, "chars4": chars_over_four}


@dataclass(frozen=True, slots=True)
class TextStats:
    """``step_words``: version 1, the old step-word count; version 2, :data:`HARD_WORDS` hits.

    ``easy_words``: :data:`EASY_WORDS` hits (always 0 in version 1).
    """

    tokens: int
    digit_share: float
    math_share: float
    step_words: int
    easy_words: int = 0

    @property
    def log_tokens(self) -> float:
        return math.log1p(self.tokens)


def text_stats(text: str, counter: TokenCounter = whitespace_tokens, version: int = 2) -> TextStats:
    # bytes.translate, str.strip and set lookups through map(): C-speed, several times cheaper than regexes.
    n = max(len(text), 1)
    raw = text.encode("utf-8", "surrogatepass")
    words = list(map(str.strip, text.lower().split(), repeat(_PUNCT)))
    if version == 1:
        steps, easy = sum(map(STEP_WORDS_V1.__contains__, words)), 0
    else:
        steps, easy = sum(map(HARD_WORDS.__contains__, words)), sum(map(EASY_WORDS.__contains__, words))
    return TextStats(
        # lower() neither adds nor removes whitespace, so the default counter's split is this one
        tokens=len(words) if counter is whitespace_tokens else counter(text),
        digit_share=_count_ascii(raw, _DIGITS) / n,
        math_share=_count_ascii(raw, _MATHSYMS) / n,
        step_words=steps,
        easy_words=easy,
    )


__all__ = [
    "EASY_WORDS",
    "FEATURE_VERSIONS",
    "HARD_WORDS",
    "STEP_WORDS_V1",
    "TOKEN_COUNTERS",
    "TextStats",
    "TokenCounter",
    "chars_over_four",
    "text_stats",
    "whitespace_tokens",
]
