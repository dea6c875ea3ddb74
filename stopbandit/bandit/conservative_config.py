"""The settings of conservative exploration: baseline, loss budget, confidence, window and audit share.

:class:`ConservativeConfig` is frozen and part of the Selector's config
(``[exploration]`` in TOML); the rule it configures and the running sums it
needs are in :mod:`stopbandit.bandit.conservative`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stopbandit import validation
from stopbandit.errors import ConfigError

AUDIT = 0.1
"""Default least probability on baseline-revealing arms whenever an arm whose loss is estimated can be served."""
WINDOW_LOOKS = 10.0
"""How much smaller the window bound's miss probability is than ``confidence``'s (:attr:`ConservativeConfig.window_z`)."""
SNAPSHOT_PREFIX = "snapshot:"
"""``[exploration] baseline = "snapshot:VERSION"``: the baseline is a stored policy, its arm chosen per request."""
CONSERVATIVE_KEYS = ("baseline", "max_loss", "max_loss_fraction", "confidence", "window", "audit")
"""Keys of ``[exploration]`` that configure the conservative rule (the rest configure the exploration rule)."""


@dataclass(frozen=True)
class ConservativeConfig:
    """``[exploration] baseline / max_loss / max_loss_fraction / confidence / window``; off while ``baseline`` is None.

    ``max_loss``: reward units per request on average the operator accepts to
    give up against the baseline; ``max_loss_fraction``: a share of the
    baseline's estimated reward; the budget is their sum. ``confidence``: of
    the lower bound (``z`` from it). ``window``: the budget also holds over
    every run of this many settled requests (0: over the whole run only). ``audit``: the least probability
    kept on baseline-revealing arms while an arm whose loss is estimated can be served (its comparable
    requests).
    """

    baseline: str | None = None
    max_loss: float = 0.0
    max_loss_fraction: float = 0.0
    confidence: float = 0.95
    window: int = 1000
    audit: float = AUDIT

    def __post_init__(self) -> None:
        if self.baseline is not None and (not isinstance(self.baseline, str) or not self.baseline
                                          or self.baseline == SNAPSHOT_PREFIX):
            raise ConfigError(f"exploration.baseline must be an arm name or '{SNAPSHOT_PREFIX}VERSION' (a stored "
                              f"policy snapshot), got {self.baseline!r}")
        for name, low, high in (("max_loss", 0.0, 10.0), ("max_loss_fraction", 0.0, 1.0), ("confidence", 0.5, 0.999999),
                                ("audit", 0.01, 1.0)):
            object.__setattr__(self, name, validation.within(getattr(self, name), f"exploration.{name}", low=low,
                                                             high=high, expected="a number {range}"))
        if isinstance(self.window, bool) or not isinstance(self.window, int) or not 0 <= self.window <= 10_000_000:
            raise ConfigError(f"exploration.window must be an integer in [0, 10000000] (0: whole run only), "
                              f"got {self.window!r}")
        if self.baseline is None and (self.max_loss or self.max_loss_fraction):
            raise ConfigError("exploration.max_loss / max_loss_fraction need exploration.baseline (the arm the "
                              "budget is measured against), got no baseline")

    @property
    def enabled(self) -> bool:
        return self.baseline is not None

    @property
    def snapshot(self) -> str | None:
        """The snapshot version of a ``snapshot:VERSION`` baseline (a stored policy), None for an arm."""
        b = self.baseline
        return b[len(SNAPSHOT_PREFIX):] if b is not None and b.startswith(SNAPSHOT_PREFIX) else None

    @property
    def z(self) -> float:
        """One-sided normal quantile of ``confidence``."""
        from statistics import NormalDist

        return NormalDist().inv_cdf(self.confidence)

    @property
    def window_z(self) -> float:
        """The window's quantile: a miss probability ``WINDOW_LOOKS`` times smaller than ``confidence``'s.

        The window is checked at every decision over every suffix, so each stretch of requests is looked at
        many times; a smaller miss probability per look keeps the many looks from eroding the guarantee.
        """
        from statistics import NormalDist

        return NormalDist().inv_cdf(1.0 - (1.0 - self.confidence) / WINDOW_LOOKS)

    def to_dict(self) -> dict[str, Any]:
        if self.baseline is None:
            return {}
        return {"baseline": self.baseline, "max_loss": self.max_loss, "max_loss_fraction": self.max_loss_fraction,
                "confidence": self.confidence, "window": self.window, "audit": self.audit}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ConservativeConfig:
        unknown = set(data) - set(CONSERVATIVE_KEYS)
        if unknown:
            raise ConfigError(f"exploration: unknown conservative key(s) {sorted(map(str, unknown))}; "
                              f"known: {list(CONSERVATIVE_KEYS)}")
        return cls(**{str(k): v for k, v in data.items()})


__all__ = ["AUDIT", "CONSERVATIVE_KEYS", "SNAPSHOT_PREFIX", "WINDOW_LOOKS", "ConservativeConfig"]
