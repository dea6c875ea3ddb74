"""Token ids the decoder works with, resolved once from a tokenizer.

The decoder core never sees strings: the delimiter, the answer prefix, the
answer-end tokens and the probe markers are converted here, so that
tokenizer quirks (BOS insertion, multi-token delimiters, missing pad token)
are absorbed in one place and reported with the offending setting's name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from stopbandit.decoder.config import DecoderConfig
from stopbandit.errors import ConfigError


class TokenizerLike(Protocol):
    """What :meth:`TokenSpec.from_tokenizer` needs from a Hugging Face tokenizer."""

    eos_token_id: int | None
    pad_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class TokenSpec:
    """Token-level form of a :class:`DecoderConfig`.

    ``think_end``: delimiter ids appended to the reasoning to force an answer
    (one or more tokens). ``answer_prefix``: ids appended after it.
    ``answer_end``: single tokens that end an answer (EOS included).
    ``think_stop``: single tokens that end the reasoning without the delimiter
    (EOS): thinking stops there ("end") and the answer is forced as usual.
    ``markers``: id sequences after which a probe runs. ``pad_id`` fills the
    left padding (never attended to).
    """

    think_end: tuple[int, ...]
    answer_prefix: tuple[int, ...] = ()
    answer_end: frozenset[int] = frozenset()
    think_stop: frozenset[int] = frozenset()
    markers: tuple[tuple[int, ...], ...] = ()
    pad_id: int = 0

    def __post_init__(self) -> None:
        if not self.think_end:
            raise ConfigError("token spec think_end must hold at least one token id, got ()")
        for name in ("think_end", "answer_prefix"):
            ids = getattr(self, name)
            if not all(isinstance(i, int) and i >= 0 for i in ids):
                raise ConfigError(f"token spec {name} must be non-negative token ids, got {ids!r}")
        for marker in self.markers:
            if not marker:
                raise ConfigError("token spec markers must be non-empty id sequences, got an empty one")
        object.__setattr__(self, "answer_end", frozenset(self.answer_end))
        object.__setattr__(self, "think_stop", frozenset(self.think_stop))

    @property
    def probe_chunk(self) -> tuple[int, ...]:
        """What a probe (or a stop) appends to the reasoning: delimiter + answer prefix."""
        return self.think_end + self.answer_prefix

    @classmethod
    def from_tokenizer(cls, tokenizer: TokenizerLike, config: DecoderConfig) -> TokenSpec:
        """Resolve ``config``'s strings with ``tokenizer`` (no special tokens added around them)."""

        def ids(text: str) -> tuple[int, ...]:
            return tuple(int(i) for i in tokenizer.encode(text, add_special_tokens=False))

        think_end = ids(config.think_end)
        if not think_end:
            raise ConfigError(f"decoder think_end {config.think_end!r} encodes to no tokens with this tokenizer")
        answer_end: set[int] = set()
        for text in config.answer_end:
            enc = ids(text)
            if len(enc) != 1:
                raise ConfigError(
                    f"decoder answer_end entry {text!r} must encode to exactly one token, got {list(enc)}"
                )
            answer_end.add(enc[0])
        eos = _eos_ids(tokenizer)
        answer_end |= eos
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = min(eos) if eos else 0
        markers = tuple(m for m in (ids(text) for text in config.probe_markers) if m)
        return cls(
            think_end=think_end,
            answer_prefix=ids(config.answer_prefix) if config.answer_prefix else (),
            answer_end=frozenset(answer_end),
            think_stop=frozenset(eos),
            markers=markers,
            pad_id=int(pad),
        )


def _eos_ids(tokenizer: Any) -> set[int]:
    eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    if isinstance(eos, Sequence):
        return {int(e) for e in eos}
    return {int(eos)}


__all__ = ["TokenSpec", "TokenizerLike"]
