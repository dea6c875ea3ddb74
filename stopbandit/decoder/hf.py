"""Hugging Face adapter: any causal LM + its tokenizer, text in, :class:`DecodeResult` out.

It owns the text side (prompt formatting with ``think_start``, tokenization,
answer detokenization), batching by ``config.batch_size``, device placement
and loading from a local directory; the token-level work is
:class:`stopbandit.decoder.decoder.EarlyExitDecoder`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from stopbandit.bandit.arms import Arm
from stopbandit.bandit.learned_stop import LearnedInputs
from stopbandit.decoder.config import DecoderConfig
from stopbandit.decoder.decoder import EarlyExitDecoder
from stopbandit.decoder.device import pick_device
from stopbandit.decoder.result import DecodeResult
from stopbandit.decoder.tokens import TokenSpec
from stopbandit.errors import ConfigError, InputError


class HFDecoder:
    """Early-exit decoding for a ``transformers`` causal LM.

    >>> # dec = HFDecoder.from_pretrained("out/testbed-model")
    >>> # dec.run(["add 12+9"], Arm("balanced", 0.9))[0].answer
    """

    def __init__(self, model: Any, tokenizer: Any, config: DecoderConfig | None = None, device: str | None = None) -> None:
        self.config = config or DecoderConfig()
        self.tokenizer = tokenizer
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.spec = TokenSpec.from_tokenizer(tokenizer, self.config)
        self.core = EarlyExitDecoder(self.model, self.spec, self.config, detokenize=self._decode)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, config: DecoderConfig | None = None, device: str | None = None, **overrides: Any
    ) -> HFDecoder:
        """Load model and tokenizer from a local directory (never the network).

        Settings: ``config`` if given, else the directory's ``stopbandit-decoder.json``,
        else defaults; ``overrides`` (non-None values) are applied on top.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        directory = Path(path)
        if not directory.is_dir():
            raise ConfigError(f"model path must be a local directory, got {str(path)!r}")
        base = config or DecoderConfig.load(directory) or DecoderConfig()
        base = base.replace(**overrides) if overrides else base
        if not (directory / "config.json").is_file():
            raise ConfigError(f"{str(path)!r} is not a model directory: it has no config.json "
                              f"(save one with model.save_pretrained and tokenizer.save_pretrained)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:  # transformers' errors for unreadable or foreign files
            message = " ".join(str(exc).split())[:300]
            raise ConfigError(f"cannot load a model and tokenizer from {str(path)!r}: {message}") from None
        return cls(model, tokenizer, base, device=device)

    def encode(self, prompt: str) -> list[int]:
        """Token ids of ``prompt + think_start`` (the reasoning starts right after)."""
        if not isinstance(prompt, str):
            raise InputError(f"prompt must be a string, got {type(prompt).__name__}")
        text = prompt + self.config.think_start
        ids = list(self.tokenizer.encode(text, add_special_tokens=self.config.add_special_tokens))
        if not ids:
            raise InputError(f"prompt {prompt[:40]!r} encodes to no tokens")
        return ids

    def run(self, prompts: Sequence[str], arms: Arm | Sequence[Arm],
            learned: LearnedInputs | None = None) -> list[DecodeResult]:
        """Decode ``prompts`` (one arm for all, or one per prompt), in batches of ``config.batch_size``.

        ``learned``: the learned stop rule, λ and one context row per prompt, when an arm has a learned rule.
        """
        if isinstance(prompts, str):
            raise InputError("prompts must be a list of strings, got a single string")
        return self.run_ids([self.encode(p) for p in prompts], arms, learned)

    def run_ids(self, prompt_ids: Sequence[Sequence[int]], arms: Arm | Sequence[Arm],
                learned: LearnedInputs | None = None) -> list[DecodeResult]:
        """Like :meth:`run` for already tokenized prompts."""
        per_row = [arms] * len(prompt_ids) if isinstance(arms, Arm) else list(arms)
        if len(per_row) != len(prompt_ids):
            raise InputError(f"arms must give one arm per prompt: got {len(per_row)} arms for {len(prompt_ids)} prompts")
        size = self.config.batch_size
        out: list[DecodeResult] = []
        for start in range(0, len(prompt_ids), size):
            part = None if learned is None else replace(learned, context=learned.context[start : start + size])
            out.extend(self.core.run(prompt_ids[start : start + size], per_row[start : start + size], part))
        return out

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


__all__ = ["HFDecoder"]
