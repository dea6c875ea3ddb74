"""How often pure sampling noise alone takes a sliding-window mean out of a ±band.

The λ-control criteria (``benchmarks/lambda_control.py``) judge every sliding
2,000-request window. Even a stream whose mean sits exactly on the target
leaves the band sometimes: this prints that probability for a given window
standard error (``noise_sd_2000`` in ``lambda_control.py``'s output, 2.2–2.3 %
of B on the simulator's traffic), band and span of window ends, from
i.i.d. Gaussian outcomes (``--runs`` Monte Carlo runs). It is the yardstick
for "worst 2,000-window within 5,000 requests after the shift": a controller
whose misses are rarer than this is not the reason for them.

    python benchmarks/window_noise.py                        # s.e. 2.2 %, ±5 %, 5,000 window ends
    python benchmarks/window_noise.py --span 25000           # a whole 30,000-request run after warm-up
"""

from __future__ import annotations

import argparse

import numpy as np


def p_leave(se: float, band: float, window: int, span: int, runs: int, seed: int) -> float:
    """P(max over ``span`` consecutive sliding ``window``-means of |relative deviation| > band)."""
    rng = np.random.default_rng(seed)
    n = span + window - 1
    hits = 0
    for _ in range(runs):
        z = rng.standard_normal(n)
        means = np.convolve(z, np.ones(window), "valid") / np.sqrt(window) * se  # relative deviation, s.d. = se
        hits += bool(np.abs(means).max() > band)
    return hits / runs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--se", type=float, default=0.022, help="standard error of one window mean, relative (0.022)")
    ap.add_argument("--band", type=float, default=0.05, help="half-width of the band, relative (0.05)")
    ap.add_argument("--window", type=int, default=2000)
    ap.add_argument("--span", type=int, default=5000, help="number of consecutive window ends judged")
    ap.add_argument("--runs", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    p = p_leave(args.se, args.band, args.window, args.span, args.runs, args.seed)
    half = 1.96 * np.sqrt(p * (1 - p) / args.runs)
    print(f"window {args.window}, s.e. {args.se:.2%}, band ±{args.band:.0%}, {args.span} window ends: "
          f"P(leaves the band) = {p:.3f} ± {half:.3f} ({args.runs} runs)")


if __name__ == "__main__":
    main()
