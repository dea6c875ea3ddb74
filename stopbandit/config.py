"""Selector configuration: frozen, validated, built from TOML or keyword arguments.

Example ``stopbandit.toml``::

    lam = 0.2
    token_scale = 1000
    policy = "heads"            # or "vw-native"
    seed = 0
    reward_window_s = 30        # unset (default): rewards settle when they arrive
    reward_aggregation = "earliest"   # or "sum" (EM summed, clipped to [0, 1] when stored)
    default_em = 0.0            # recorded (status "defaulted") when a window closes empty; or "arm_mean"
    default_tokens = "arm_mean" # or an integer
    max_pending = 200000        # decisions (open windows) kept in memory for their reward

    [exploration]
    name = "squarecb"           # squarecb | epsilon | softmax
    gamma_scale = 10.0
    nested = false              # squarecb only: true = graph-aware exploration while rewards carry probe
                                # traces (do not explore arms the greedy arm's trace reveals); see
                                # stopbandit.bandit.exploration
    baseline = "careful"        # conservative exploration (unset: off): the arm served today, or
                                # "snapshot:VERSION" (a stored policy); max_loss: the
    max_loss = 0.01             # served reward given up against it, per request on average, and/or
    max_loss_fraction = 0.0     # as a share of the baseline's reward; confidence = 0.95 of the lower
    window = 1000               # bound; the budget also holds over every stretch of `window` requests;
    audit = 0.1                 # least mass on baseline-revealing arms; see stopbandit.bandit.conservative

    [learning]
    revealed_weighting = "none" # or "inverse-observation": weight each arm a probe trace reveals by
                                # min(1/q, revealed_weight_clip), q = P(arm observed), see
                                # stopbandit.bandit.policy.observation_weights (policy "heads" only)
    revealed_weight_clip = 10.0
    stop_rule = "auto"          # traced rewards train the learned stop rule: auto (when an arm has
                                # learned > 0), on, off; see stopbandit.serving.stop_learning
    stop_label = "auto"         # graded (trial answer vs reference), agreement (vs the run's own end),
                                # auto: graded when the reward gives the reference, else agreement
    stop_batch = 16             # ended traces per update of the rule

    [store]
    url = "sqlite:///stopbandit.db"
    durable = false             # true: commit (or fsync to the spill) before choose() returns
    max_spill_bytes = 1073741824  # bound of the outage spill file; beyond it events are dropped (counted)
    retry_interval = 0.5        # seconds between reconnect attempts while the store is down
    timeout = 5.0               # longest database call (connect, statement, commit); an overrun is an outage
    decision_wait = 5.0         # how long a reward waits for its decision to reach the store (another replica)
    # spill_dir = "/srv/app/spill"  # private (0700, ours); default $XDG_STATE_HOME/stopbandit/spill

    [[arms]]
    name = "full"
    threshold = 1.01
    max_think_tokens = 0
    agreement = 0               # >= 2: also stop once that many consecutive probes agree (0 = off)

Every error names the key, what was expected and what was found. The reward
window semantics are documented in :mod:`stopbandit.bandit.delayed`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from stopbandit.bandit.arms import ArmSet, arms_from_config
from stopbandit.bandit.delayed import (
    ARM_MEAN,
    RewardWindow,
    check_aggregation,
    check_default_em,
    check_default_tokens,
    check_window,
)
from stopbandit.bandit.conservative_config import CONSERVATIVE_KEYS, ConservativeConfig
from stopbandit.bandit.exploration import Exploration, exploration_from_config
from stopbandit.bandit.policy import POLICIES, REVEALED_WEIGHTINGS
from stopbandit.bandit.reward import check_lambda, check_token_scale
from stopbandit.bandit.stop_eval import STOP_LABELS
from stopbandit import validation
from stopbandit.errors import ConfigError, StopbanditError, require_positive_ints
from stopbandit.features.extract import FeatureConfig


@dataclass(frozen=True)
class StoreConfig:
    url: str | None = None
    durable: bool = False
    batch_size: int = 2000
    flush_interval: float = 0.05
    max_queue: int = 50_000
    spill_path: str | None = None  # a file prefix (its directory must be private); overrides spill_dir
    max_spill_bytes: int = 1 << 30
    retry_interval: float = 0.5
    timeout: float = 5.0
    decision_wait: float = 5.0
    spill_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("url", "spill_path", "spill_dir"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v or "\x00" in v):
                raise ConfigError(f"store.{name} must be a non-empty string, got {v!r}")
        if not isinstance(self.durable, bool):
            raise ConfigError(f"store.durable must be true or false, got {self.durable!r}")
        require_positive_ints("store.", batch_size=self.batch_size, max_queue=self.max_queue,
                              max_spill_bytes=self.max_spill_bytes)
        for name in ("flush_interval", "retry_interval", "timeout"):
            _seconds(getattr(self, name), f"store.{name}")
        validation.within(self.decision_wait, "store.decision_wait", low=0, high=60, expected="{range} seconds")


@dataclass(frozen=True)
class LearningConfig:
    """How rewards update the policy (``[learning]``).

    ``revealed_weighting``: ``"none"`` learns every arm a probe trace reveals
    with weight 1; ``"inverse-observation"`` weights each by
    ``min(1/q, revealed_weight_clip)``, ``q`` the probability that the arm's
    outcome is observed under the decision's probability vector
    (:func:`stopbandit.bandit.policy.observation_weights` says why). Rewards
    without a trace are unaffected.

    ``stop_rule``: whether traced rewards train the learned stop rule
    (:mod:`stopbandit.serving.stop_learning`): ``auto`` when an arm stops on it,
    ``on`` always, ``off`` never (learned arms then read the rule a snapshot
    brings). ``stop_label``: ``auto`` (graded where the reward gives the
    reference, agreement with the run's own final answer elsewhere), ``graded``
    or ``agreement``. ``stop_batch``: traces per update of the rule.
    """

    revealed_weighting: str = "none"
    revealed_weight_clip: float = 10.0
    stop_rule: str = "auto"
    stop_label: str = "auto"
    stop_batch: int = 16

    def __post_init__(self) -> None:
        if self.revealed_weighting not in REVEALED_WEIGHTINGS:
            raise ConfigError(f"learning.revealed_weighting must be one of {list(REVEALED_WEIGHTINGS)}, "
                              f"got {self.revealed_weighting!r}")
        clip = validation.within(self.revealed_weight_clip, "learning.revealed_weight_clip", low=1)
        object.__setattr__(self, "revealed_weight_clip", clip)
        if self.stop_rule not in STOP_RULE_MODES:
            raise ConfigError(f"learning.stop_rule must be one of {list(STOP_RULE_MODES)}, got {self.stop_rule!r}")
        if self.stop_label not in STOP_LABELS:
            raise ConfigError(f"learning.stop_label must be one of {list(STOP_LABELS)}, got {self.stop_label!r}")
        b = self.stop_batch
        validation.within(b, "learning.stop_batch", low=1, high=100_000, integral=True)

    @property
    def weighted(self) -> bool:
        return self.revealed_weighting != "none"


STOP_RULE_MODES = ("auto", "on", "off")


def _seconds(v: object, field: str) -> None:
    """An interval of the store or the follower: seconds in (0, 60]."""
    validation.within(v, field, low=0, high=60, low_open=True, expected="{range} seconds")


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
    learning: LearningConfig = field(default_factory=LearningConfig)
    # conservative exploration against a baseline arm ([exploration] baseline / max_loss ...); off by default
    conservative: ConservativeConfig = field(default_factory=ConservativeConfig)
    follow_interval: float = 0.5
    # delayed rewards (stopbandit.bandit.delayed); None = settle each reward when it arrives
    reward_window_s: float | None = None
    reward_aggregation: str = "earliest"
    default_em: float | str = 0.0
    default_tokens: int | str = ARM_MEAN
    max_pending: int = 200_000
    # checkpoints of a serving Selector's learned policy (see Selector.checkpoint); 0 turns a trigger off
    checkpoint_every: int = 1000          # outcomes learned since the last checkpoint
    checkpoint_interval_s: float = 300.0  # seconds since the last checkpoint (with at least one outcome)
    max_domains: int = 1000               # domains with their own difficulty prior; the rest share one bucket

    def __post_init__(self) -> None:
        object.__setattr__(self, "lam", check_lambda(self.lam))
        object.__setattr__(self, "token_scale", check_token_scale(self.token_scale))
        if not isinstance(self.policy, str) or self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {sorted(POLICIES)}, got {self.policy!r}")
        if self.seed is not None:
            validation.within(self.seed, "seed", low=0, integral=True, expected="a non-negative integer")
        _seconds(self.follow_interval, "follow_interval")
        for name, kind in (("arms", ArmSet), ("exploration", Exploration), ("features", FeatureConfig),
                           ("store", StoreConfig), ("learning", LearningConfig),
                           ("conservative", ConservativeConfig)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        if self.learning.weighted and self.policy != "heads":
            raise ConfigError(f"learning.revealed_weighting = {self.learning.revealed_weighting!r} needs policy "
                              f"'heads' (per-arm importance weights), got policy {self.policy!r}")
        baseline = self.conservative.baseline
        if baseline is not None and self.conservative.snapshot is None and baseline not in self.arms.names:
            raise ConfigError(f"exploration.baseline must be one of the arms {list(self.arms.names)}, "
                              f"got {baseline!r}")
        # rules that need the arms' reveal structure (graph-aware SquareCB) are bound to these arms here
        object.__setattr__(self, "exploration", self.exploration.for_arms(self.arms))
        object.__setattr__(self, "reward_window_s", check_window(self.reward_window_s))
        object.__setattr__(self, "reward_aggregation", check_aggregation(self.reward_aggregation))
        object.__setattr__(self, "default_em", check_default_em(self.default_em))
        object.__setattr__(self, "default_tokens", check_default_tokens(self.default_tokens))
        validation.within(self.max_pending, "max_pending", low=1, high=10_000_000, integral=True)
        validation.within(self.checkpoint_every, "checkpoint_every", low=0, high=10_000_000, integral=True,
                          expected="an integer {range} (0: off)")
        validation.within(self.checkpoint_interval_s, "checkpoint_interval_s", low=0, high=86400,
                          expected="{range} seconds (0: off)")
        validation.within(self.max_domains, "max_domains", low=1, high=1_000_000, integral=True)

    @property
    def reward_window(self) -> RewardWindow | None:
        """The delayed-reward settings, or None when rewards settle immediately."""
        if self.reward_window_s is None:
            return None
        return RewardWindow(self.reward_window_s, self.reward_aggregation, self.default_em, self.default_tokens)

    def with_(self, **changes: Any) -> SelectorConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


_SCALARS = ("lam", "token_scale", "policy", "seed", "follow_interval", "reward_window_s", "reward_aggregation",
            "default_em", "default_tokens", "max_pending", "checkpoint_every", "checkpoint_interval_s", "max_domains")
_TOP = {"arms", "exploration", "features", "store", "learning", *_SCALARS}


def config_from_mapping(data: Mapping[str, Any], *, source: str = "config") -> SelectorConfig:
    """Build and validate a SelectorConfig from parsed TOML (or any mapping); ConfigError names what is wrong."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the configuration must be a table, got {type(data).__name__}")
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError(f"{source}: keys must be strings, got {bad_keys!r}")
    unknown = set(data) - _TOP
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}; known keys: {sorted(_TOP)}")
    store = data.get("store", {})
    if not isinstance(store, Mapping):
        raise ConfigError(f"{source}: [store] must be a table, got {store!r}")
    unknown_store = set(store) - set(StoreConfig.__dataclass_fields__)
    if unknown_store:
        raise ConfigError(f"{source}: [store] unknown key(s) {sorted(map(str, unknown_store))}")
    features = data.get("features", {})
    if not isinstance(features, Mapping):
        raise ConfigError(f"{source}: [features] must be a table, got {features!r}")
    exploration = data.get("exploration")
    if exploration is not None and not isinstance(exploration, Mapping):
        raise ConfigError(f"{source}: [exploration] must be a table, got {exploration!r}")
    conservative: dict[str, Any] = {}
    if exploration is not None:
        conservative = {k: v for k, v in exploration.items() if k in CONSERVATIVE_KEYS}
        rest = {k: v for k, v in exploration.items() if k not in CONSERVATIVE_KEYS}
        exploration = rest
    learning = data.get("learning", {})
    if not isinstance(learning, Mapping):
        raise ConfigError(f"{source}: [learning] must be a table, got {learning!r}")
    unknown_learning = set(learning) - set(LearningConfig.__dataclass_fields__)
    if unknown_learning:
        raise ConfigError(f"{source}: [learning] unknown key(s) {sorted(map(str, unknown_learning))}; "
                          f"known: {sorted(LearningConfig.__dataclass_fields__)}")
    kwargs: dict[str, Any] = {k: data[k] for k in _SCALARS if k in data}
    parts: dict[str, Any] = {}
    for name, build in (("arms", lambda: arms_from_config(data.get("arms"))),
                        ("exploration", lambda: exploration_from_config(exploration)),
                        ("features", lambda: FeatureConfig.from_dict(features)),
                        ("store", lambda: StoreConfig(**{str(k): v for k, v in store.items()})),
                        ("learning", lambda: LearningConfig(**{str(k): v for k, v in learning.items()})),
                        ("conservative", lambda: ConservativeConfig.from_mapping(conservative))):
        try:
            parts[name] = build()
        except StopbanditError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            # a sub-builder that let a malformed value through: still a one-line ConfigError naming the section
            raise ConfigError(f"{source}: [{name}] is malformed: {type(exc).__name__}: {exc}") from exc
    try:
        return SelectorConfig(**parts, **kwargs)
    except StopbanditError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


SNAPSHOT_KEY_ENV = "STOPBANDIT_SNAPSHOT_KEY"


def snapshot_key() -> bytes | None:
    """The snapshot signing key from ``$STOPBANDIT_SNAPSHOT_KEY`` (None when unset or empty).

    With a key, every snapshot saved is signed (HMAC-SHA256) and every snapshot
    loaded must carry a valid signature; without one, signatures are not checked.
    """
    key = os.environ.get(SNAPSHOT_KEY_ENV)
    return key.encode("utf-8", "surrogateescape") if key else None


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The tables of a TOML config file; ConfigError naming the file when it is missing, unreadable or not TOML."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {os.fspath(path)!r} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {os.fspath(path)!r}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {os.fspath(path)!r} is not valid TOML: {exc}") from exc


def load_config(path: str | os.PathLike[str]) -> SelectorConfig:
    """Read and validate a TOML config file."""
    return config_from_mapping(read_toml(path), source=os.fspath(path))


__all__ = ["SNAPSHOT_KEY_ENV", "LearningConfig", "SelectorConfig", "StoreConfig", "config_from_mapping", "load_config",
           "read_toml", "snapshot_key"]
