"""With stopping off, the decoder emits exactly the tokens of ``model.generate(do_sample=False)``.

A random model never writes ``</think>`` on its own, so the test picks, from an
unconstrained greedy run, a token that the model does emit (the think-end
delimiter) and one that follows it (the answer end / EOS) such that the end
token never occurs inside the reasoning. Then ``think_ids + [delimiter] +
answer_ids`` must be a prefix of what ``generate`` produced, ending where
``generate`` ended; rows that never close their reasoning must match
``generate`` up to the global cap.
"""

from __future__ import annotations

import pytest

from stopbandit.bandit.arms import Arm
from stopbandit.decoder.config import DecoderConfig
from stopbandit.decoder.decoder import EarlyExitDecoder
from stopbandit.decoder.tokens import TokenSpec

CAP = 24
ANSWER = 8
FIRST_FREE_ID = 5  # ids below are the tokenizer's specials


def _pick_delimiters(free: list[list[int]], vocab: int) -> tuple[int, int]:
    """(delimiter, end) maximising rows that close their reasoning and then end their answer."""
    best: tuple[int, int, int] | None = None
    for d in range(FIRST_FREE_ID, vocab):
        firsts = [row.index(d) if d in row[: CAP + 1] else None for row in free]
        for e in range(FIRST_FREE_ID, vocab):
            if e == d:
                continue
            score, valid = 0, True
            for row, first in zip(free, firsts):
                thinking = row[:first] if first is not None else row[:CAP]
                if e in thinking:
                    valid = False
                    break
                if first is not None:
                    score += 1 + (e in row[first + 1 : first + 1 + ANSWER])
            if valid and (best is None or score > best[0]):
                best = (score, d, e)
    assert best is not None and best[0] >= 4, "seeded model should close its reasoning on several rows"
    return best[1], best[2]


@pytest.mark.parametrize("model_name", ["llama", "gpt2"])
def test_stopping_off_matches_generate(model_name, request, tokenizer, prompts):
    model = request.getfixturevalue(model_name)
    enc = tokenizer(prompts, padding=True, return_tensors="pt")
    width = enc.input_ids.shape[1]
    free = model.generate(**enc, do_sample=False, max_new_tokens=CAP + 1 + ANSWER, eos_token_id=None, pad_token_id=0)
    delimiter, end = _pick_delimiters(free[:, width:].tolist(), len(tokenizer))

    spec = TokenSpec(think_end=(delimiter,), answer_end=frozenset({end}), pad_id=tokenizer.pad_token_id)
    config = DecoderConfig(probe_every=0, max_answer_tokens=ANSWER, max_think_tokens=CAP)
    decoder = EarlyExitDecoder(model, spec, config)
    never = Arm("full", 1.01, 0)
    results = decoder.run([tokenizer.encode(p) for p in prompts], [never] * len(prompts))
    generated = model.generate(
        **enc, do_sample=False, max_new_tokens=CAP + 1 + ANSWER, eos_token_id=end, pad_token_id=0
    )[:, width:].tolist()

    ended = 0
    for result, row in zip(results, generated):
        assert result.probe_tokens == 0 and not result.trace.probes
        if result.stop_reason == "end":
            ended += 1
            ours = [*result.think_ids, delimiter, *result.answer_ids]
            assert row[: len(ours)] == ours
            if result.answer_complete:  # generate stopped at the same end token
                assert all(t == 0 for t in row[len(ours) :])
        else:
            assert result.stop_reason == "budget" and result.think_tokens == CAP
            assert row[:CAP] == list(result.think_ids)
        assert result.total_tokens == result.trace.total_tokens
    assert ended >= 4

