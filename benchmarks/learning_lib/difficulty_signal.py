"""How well the difficulty features rank the simulator's latent difficulty (Spearman), per feature version.

    python -m benchmarks.learning_lib.difficulty_signal            # seeds 0 and 1, 20,000 requests each

Rows: the ``diff`` feature (the squashed estimate the bandit sees, and the
source of the ``dbin``/``dd`` cells), ``len`` and ``steps``, for feature
version 1 (before issue 9) and 2 (default), plus one ablation that is not a
product setting: version 1's weights with only its filler and domain words
dropped from the step-word list (what "drop the filler words" alone buys).
Also the share of requests per difficulty bucket (``dbin``). The version-2
weights were read off seed 0; seed 1 is the check.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from stopbandit.features.extract import FeatureConfig, FeatureExtractor  # noqa: E402
from stopbandit.features.text import STEP_WORDS_V1, text_stats  # noqa: E402
from stopbandit.sim import Simulator  # noqa: E402

FILLER_AND_DOMAIN = frozenset(
    "then after each every total remaining least most probability integral sum product".split()
)


def _v1_without_filler(prompt: str) -> float:
    """Version 1's estimate with its step-word list minus filler and domain words (ablation)."""
    s = text_stats(prompt, version=1)
    words = [w.strip(".,;:?!()\"'") for w in prompt.lower().split()]
    steps = sum(1 for w in words if w in STEP_WORDS_V1 and w not in FILLER_AND_DOMAIN)
    z = (s.log_tokens - math.log1p(60.0)) * 1.2 + 8.0 * s.digit_share + 6.0 * s.math_share + 0.25 * min(steps, 8)
    return 1.0 / (1.0 + math.exp(-z))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--requests", type=int, default=20000)
    args = ap.parse_args(argv)
    print("| simulator seed | feature set | Spearman diff | Spearman len | Spearman steps | share per dbin d0…d4 |")
    print("|---|---|---|---|---|---|")
    for seed in (int(s) for s in args.seeds.split(",")):
        reqs = Simulator(seed=seed).take(args.requests)
        truth = np.array([r.difficulty for r in reqs])
        for v in (1, 2):
            fx = FeatureExtractor(FeatureConfig(version=v))
            feats = [fx.extract(r.prompt, r.domain) for r in reqs]
            rho = {k: spearmanr([f[k] for f in feats], truth)[0] for k in ("diff", "len", "steps")}
            bins = np.bincount([int(str(f["dbin"])[1]) for f in feats], minlength=5) / len(feats)
            print(f"| {seed} | version {v} | {rho['diff']:.3f} | {rho['len']:.3f} | {rho['steps']:.3f} | "
                  + " / ".join(f"{b:.2f}" for b in bins) + " |")
        abl = spearmanr([_v1_without_filler(r.prompt) for r in reqs], truth)[0]
        print(f"| {seed} | version 1, filler and domain words dropped (ablation) | {abl:.3f} | – | – | – |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
