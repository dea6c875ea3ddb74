"""Gateway settings: the upstream, the probe driver, limits and security, as one frozen object.

Read from the ``[gateway]`` table of the Selector's TOML file (the rest of the
file is the Selector's configuration) and overridden by ``stopbandit serve``
options. Every error names the field.

Probe defaults follow DEER (arXiv 2504.15895; iie-ycx/DEER ``vllm-deer.py``):
the trial answer is forced by appending ``think_end`` and ``\\n**Final
Answer**\\n\\boxed{``, decoded greedily for at most 20 tokens with logprobs,
up to ``}``; confidence is the mean max-probability of its tokens. A probe
every ``probe_every`` = 200 thinking tokens keeps probe tokens at most 10% of
the thinking tokens (20 / 200).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from stopbandit import validation
from stopbandit.config import SelectorConfig, config_from_mapping, read_toml
from stopbandit.errors import ConfigError
from stopbandit.serve.engines import ENGINES

MEANS = ("arithmetic", "geometric")


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """How the gateway talks to its upstream and runs arms there.

    ``upstream``: base URL of the engine (``/v1`` optional). ``engine``: a row of
    :mod:`stopbandit.serve.engines` or ``auto``. ``model``: the model name sent
    upstream when the request names none (``None``: the first of ``/v1/models``).
    ``think_start``: text the gateway appends to a completions prompt before the
    thinking (chat prompts get it from the engine's template). ``think_end`` closes
    the thinking; ``answer_suffix`` follows it in probes and the final answer;
    ``answer_stop`` ends a trial answer. ``probe_every``: thinking tokens per chunk
    (a probe after each); ``probe_markers``: also cut a chunk at these words (e.g.
    "Wait"). ``probe_tokens``: the most tokens of a trial answer, and of the answer of
    an arm the gateway runs itself (the answer is the trial answer at the stop).
    ``answer_tokens``: the room left for the answer when a budget goes to the engine
    (OpenAI's ``max_completion_tokens`` = budget + this) or a request's ``max_tokens``
    bounds the thinking. ``max_think_tokens``: thinking cap when the
    request and the arm set none. ``probe_all``: run the probe driver (and log its
    trace) for arms that never stop on confidence too, so their traces reveal every
    stricter arm. ``budget``: ``native`` (the engine's own budget field where it has
    one) or ``fallback`` (always the two-call fallback, e.g. for an engine that does
    not enforce its budget for the model). ``chunking``: ``auto`` (token ids where the engine takes them,
    else text cut where it round-trips), ``tokens`` or ``text``.
    ``shadow``: serve this arm to every request and log the policy's choice.
    """

    upstream: str = "http://127.0.0.1:8000"
    engine: str = "auto"
    model: str | None = None
    api_key: str | None = None
    upstream_api_key: str | None = None
    guard_completions: bool = True
    shadow: str | None = None
    think_start: str = ""
    think_end: str = "</think>"
    answer_suffix: str = "\n**Final Answer**\n\\boxed{"
    answer_stop: tuple[str, ...] = ("}",)
    probe_every: int = 200
    probe_markers: tuple[str, ...] = ()
    probe_tokens: int = 20
    answer_tokens: int = 64
    max_think_tokens: int = 4096
    confidence_mean: str = "arithmetic"
    probe_all: bool = False
    budget: str = "native"
    chunking: str = "auto"
    max_body_bytes: int = 1_048_576
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 300.0
    max_connections: int = 100
    ledger_size: int = 100_000
    domain_header: str = "x-stopbandit-domain"

    def __post_init__(self) -> None:
        if not isinstance(self.upstream, str) or not self.upstream.startswith(("http://", "https://")):
            raise ConfigError(f"gateway.upstream must be an http:// or https:// URL, got {self.upstream!r}")
        base = self.upstream.rstrip("/")
        object.__setattr__(self, "upstream", base[:-3] if base.endswith("/v1") else base)
        if self.engine not in ("auto", *ENGINES):
            raise ConfigError(f"gateway.engine must be one of {['auto', *ENGINES]}, got {self.engine!r}")
        for name in ("model", "api_key", "upstream_api_key", "shadow"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v):
                raise ConfigError(f"gateway.{name} must be a non-empty string or unset, got {v!r}")
        for name in ("think_start", "think_end", "answer_suffix", "domain_header"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"gateway.{name} must be a string, got {getattr(self, name)!r}")
        if not self.think_end:
            raise ConfigError("gateway.think_end must be a non-empty string (it closes the thinking), got ''")
        for name in ("answer_stop", "probe_markers"):
            v = getattr(self, name)
            if isinstance(v, str) or not all(isinstance(s, str) and s for s in v):
                raise ConfigError(f"gateway.{name} must be a list of non-empty strings, got {v!r}")
            object.__setattr__(self, name, tuple(v))
        validation.positive_ints("gateway.", **{name: getattr(self, name) for name in (
            "probe_every", "probe_tokens", "answer_tokens", "max_think_tokens", "max_body_bytes", "max_connections",
            "ledger_size")})
        for name in ("connect_timeout_s", "read_timeout_s"):
            validation.within(getattr(self, name), f"gateway.{name}", low=0, low_open=True,
                              expected="a positive number of seconds")
        if self.confidence_mean not in MEANS:
            raise ConfigError(f"gateway.confidence_mean must be one of {list(MEANS)}, got {self.confidence_mean!r}")
        if self.budget not in ("native", "fallback"):
            raise ConfigError(f"gateway.budget must be native or fallback, got {self.budget!r}")
        if self.chunking not in ("auto", "tokens", "text"):
            raise ConfigError(f"gateway.chunking must be auto, tokens or text, got {self.chunking!r}")
        for name in ("probe_all", "guard_completions"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"gateway.{name} must be true or false, got {getattr(self, name)!r}")

    def with_(self, **changes: Any) -> GatewayConfig:
        """A copy with the non-None ``changes`` applied (CLI options that were not given pass through)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown gateway setting(s) {unknown}; known: {sorted(known)}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "[gateway]") -> GatewayConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source} must be a table, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(map(str, data)) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; known: {sorted(known)}")
        values = dict(data)
        for key in ("answer_stop", "probe_markers"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)


def load(path: str | os.PathLike[str] | None) -> tuple[SelectorConfig, GatewayConfig]:
    """The Selector's and the gateway's settings from one TOML file (defaults without a file)."""
    if path is None:
        return SelectorConfig(), GatewayConfig()
    data = read_toml(path)
    gateway = data.pop("gateway", {})
    return config_from_mapping(data, source=str(path)), GatewayConfig.from_mapping(gateway, source=f"{path}: [gateway]")


__all__ = ["MEANS", "GatewayConfig", "load"]
