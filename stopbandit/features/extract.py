"""Request → feature dict: the context the bandit sees.

Features are a flat ``dict[str, float | str]``: numbers are numeric features,
strings are categorical. Built-ins: ``len`` (log of prompt tokens), ``lbin``
(length bucket), ``domain``, ``diff`` (difficulty estimate), ``dbin``
(difficulty bucket), ``dd`` (domain × difficulty bucket), ``digits``, ``mathsym``, ``steps``, ``prior`` (the
domain's learned miss rate). Caller extras are validated here, once; escaping
for VW's text format happens at the VW seam (``bandit/vw.py``).

``FeatureConfig.version`` selects the text statistics behind ``steps`` and
``diff`` (:mod:`stopbandit.features.text`): 2 (default) counts reasoning-cue
words and short-answer words; 1 is the original step-word list, kept so a
snapshot trained on version-1 features can still be served with them. The
version is part of the snapshot metadata, so a Selector never scores a
snapshot with features of another version (the load is refused, naming both).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

from stopbandit import validation
from stopbandit.errors import ConfigError, InputError
from stopbandit.features.difficulty import DifficultyEstimator, DomainPrior, TextDifficulty
from stopbandit.features.domain import DomainClassifier, KeywordDomainClassifier
from stopbandit.features.text import FEATURE_VERSIONS, TOKEN_COUNTERS, TokenCounter, text_stats

Features = dict[str, float | str]

FEATURE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
BUILTIN = ("len", "lbin", "domain", "diff", "dbin", "dd", "digits", "mathsym", "steps", "prior")
MAX_PROMPT_CHARS = 1_000_000
MAX_CATEGORY_CHARS = 256


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """What the extractor computes; stored in snapshots so a mismatch is caught."""

    length_counter: str = "whitespace"
    difficulty: str = "text+prior"
    prior_halflife: float = 2000.0
    version: int = 2
    extra: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.length_counter not in TOKEN_COUNTERS:
            raise ConfigError(
                f"features.length_counter must be one of {sorted(TOKEN_COUNTERS)}, got {self.length_counter!r}"
            )
        if self.difficulty not in ("text+prior", "text", "none"):
            raise ConfigError(f"features.difficulty must be text+prior, text or none, got {self.difficulty!r}")
        if not (isinstance(self.prior_halflife, Real) and self.prior_halflife > 0):
            raise ConfigError(f"features.prior_halflife must be > 0, got {self.prior_halflife!r}")
        if isinstance(self.version, bool) or self.version not in FEATURE_VERSIONS:
            raise ConfigError(f"features.version must be one of {list(FEATURE_VERSIONS)}, got {self.version!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"length_counter": self.length_counter, "difficulty": self.difficulty,
                "prior_halflife": self.prior_halflife, "version": self.version}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureConfig:
        unknown = set(data) - {"length_counter", "difficulty", "prior_halflife", "version"}
        if unknown:
            raise ConfigError(f"[features]: unknown key(s) {sorted(unknown)}")
        return cls(**dict(data))


def validate_extra(extra: Mapping[str, Any] | None) -> Features:
    """Check caller-supplied features: names, finite numbers or short strings."""
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise InputError(f"features must be a mapping of name -> number or string, got {type(extra).__name__}")
    out: Features = {}
    for name, value in extra.items():
        if not isinstance(name, str) or not FEATURE_NAME.match(name):
            raise InputError(f"feature name {name!r} must match {FEATURE_NAME.pattern}")
        if name in BUILTIN:
            raise InputError(f"feature name {name!r} is reserved for a built-in feature; rename it")
        if isinstance(value, bool):
            out[name] = 1.0 if value else 0.0
        elif isinstance(value, Real):
            out[name] = validation.real(value, f"feature {name!r}")
        elif isinstance(value, str):
            if len(value) > MAX_CATEGORY_CHARS:
                raise InputError(f"feature {name!r}: categorical value longer than {MAX_CATEGORY_CHARS} characters")
            out[name] = validation.text(value, f"feature {name!r}")
        else:
            raise InputError(f"feature {name!r} must be a number, bool or string, got {type(value).__name__}")
    return out


class FeatureExtractor:
    """Computes the feature dict of a request. Thread-safe (the prior has its own lock)."""

    def __init__(
        self,
        config: FeatureConfig | None = None,
        *,
        counter: TokenCounter | None = None,
        classifier: DomainClassifier | None = None,
        difficulty: DifficultyEstimator | None = None,
        max_domains: int = 1000,
    ) -> None:
        self.config = config or FeatureConfig()
        self.counter = counter or TOKEN_COUNTERS[self.config.length_counter]
        self.classifier = classifier or KeywordDomainClassifier()
        self.difficulty = difficulty or TextDifficulty(version=self.config.version)
        self.prior = DomainPrior(self.config.prior_halflife, max_domains=max_domains)

    def extract(self, prompt: str, domain: str | None = None, extra: Mapping[str, Any] | None = None) -> Features:
        if not isinstance(prompt, str):
            raise InputError(f"prompt must be a string, got {type(prompt).__name__}")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InputError(f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
        if domain is not None and (not isinstance(domain, str) or not domain or len(domain) > 64):
            raise InputError(f"domain must be a non-empty string of at most 64 characters, got {domain!r}")
        if domain is not None:
            validation.text(domain, "domain")
        extras = validate_extra(extra)
        stats = text_stats(prompt, self.counter, self.config.version)
        dom = domain if domain is not None else self.classifier.classify(prompt)
        feats: Features = {
            "len": round(stats.log_tokens, 4),
            "lbin": f"l{min(int(stats.log_tokens / 0.7), 12)}",
            "domain": dom,
            "digits": round(stats.digit_share, 4),
            "mathsym": round(stats.math_share, 4),
            "steps": float(min(stats.step_words, 10)),
        }
        if self.config.difficulty != "none":
            d = self.difficulty.estimate(stats, dom)
            feats["diff"] = round(d, 4)
            feats["dbin"] = f"d{min(int(d * 5), 4)}"
            # domain × difficulty bucket: with -q ca this gives each (domain, level) cell its own arm values
            feats["dd"] = f"{dom}.{feats['dbin']}"
        if self.config.difficulty == "text+prior":
            feats["prior"] = round(self.prior.get(dom), 4)
        feats.update(extras)
        return feats

    def observe(self, domain: str | None, em: float) -> None:
        """Feed an outcome to the online per-domain prior."""
        if domain is not None and self.config.difficulty == "text+prior":
            self.prior.update(domain, em)


__all__ = ["BUILTIN", "FeatureConfig", "FeatureExtractor", "Features", "validate_extra"]
