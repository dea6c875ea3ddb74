"""Small random-weight causal LMs built from a config (tests, benchmarks, the testbed).

Nothing is downloaded: the architecture comes from a ``transformers`` config
and the weights from ``torch.manual_seed(seed)``, so the same call always
builds the same model.
"""

from __future__ import annotations

from typing import Any

import torch

from stopbandit.errors import ConfigError

ARCHITECTURES = ("gpt2", "llama")


def tiny_causal_lm(
    vocab_size: int,
    *,
    arch: str = "gpt2",
    layers: int = 2,
    dim: int = 64,
    heads: int = 2,
    max_positions: int = 1024,
    seed: int = 0,
    pad_token_id: int = 0,
    eos_token_id: int = 1,
    init_std: float = 0.02,
) -> Any:
    """A freshly initialised ``GPT2LMHeadModel`` or ``LlamaForCausalLM`` in eval mode (float32, CPU).

    ``init_std`` is the config's ``initializer_range``: the 0.02 default gives
    near-uniform next-token distributions; ~0.2 gives a random model with
    peaked, varied predictions (useful to exercise confidence thresholds).
    """
    import transformers

    if arch not in ARCHITECTURES:
        raise ConfigError(f"arch must be one of {list(ARCHITECTURES)}, got {arch!r}")
    if dim % heads:
        raise ConfigError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
    common = {
        "vocab_size": vocab_size,
        "pad_token_id": pad_token_id,
        "eos_token_id": eos_token_id,
        "bos_token_id": eos_token_id,
        "initializer_range": init_std,
    }
    if arch == "gpt2":
        config = transformers.GPT2Config(
            n_layer=layers, n_embd=dim, n_head=heads, n_positions=max_positions, **common
        )
        model_cls = transformers.GPT2LMHeadModel
    else:
        config = transformers.LlamaConfig(
            num_hidden_layers=layers,
            hidden_size=dim,
            intermediate_size=dim * 4,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=max_positions,
            tie_word_embeddings=False,
            **common,
        )
        model_cls = transformers.LlamaForCausalLM
    torch.manual_seed(seed)
    model = model_cls(config)
    model.eval()
    return model


__all__ = ["ARCHITECTURES", "tiny_causal_lm"]
