"""The benchmark's figures (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .analysis import FULL, CurveStats, Trajs  # noqa: E402
from .metrics import trailing_mean  # noqa: E402
from .streams import Stream  # noqa: E402

COLORS = {
    "plain": "tab:blue", "nested": "tab:red", "native": "tab:purple", "thompson": "tab:olive",
    "fullinfo": "black", "nested-graph": "tab:orange", "nested-lenient": "tab:pink", "nested-g20": "tab:brown",
    "plain-g20": "tab:cyan", "nested-graph-g20": "gold",
}


def learning_curve(path: Path, cs: CurveStats, streams: Mapping[int, Stream], trajs: Trajs, keys: Sequence[str],
                   labels: Mapping[str, str], *, lam: float, window: int) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    at = np.array(cs.at)
    for k in keys:
        frac = cs.oracle_gap(k)
        m = frac.mean(axis=0)
        ax1.plot(at, m, marker=".", color=COLORS.get(k), label=labels.get(k, k))
        if frac.shape[0] > 1:
            ax1.fill_between(at, frac.min(axis=0), frac.max(axis=0), color=COLORS.get(k), alpha=0.12)
    bs = ((cs.v_best_static - cs.v_full) / (cs.v_oracle - cs.v_full)).mean()
    ax1.axhline(bs, ls="--", color="gray", lw=1)
    ax1.text(at[0], bs, " best static arm", va="bottom", color="gray", fontsize=8)
    ax1.axhline(0.0, ls=":", color="gray", lw=1)
    ax1.text(at[0], 0.0, " always full", va="bottom", color="gray", fontsize=8)
    ax1.set_xscale("log")
    ax1.set_xlabel("requests learned from")
    ax1.set_ylabel("held-out value: fraction of oracle gap closed")
    ax1.set_title(f"Policy as served (exploration included), λ={lam:g}\n0 = always full, 1 = per-request oracle")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8, loc="lower right")

    seeds = list(streams)
    n = streams[seeds[0]].n
    x = np.arange(1, n + 1)
    for k in keys:
        fr = []
        for s in seeds:
            st = streams[s]
            r_all = st.rewards()
            num = trailing_mean(trajs[s][k].rewards(st) - r_all[:, FULL], window)
            den = trailing_mean(r_all.max(axis=1) - r_all[:, FULL], window)
            fr.append(num / den)
        ax2.plot(x[window - 1:], np.mean(fr, axis=0)[window - 1:], color=COLORS.get(k), lw=1,
                 label=labels.get(k, k))
    ax2.axhline(0.0, ls=":", color="gray", lw=1)
    ax2.set_xlabel("request")
    ax2.set_ylabel(f"online reward, trailing {window:,}: gap closed vs full")
    ax2.set_title("Realised reward while learning (seed mean)")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def drift(path: Path, streams: Mapping[int, Stream], trajs: Trajs, keys: Sequence[str], labels: Mapping[str, str],
          events: Sequence[tuple[int, str]], *, window: int) -> None:
    """Top: trailing reward. Bottom: trailing reward minus the best static arm of each phase (hindsight)."""
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    seeds = list(streams)
    n = streams[seeds[0]].n
    x = np.arange(1, n + 1)[window - 1:]

    def seed_mean(f) -> np.ndarray:
        return np.mean([trailing_mean(f(s), window) for s in seeds], axis=0)[window - 1:]

    best = seed_mean(lambda s: _best_static_now(streams[s]))
    ax.plot(x, seed_mean(lambda s: streams[s].rewards().max(axis=1)), color="green", lw=1.2,
            label="per-request oracle")
    ax.plot(x, best, color="gray", ls="--", lw=1, label="best static arm of each phase (hindsight)")
    ax2.axhline(0.0, color="gray", ls="--", lw=1)
    for k in keys:
        y = seed_mean(lambda s: trajs[s][k].rewards(streams[s]))
        ax.plot(x, y, color=COLORS.get(k), lw=1, label=labels.get(k, k))
        ax2.plot(x, y - best, color=COLORS.get(k), lw=1)
    for a in (ax, ax2):
        for at, _ in events:
            a.axvline(at, color="k", ls=":", lw=1)
        a.grid(alpha=0.3)
    for at, name in events:
        ax.text(at, ax.get_ylim()[1], f" {name}", va="top", fontsize=8)
    ax.set_ylabel(f"reward, trailing {window:,} (seed mean)")
    ax.set_title("Drift: domain mix and difficulty shift, then a λ change (set_lambda)")
    ax.legend(fontsize=8, loc="lower left")
    ax2.set_ylabel("reward − best static of the phase")
    ax2.set_xlabel("request")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _best_static_now(stream: Stream) -> np.ndarray:
    """Per request, the reward of the static arm that is best over its drift phase (hindsight)."""
    return stream.rewards()[np.arange(stream.n), stream.best_static_per_phase()]


__all__ = ["drift", "learning_curve"]
