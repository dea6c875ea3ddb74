"""Shared fixtures: a character tokenizer and tiny random-weight causal LMs (no downloads)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from stopbandit.decoder.chartok import build_char_tokenizer  # noqa: E402
from stopbandit.decoder.tiny import tiny_causal_lm  # noqa: E402

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 +=;,"
PROMPTS = ["ab", "hello world", "x", "12+34=", "the cat", "qq", "zz top", "k"]


@pytest.fixture(scope="session", autouse=True)
def _single_thread() -> None:
    """Small models run fastest, and most reproducibly, on one thread."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    return build_char_tokenizer(ALPHABET)


@pytest.fixture(scope="session")
def llama(tokenizer):
    """Peaked random Llama: varied greedy paths and confidences spread over (0, 1)."""
    return tiny_causal_lm(len(tokenizer), arch="llama", seed=0, init_std=0.2)


@pytest.fixture(scope="session")
def gpt2(tokenizer):
    return tiny_causal_lm(len(tokenizer), arch="gpt2", seed=1, init_std=0.3)


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    return list(PROMPTS)
