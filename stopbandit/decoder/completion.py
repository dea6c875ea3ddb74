"""Plain greedy continuation of token ids, with log-probabilities and prefix reuse.

This is what an inference engine does for ``/v1/completions``: no arm, no
probes -- the caller (the gateway) drives early exit. Every position's keys
and values are computed by a one-token forward step, whether the token came
from a prompt or was generated: a block prefill computes the same numbers
only up to float rounding (about 1e-6 here), which can flip a greedy
near-tie. With one-token steps everywhere, what the cache holds for a
position depends only on the tokens before it, so decoding in chunks (each
call continuing from the previous tokens), with probes in between, gives
exactly the tokens of one call, whatever earlier requests left in the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from stopbandit.decoder.kv import cache_keyword, crop, new_cache
from stopbandit.decoder.prefix_cache import PrefixCache
from stopbandit.errors import InputError

#: Called with the ids generated so far; returns True to stop after the last one.
StopCheck = Callable[[Sequence[int]], bool]


@dataclass(frozen=True, slots=True)
class Continuation:
    """What one call generated.

    ``ids[i]`` was chosen greedily with log-probability ``logprobs[i]``;
    ``top[i]`` holds the ``top_logprobs`` most likely ``(id, logprob)`` pairs
    at that step, best first. ``finish_reason``: ``"stop"`` (an end-of-text
    token or the stop check) or ``"length"`` (``max_tokens`` reached).
    ``cached_tokens``: leading prompt tokens whose keys/values came from the cache.
    """

    prompt_ids: tuple[int, ...]
    ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    top: tuple[tuple[tuple[int, float], ...], ...]
    finish_reason: str
    cached_tokens: int


class GreedyCompleter:
    """Greedy decoding of one sequence at a time over a :class:`PrefixCache`.

    ``model``: a Hugging Face causal LM (eval mode). ``end_ids``: tokens that
    end the text (EOS); they are generated, counted and returned like any other.
    ``max_positions``: the model's context length (from its config when None).
    """

    def __init__(self, model: Any, end_ids: Sequence[int], *, max_entries: int = 16, max_positions: int | None = None) -> None:
        self.model = model
        self.end_ids = frozenset(int(i) for i in end_ids)
        self.cache = PrefixCache(lambda: new_cache(model), crop, max_entries)
        config = model.config
        self.max_positions = max_positions or getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.vocab_size = int(config.vocab_size)
        self._cache_kw = cache_keyword(model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check(self, prompt_ids: Sequence[int], max_tokens: int) -> None:
        """:class:`InputError` when the request cannot run (bad ids, context too long)."""
        if not prompt_ids:
            raise InputError("prompt encodes to no tokens; at least one is needed")
        bad = [t for t in prompt_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise InputError(f"prompt token ids must be in [0, {self.vocab_size}), got {bad[:5]}")
        if self.max_positions and len(prompt_ids) + max_tokens > self.max_positions:
            raise InputError(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's context of {self.max_positions}"
            )

    def complete(
        self,
        prompt_ids: Sequence[int],
        max_tokens: int,
        *,
        top_logprobs: int = 0,
        stop: StopCheck | None = None,
        on_token: Callable[[int, float], None] | None = None,
    ) -> Continuation:
        """Up to ``max_tokens`` greedy tokens after ``prompt_ids``; ``on_token(id, logprob)`` sees each as it comes."""
        prompt = [int(t) for t in prompt_ids]
        self.check(prompt, max_tokens)
        entry, reused = self.cache.take(prompt)
        ids: list[int] = []
        logprobs: list[float] = []
        top: list[tuple[tuple[int, float], ...]] = []
        finish = "length"
        try:
            with torch.inference_mode():
                logits = None
                for token in prompt[reused:]:
                    logits = self._step(entry, token)
                for n in range(max_tokens):
                    scores = torch.log_softmax(logits.float(), dim=-1)
                    token = int(scores.argmax())
                    ids.append(token)
                    logprobs.append(float(scores[token]))
                    if top_logprobs:
                        values, index = scores.topk(min(top_logprobs, self.vocab_size))
                        top.append(tuple(zip(index.tolist(), values.tolist())))
                    else:
                        top.append(())
                    if on_token is not None:
                        on_token(token, logprobs[-1])
                    stopped = stop is not None and stop(ids)  # sees every token, an end-of-text one included
                    if stopped or token in self.end_ids:
                        finish = "stop"
                        break
                    if n + 1 < max_tokens:  # the last token is not fed: nothing needs its logits yet
                        logits = self._step(entry, token)
        except BaseException:
            self.cache.discard(entry)  # its KV may hold a position its ids do not
            raise
        return Continuation(tuple(prompt), tuple(ids), tuple(logprobs), tuple(top), finish, reused)

    def _step(self, entry: Any, token: int) -> torch.Tensor:
        """Feed one token at the next position of ``entry``; logits for the position after it."""
        dev = self.device
        position = len(entry.ids)
        out = self.model(
            input_ids=torch.tensor([[token]], dtype=torch.long, device=dev),
            position_ids=torch.tensor([[position]], dtype=torch.long, device=dev),
            use_cache=True,
            **{self._cache_kw: entry.kv},
        )
        entry.ids.append(token)
        return out.logits[0, -1]


__all__ = ["Continuation", "GreedyCompleter", "StopCheck"]
