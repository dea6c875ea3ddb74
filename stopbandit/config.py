"""Selector configuration: frozen, validated, built from TOML or keyword arguments.

Example ``stopbandit.toml``::

    lam = 0.2
    token_scale = 1000
    policy = "heads"            # or "vw-native"
    seed = 0

    [exploration]
    name = "squarecb"           # squarecb | epsilon | softmax
    gamma_scale = 10.0

    [store]
    url = "sqlite:///stopbandit.db"
    durable = false             # true: commit before choose() returns

    [[arms]]
    name = "full"
    threshold = 1.01
    max_think_tokens = 0

Every error names the key, what was expected and what was found.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from stopbandit.bandit.arms import ArmSet, arms_from_config
from stopbandit.bandit.exploration import Exploration, exploration_from_config
from stopbandit.bandit.policy import POLICIES
from stopbandit.bandit.reward import check_lambda, check_token_scale
from stopbandit.errors import ConfigError
from stopbandit.features.extract import FeatureConfig


@dataclass(frozen=True)
class StoreConfig:
    url: str | None = None
    durable: bool = False
    batch_size: int = 2000
    flush_interval: float = 0.05
    max_queue: int = 50_000
    spill_path: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.durable, bool):
            raise ConfigError(f"store.durable must be true or false, got {self.durable!r}")
        for name in ("batch_size", "max_queue"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"store.{name} must be a positive integer, got {v!r}")
        if isinstance(self.flush_interval, bool) or not isinstance(self.flush_interval, (int, float)) \
                or not 0 < self.flush_interval <= 60:
            raise ConfigError(f"store.flush_interval must be in (0, 60] seconds, got {self.flush_interval!r}")


@dataclass(frozen=True)
class SelectorConfig:
    lam: float = 0.2
    token_scale: float = 1000.0
    policy: str = "heads"
    seed: int | None = None
    arms: ArmSet = field(default_factory=lambda: arms_from_config(None))
    exploration: Exploration = field(default_factory=lambda: exploration_from_config(None))
    features: FeatureConfig = field(default_factory=FeatureConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    follow_interval: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "lam", check_lambda(self.lam))
        object.__setattr__(self, "token_scale", check_token_scale(self.token_scale))
        if self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {sorted(POLICIES)}, got {self.policy!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if not (isinstance(self.follow_interval, (int, float)) and 0 < self.follow_interval <= 60):
            raise ConfigError(f"follow_interval must be in (0, 60] seconds, got {self.follow_interval!r}")

    def with_(self, **changes: Any) -> SelectorConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


_TOP = {"lam", "token_scale", "policy", "seed", "arms", "exploration", "features", "store", "follow_interval"}


def config_from_mapping(data: Mapping[str, Any], *, source: str = "config") -> SelectorConfig:
    unknown = set(data) - _TOP
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}; known keys: {sorted(_TOP)}")
    store = data.get("store", {})
    if not isinstance(store, Mapping):
        raise ConfigError(f"{source}: [store] must be a table, got {store!r}")
    unknown_store = set(store) - set(StoreConfig.__dataclass_fields__)
    if unknown_store:
        raise ConfigError(f"{source}: [store] unknown key(s) {sorted(unknown_store)}")
    features = data.get("features", {})
    if not isinstance(features, Mapping):
        raise ConfigError(f"{source}: [features] must be a table, got {features!r}")
    exploration = data.get("exploration")
    if exploration is not None and not isinstance(exploration, Mapping):
        raise ConfigError(f"{source}: [exploration] must be a table, got {exploration!r}")
    kwargs: dict[str, Any] = {k: data[k] for k in ("lam", "token_scale", "policy", "seed", "follow_interval") if k in data}
    return SelectorConfig(
        arms=arms_from_config(data.get("arms")),
        exploration=exploration_from_config(exploration),
        features=FeatureConfig.from_dict(features),
        store=StoreConfig(**dict(store)),
        **kwargs,
    )


def load_config(path: str | os.PathLike[str]) -> SelectorConfig:
    """Read and validate a TOML config file."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {os.fspath(path)!r} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {os.fspath(path)!r} is not valid TOML: {exc}") from exc
    return config_from_mapping(data, source=os.fspath(path))


__all__ = ["SelectorConfig", "StoreConfig", "config_from_mapping", "load_config"]
