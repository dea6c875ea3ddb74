"""A character-level Hugging Face tokenizer built in memory (no hub, no files needed).

Tests, benchmarks and the synthetic testbed need a real ``PreTrainedTokenizerFast``
(``encode``/``decode``/``save_pretrained``/``AutoTokenizer.from_pretrained``)
without downloading anything. Every character of ``alphabet`` is one token;
``specials`` (pad, eos, think delimiters, ...) are whole tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stopbandit.errors import ConfigError

DEFAULT_SPECIALS = ("<pad>", "<eos>", "<unk>", "<think>", "</think>")


def build_char_tokenizer(alphabet: str, specials: Sequence[str] = DEFAULT_SPECIALS) -> Any:
    """Tokenizer with ids ``0..len(specials)-1`` for ``specials`` then one id per distinct character.

    ``specials`` must start with pad, eos and unk, in that order.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if len(specials) < 3:
        raise ConfigError(f"specials must start with pad, eos and unk tokens, got {list(specials)}")
    chars = list(dict.fromkeys(alphabet))
    if not chars:
        raise ConfigError("alphabet must hold at least one character, got ''")
    clash = sorted(set(chars) & set(specials))
    if clash:
        raise ConfigError(f"alphabet characters {clash} collide with special tokens")
    vocab = {tok: i for i, tok in enumerate([*specials, *chars])}
    pad, eos, unk, *extra = specials
    core = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=pad,
        eos_token=eos,
        unk_token=unk,
        additional_special_tokens=list(extra),
        clean_up_tokenization_spaces=False,
    )
    tokenizer.padding_side = "left"
    return tokenizer


__all__ = ["DEFAULT_SPECIALS", "build_char_tokenizer"]
