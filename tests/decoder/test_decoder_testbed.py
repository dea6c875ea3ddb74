"""The testbed's tasks and its ``run_items`` hook (with an untrained model: plumbing, not accuracy)."""

from __future__ import annotations

import random

import pytest

tasks = pytest.importorskip("benchmarks.testbed.tasks", reason="run from the repository root")
run_arms = pytest.importorskip("benchmarks.testbed.run_arms", reason="run from the repository root")

from stopbandit.bandit.arms import Arm  # noqa: E402
from stopbandit.decoder.chartok import build_char_tokenizer  # noqa: E402
from stopbandit.decoder.config import DecoderConfig  # noqa: E402
from stopbandit.decoder.hf import HFDecoder  # noqa: E402
from stopbandit.decoder.tiny import tiny_causal_lm  # noqa: E402


@pytest.mark.parametrize("domain", tasks.DOMAINS)
def test_reasoning_steps_reach_the_answer(domain):
    rng = random.Random(3)
    for difficulty in range(1, tasks.MAX_DIFFICULTY[domain] + 1):
        item = tasks.make_item(domain, difficulty, rng)
        steps = item.reasoning.split()
        assert len(steps) == difficulty
        payload = item.prompt.split(":", 1)[1]
        if domain == "add":
            a, b = payload.split("+")
            expected = int(a[::-1]) + int(b[::-1])
            assert item.answer[::-1].lstrip("0") == str(expected).lstrip("0") or expected == 0
        elif domain == "sum":
            assert item.answer == str(sum(map(int, payload)) % 10)
        elif domain == "cnt":
            assert item.answer == str(payload.count("a"))
        else:
            assert item.answer == max(payload)
        assert set(item.prompt + item.reasoning + item.answer) <= set(tasks.ALPHABET)


def test_levels_cover_the_difficulty_range():
    items = tasks.sample_items(300, seed=1)
    assert {i.level for i in items} == {"easy", "medium", "hard"}
    assert tasks.sample_items(5, seed=2) == tasks.sample_items(5, seed=2)


def test_run_items_returns_em_tokens_trace():
    tokenizer = build_char_tokenizer(tasks.ALPHABET)
    model = tiny_causal_lm(len(tokenizer), arch="llama", seed=0, init_std=0.2)
    config = DecoderConfig(think_start="<think>", probe_every=4, max_answer_tokens=3, max_think_tokens=8,
                           add_special_tokens=False)
    decoder = HFDecoder(model, tokenizer, config, device="cpu")
    items = tasks.sample_items(4, seed=5)
    arms = [Arm("full", 1.01), Arm("cap4", 1.01, 4), Arm("t", 0.3), Arm("full", 1.01)]
    out = run_arms.run_items(decoder, items, arms)
    assert len(out) == 4
    for (em, tokens, trace), arm in zip(out, arms):
        assert em in (0.0, 1.0)
        assert tokens == trace.total_tokens
        assert trace.stop_offset <= min(arm.cap, 8)
    with pytest.raises(ValueError, match="one arm per item"):
        run_arms.run_items(decoder, items, arms[:2])
