"""Train the testbed model: a small char-level Llama on the synthetic reasoning tasks (CPU, a few minutes).

Usage (repository root)::

    python -m benchmarks.testbed.train                      # -> benchmarks/testbed/out/model
    python -m benchmarks.testbed.train --steps 300 --out /tmp/tb   # quick smoke run

Defaults: Llama 4 layers x 128 dims (~1.06M parameters), 900 steps of 64
sequences, seeded: about 0.27 s a step on 2 idle CPU cores, ~4.3 minutes in
all. On a busy machine it takes longer; ``--time-limit S`` stops early
(less trained model) instead.

Each training sequence is ``prompt <think> reasoning </think> answer <eos>``.
With probability ``--truncate`` the reasoning is cut at a random character
and the (correct) answer follows right away: the model learns to answer from
a partial reasoning, which it can do reliably only when little reasoning is
left to do (easy items). The ``</think>`` of a truncated sequence carries no
loss, so the model never learns to stop thinking early on its own; prompt
tokens carry none either (they are random).

The decoder settings the model was trained for (delimiters, answer length,
probe spacing) are saved next to it, so ``HFDecoder.from_pretrained`` and
``stopbandit decode --model`` pick them up.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import torch

from benchmarks.testbed.tasks import ALPHABET, Item, sample_items
from stopbandit.decoder.chartok import build_char_tokenizer
from stopbandit.decoder.config import DecoderConfig
from stopbandit.decoder.tiny import tiny_causal_lm

DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "model"
THINK, END_THINK = "<think>", "</think>"
#: Decoder settings saved with the model. Probes every 8 characters = every two steps of the 4-char domains.
DECODER = DecoderConfig(
    think_start=THINK,
    think_end=END_THINK,
    probe_every=8,
    max_answer_tokens=6,
    max_think_tokens=64,
    add_special_tokens=False,
    batch_size=64,
)



def require_trained(parser: argparse.ArgumentParser, paths: list[Path]) -> None:
    """Stop with one usage line when a ``--models`` path holds no trained model (before any work starts)."""
    for path in paths:
        if not (path / "config.json").is_file():
            parser.error(f"no trained model in {path}; run `python -m benchmarks.testbed.train --out {path}` first")

def encode_example(tokenizer, item: Item, cut: int | None) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one sequence; ``cut`` truncates the reasoning at that character."""
    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    think, end = tokenizer.convert_tokens_to_ids([THINK, END_THINK])
    prompt = enc(item.prompt) + [think]
    reasoning = enc(item.reasoning if cut is None else item.reasoning[:cut])
    answer = enc(item.answer) + [tokenizer.eos_token_id]
    ids = prompt + reasoning + [end] + answer
    labels = [-100] * len(prompt) + reasoning + [end if cut is None else -100] + answer
    return ids, labels


def batches(tokenizer, batch_size: int, truncate: float, seed: int):
    """Endless stream of padded (ids, labels, mask) batches; reproducible from ``seed``."""
    rng = random.Random(seed)
    round_ = 0
    while True:
        items = sample_items(batch_size, seed=seed * 1_000_003 + round_)
        round_ += 1
        rows = []
        for item in items:
            cut = rng.randrange(len(item.reasoning)) if rng.random() < truncate else None
            rows.append(encode_example(tokenizer, item, cut))
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((batch_size, width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for i, (x, y) in enumerate(rows):
            ids[i, : len(x)] = torch.tensor(x)
            labels[i, : len(y)] = torch.tensor(y)
            mask[i, : len(x)] = 1
        yield ids, labels, mask


def train(
    out: Path,
    steps: int,
    batch_size: int,
    lr: float,
    truncate: float,
    seed: int,
    threads: int,
    layers: int = 4,
    dim: int = 128,
    time_limit: float = 0.0,
) -> Path:
    """Train and save; stops early (with a warning) once ``time_limit`` seconds have passed, when > 0."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tokenizer = build_char_tokenizer(ALPHABET)
    model = tiny_causal_lm(len(tokenizer), arch="llama", layers=layers, dim=dim, heads=4, max_positions=128, seed=seed,
                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))),
    )
    stream = batches(tokenizer, batch_size, truncate, seed)
    start, cpu_start, smooth = time.perf_counter(), time.process_time(), None
    for step in range(1, steps + 1):
        ids, labels, mask = next(stream)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
        elapsed = time.perf_counter() - start
        if step % 100 == 0 or step == steps:
            print(f"step {step:5d}/{steps}  loss {smooth:.4f}  {elapsed:6.1f} s wall  "
                  f"{time.process_time() - cpu_start:6.1f} s cpu", flush=True)
        if time_limit and elapsed > time_limit and step < steps:
            print(f"WARNING: time limit {time_limit:.0f} s reached at step {step}/{steps}; saving a less trained model")
            break
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    DECODER.save(out)
    print(f"saved model, tokenizer and decoder settings to {out} ({time.perf_counter() - start:.0f} s)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the synthetic-reasoning testbed model on CPU.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--truncate", type=float, default=0.4, help="share of sequences with a truncated reasoning")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--time-limit", type=float, default=0.0,
                        help="stop training early after this many seconds (0 = never: the run stays deterministic)")
    args = parser.parse_args(argv)
    train(args.out, args.steps, args.batch_size, args.lr, args.truncate, args.seed, args.threads,
          layers=args.layers, dim=args.dim, time_limit=args.time_limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
