"""The engine capability table: how each inference engine takes a per-request thinking budget.

One row per engine. Engines silently ignore request fields they do not know,
so a budget is only sent in the field the engine reads; an engine without one
(``native_budget`` False) runs budget arms with the gateway's two-call
fallback (:mod:`stopbandit.serve.budget`).

==============  ===============================================================  ============  ==========
engine          per-request budget fields (B = arm.max_think_tokens)              token prompt  tokenize
==============  ===============================================================  ============  ==========
``vllm``        ``thinking_token_budget: B`` (needs ``--reasoning-parser``)      yes           /tokenize
``sglang``      ``custom_params.thinking_budget: B`` (needs                      no            no
                ``--enable-strict-thinking``), ``chat_template_kwargs``
                ``{enable_thinking, thinking_budget}`` as the template's hint
``llamacpp``    ``thinking_budget_tokens: B``                                    yes           /tokenize
``openai``      ``reasoning_effort`` (low/medium/high by B) +                    no            no
                ``max_completion_tokens: B + answer allowance``
``stopbandit``  ``thinking_token_budget: B`` (what ``decoder/openai_request``    yes           /tokenize
                reads)
``llamacpp-     none: budget arms use the two-call fallback (the server          no            /extras/
python``        ignores ``thinking_budget_tokens``, which belongs to the C++                   tokenize
                ``llama-server``)
==============  ===============================================================  ============  ==========

``greedy``: fields every probe-driver call carries so that decoding is greedy and
the same in chunks as in one call (llama-cpp-python's ``repeat_penalty``
defaults to 1.1 and restarts its history with every request).

``token_prompt``: the engine accepts ``prompt`` as a list of token ids on
``/v1/completions`` and returns the generated ids when asked
(``return_ids_fields``), so the probe driver continues from exact token ids.
Elsewhere it cuts chunks where the text round-trips
(:mod:`stopbandit.serve.probe`).

Prefix caching keeps the probe driver's repeated prefixes cheap; it is on by
default in vLLM (``--enable-prefix-caching`` on older versions), SGLang (radix
cache) and llama.cpp's server (``cache_prompt``, per slot); our decoder server
reuses cached prefixes itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stopbandit.errors import ConfigError

#: Engine names accepted by ``--engine`` (``auto`` detects one from ``/v1/models``).
ENGINES = ("vllm", "sglang", "llamacpp", "llamacpp-python", "openai", "stopbandit")


def _vllm(budget: int, allowance: int, chat: bool) -> dict[str, Any]:
    return {"thinking_token_budget": budget}


def _sglang(budget: int, allowance: int, chat: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {"custom_params": {"thinking_budget": budget}}
    if chat:
        fields["chat_template_kwargs"] = {"enable_thinking": True, "thinking_budget": budget}
    return fields


def _llamacpp(budget: int, allowance: int, chat: bool) -> dict[str, Any]:
    return {"thinking_budget_tokens": budget}


def effort_for(budget: int) -> str:
    """OpenAI's ``reasoning_effort`` for a token budget (the API has no exact budget)."""
    if budget <= 1024:
        return "low"
    if budget <= 8192:
        return "medium"
    return "high"


def _openai(budget: int, allowance: int, chat: bool) -> dict[str, Any]:
    # max_completion_tokens counts reasoning and answer together
    return {"reasoning_effort": effort_for(budget), "max_completion_tokens": budget + allowance}


@dataclass(frozen=True, slots=True)
class Engine:
    """What the gateway knows about one engine (a row of the module's table)."""

    name: str
    budget_fields: Callable[[int, int, bool], dict[str, Any]] | None
    token_prompt: bool = False
    return_ids_fields: Mapping[str, Any] = field(default_factory=dict)
    tokenize_path: str | None = None
    greedy: Mapping[str, Any] = field(default_factory=dict)

    def tokenize_body(self, text: str, model: str, special: bool) -> dict[str, Any]:
        """The body of this engine's tokenize request for ``text``."""
        if self.name == "llamacpp":
            return {"content": text, "add_special": special}
        if self.name == "llamacpp-python":
            return {"model": model, "input": text}
        return {"model": model, "prompt": text, "add_special_tokens": special}

    @property
    def native_budget(self) -> bool:
        return self.budget_fields is not None

    def budget_request(self, budget: int, *, allowance: int, chat: bool) -> dict[str, Any]:
        """Request fields that make this engine cap thinking at ``budget`` tokens ({} when it cannot)."""
        if self.budget_fields is None:
            return {}
        return self.budget_fields(budget, allowance, chat)


TABLE: dict[str, Engine] = {
    "vllm": Engine("vllm", _vllm, token_prompt=True, return_ids_fields={"return_token_ids": True},
                   tokenize_path="/tokenize"),
    "sglang": Engine("sglang", _sglang),
    "llamacpp": Engine("llamacpp", _llamacpp, token_prompt=True, return_ids_fields={"return_tokens": True},
                       tokenize_path="/tokenize"),
    "llamacpp-python": Engine("llamacpp-python", None, tokenize_path="/extras/tokenize",
                              greedy={"repeat_penalty": 1.0}),
    "openai": Engine("openai", _openai),
    "stopbandit": Engine("stopbandit", _vllm, token_prompt=True, return_ids_fields={"return_token_ids": True},
                         tokenize_path="/tokenize"),
}


def engine(name: str) -> Engine:
    """The table row for ``name``; ConfigError lists the known engines."""
    try:
        return TABLE[name]
    except KeyError:
        raise ConfigError(f"unknown engine {name!r}; known engines: {list(ENGINES)} (or auto)") from None


def detect(models: Mapping[str, Any] | None, server_header: str | None = None) -> str:
    """Guess the engine from a ``GET /v1/models`` answer and the ``Server`` header.

    vLLM lists ``owned_by: "vllm"``, SGLang ``owned_by: "sglang"``, llama.cpp's
    server ``owned_by: "llamacpp"``, llama-cpp-python's ``owned_by: "me"``, our
    decoder server a ``stopbandit`` object per model. Anything else is treated
    as OpenAI's API (no token prompts, budget by effort).
    """
    owners: set[str] = set()
    if isinstance(models, Mapping) and isinstance(models.get("data"), list):
        for item in models["data"]:
            if isinstance(item, Mapping) and isinstance(item.get("stopbandit"), Mapping):
                return "stopbandit"
            if isinstance(item, Mapping) and isinstance(item.get("owned_by"), str):
                owners.add(item["owned_by"].lower())
    if "me" in owners:
        return "llamacpp-python"
    server = (server_header or "").lower()
    for name in ("vllm", "sglang", "llamacpp", "stopbandit"):
        if name in owners or name in server:
            return name
    if "llama" in server:
        return "llamacpp"
    return "openai"


__all__ = ["ENGINES", "TABLE", "Engine", "detect", "effort_for", "engine"]
