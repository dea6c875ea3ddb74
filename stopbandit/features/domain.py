"""Domain of a request: given by the caller, else guessed by a pluggable classifier.

The default is a keyword vote: good enough to separate math, code, science and
general questions, and free. Plug in anything with ``classify(text) -> str``.
"""

from __future__ import annotations

import re
from typing import Protocol


class DomainClassifier(Protocol):
    def classify(self, text: str) -> str: ...


_KEYWORDS: dict[str, tuple[str, ...]] = {
    "math": ("solve", "equation", "integer", "sum", "product", "prime", "digit", "compute", "calculate",
             "probability", "triangle", "remainder", "how many", "divisible", "fraction"),
    "code": ("function", "python", "code", "compile", "return", "array", "string", "algorithm", "bug",
             "program", "class", "def ", "loop"),
    "science": ("energy", "molecule", "atom", "cell", "force", "velocity", "reaction", "physics",
                "chemistry", "biology", "gene", "electron", "temperature"),
}


class KeywordDomainClassifier:
    """Vote by keyword counts; ``general`` when nothing matches."""

    def __init__(self, keywords: dict[str, tuple[str, ...]] | None = None, default: str = "general") -> None:
        self.default = default
        self._patterns = {
            d: re.compile("|".join(re.escape(k) for k in ks), re.IGNORECASE)
            for d, ks in (keywords or _KEYWORDS).items()
        }

    def classify(self, text: str) -> str:
        best, best_n = self.default, 0
        for domain, pat in self._patterns.items():
            n = len(pat.findall(text))
            if n > best_n:
                best, best_n = domain, n
        return best


__all__ = ["DomainClassifier", "KeywordDomainClassifier"]
