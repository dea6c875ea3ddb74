"""Decoder speed: tokens/s with stopping off vs ``model.generate``, and probe overhead at the default spacing.

Usage (repository root)::

    python benchmarks/decoder_speed.py                 # CPU or CUDA, whichever is present
    python benchmarks/decoder_speed.py --device cpu --threads 2 --repeats 5

A random-weight Llama (4 layers, 256 dims by default) decodes the same batch
three ways, each timed ``--repeats`` times after a warm-up (median reported):

1. ``model.generate(do_sample=False)`` for ``think + answer`` new tokens;
2. our decoder with stopping off (arm threshold > 1, no cap, no probes): the
   same number of generated tokens (``think`` reasoning tokens, a forced
   delimiter, ``answer`` answer tokens). Target: >= 0.9x generate's tokens/s;
3. our decoder with probes at the default every-N spacing, never stopping on
   them (the worst case: every probe is paid, none saves anything). Target:
   probe tokens <= 10% of generated tokens.

The delimiter is a token whose output-embedding row is zeroed, so the random
model never writes it and every row thinks exactly ``think`` tokens.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import torch

from stopbandit.bandit.arms import Arm
from stopbandit.decoder.config import DecoderConfig
from stopbandit.decoder.decoder import EarlyExitDecoder
from stopbandit.decoder.device import pick_device
from stopbandit.decoder.tiny import tiny_causal_lm
from stopbandit.decoder.tokens import TokenSpec


def _interleaved(fns: dict[str, object], repeats: int) -> tuple[dict[str, float], dict[str, object]]:
    """Median wall time of each function over ``repeats`` rounds, run in turn after one warm-up round.

    Interleaving keeps a slow spell of a shared machine from landing on one variant only.
    """
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    outputs = {name: fn() for name, fn in fns.items()}  # warm-up (kernel selection, allocator)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            outputs[name] = fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0 = torch default). 1 by default: a model this small gains little "
                             "from more, and on shared VMs multi-thread barriers make timings erratic")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--think", type=int, default=256)
    parser.add_argument("--answer", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = pick_device(args.device)
    model = tiny_causal_lm(args.vocab, arch="llama", layers=args.layers, dim=args.dim, heads=args.heads,
                           max_positions=4096, seed=args.seed).to(device)
    delimiter = args.vocab - 1
    with torch.no_grad():
        model.lm_head.weight[delimiter].zero_()  # never generated: every row thinks `think` tokens
    gen = torch.Generator().manual_seed(args.seed)
    lengths = torch.randint(args.prompt_len // 2, args.prompt_len + 1, (args.batch,), generator=gen).tolist()
    prompts = [torch.randint(2, args.vocab - 1, (n,), generator=gen).tolist() for n in lengths]
    width = max(lengths)
    ids = torch.zeros((args.batch, width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)

    new_tokens = args.think + args.answer
    spec = TokenSpec(think_end=(delimiter,), pad_id=0)
    off = EarlyExitDecoder(model, spec, DecoderConfig(probe_every=0, max_answer_tokens=args.answer, max_think_tokens=args.think))
    default_cfg = DecoderConfig(max_answer_tokens=args.answer, max_think_tokens=args.think)
    probing = EarlyExitDecoder(model, spec, default_cfg)
    never = [Arm("full", 1.01, 0)] * args.batch

    def run_generate():
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0)

    times, outputs = _interleaved(
        {"generate": run_generate, "off": lambda: off.run(prompts, never), "probes": lambda: probing.run(prompts, never)},
        args.repeats,
    )
    t_gen, t_off, t_probe = times["generate"], times["off"], times["probes"]
    gen_tokens = (outputs["generate"].shape[1] - width) * args.batch
    off_tokens = sum(r.total_tokens for r in outputs["off"])
    probe_tokens = sum(r.probe_tokens for r in outputs["probes"])
    generated = sum(r.total_tokens for r in outputs["probes"])

    tps_gen, tps_off, tps_probe = gen_tokens / t_gen, off_tokens / t_off, generated / t_probe
    ratio = tps_off / tps_gen
    overhead = probe_tokens / generated
    print("command:", shlex.join(["python", "benchmarks/decoder_speed.py", *(sys.argv[1:] if argv is None else argv)]))
    print(f"device: {device}  threads: {torch.get_num_threads()}  torch {torch.__version__}")
    print(f"model: random Llama, {args.layers} layers x {args.dim} dims, vocab {args.vocab}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params")
    print(f"batch {args.batch}, prompts {min(lengths)}-{max(lengths)} tokens, {args.think} thinking + {args.answer} answer tokens per row")
    print(f"generate            : {gen_tokens:6d} tokens in {t_gen:7.3f} s = {tps_gen:9.1f} tok/s")
    print(f"decoder stopping off: {off_tokens:6d} tokens in {t_off:7.3f} s = {tps_off:9.1f} tok/s")
    print(f"  ratio decoder/generate = {ratio:.3f}x  (target >= 0.9x: {'PASS' if ratio >= 0.9 else 'FAIL'})")
    print(f"decoder with probes (default every {default_cfg.probe_spacing} tokens, never stopping): "
          f"{generated} tokens in {t_probe:.3f} s = {tps_probe:.1f} tok/s")
    print(f"  probe overhead = {probe_tokens} / {generated} = {overhead:.1%}  (target <= 10%: {'PASS' if overhead <= 0.10 else 'FAIL'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
