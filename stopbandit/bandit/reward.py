"""The reward: EM minus a λ-weighted token cost.

    reward = em − λ · tokens / token_scale

λ is applied at scoring time, never baked into a model, so changing it takes
effect on the next request and offline sweeps reuse the same heads.
"""

from __future__ import annotations

from typing import Any

from stopbandit import validation
from stopbandit.errors import ConfigError


def reward(em: Any, tokens: Any, lam: float, token_scale: float) -> Any:
    """``em − lam · tokens / token_scale`` of numbers or arrays: the one scoring rule of serving and replay."""
    return em - lam * tokens / token_scale


def check_lambda(lam: object) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise ConfigError(f"lambda must be a finite number >= 0, got {lam!r:.80}")
    v = validation.real(lam, "lambda", error=ConfigError)
    if v < 0:
        raise ConfigError(f"lambda must be a finite number >= 0, got {lam!r}")
    return v


def check_token_scale(scale: object) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ConfigError(f"token_scale must be a finite number > 0, got {scale!r:.80}")
    v = validation.real(scale, "token_scale", error=ConfigError)
    if v <= 0:
        raise ConfigError(f"token_scale must be a finite number > 0, got {scale!r}")
    return v


__all__ = ["check_lambda", "check_token_scale", "reward"]
