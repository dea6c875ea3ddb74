"""Figures computed from trajectories: windows, oracle-gap fractions, requests-to-target, recovery.

Definitions (the doc quotes them):

* per-request reward ``r_t = EM_t − λ_t · tokens_t / 1000``;
* **gap closed** over requests ``[lo, hi)``, relative to a reference policy
  ``ref`` (always-full, or the best static arm in hindsight)::

      G = Σ (r_policy − r_ref) / Σ (r_oracle − r_ref)

  on the *same* requests (paired), so 0 = no better than the reference, 1 = the
  per-request hindsight oracle;
* **requests to a target** on a curve sampled at checkpoints: the first
  checkpoint from which the curve stays at or above the target up to the end
  (a single noisy crossing does not count);
* **recovery after an event** at request ``e``: with ``g(t)`` the mean regret
  against the per-request oracle, ``r_oracle − r_policy``, over the trailing
  ``window`` requests ending at ``t``, and ``g_ss`` its mean over the last
  ``steady`` requests of the phase, recovery is the first ``t − e`` (``t`` on a
  grid of ``step``, windows entirely after ``e``) with ``g(t) ≤ g_ss + x``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def trailing_mean(x: np.ndarray, window: int) -> np.ndarray:
    """``out[i]`` = mean of ``x[max(0, i+1-window) : i+1]``, shape (n,)."""
    c = np.concatenate(([0.0], np.cumsum(x, dtype=float)))
    hi = np.arange(1, len(x) + 1)
    lo = np.maximum(0, hi - window)
    return (c[hi] - c[lo]) / (hi - lo)


def gap_closed(policy: np.ndarray, ref: np.ndarray, top: np.ndarray, lo: int = 0, hi: int | None = None) -> float:
    """Σ(policy − ref) / Σ(top − ref) over [lo, hi) (paired per-request rewards)."""
    sl = slice(lo, hi)
    den = float(np.sum(top[sl] - ref[sl]))
    return float(np.sum(policy[sl] - ref[sl])) / den if den > 0 else math.nan


def first_sustained(at: Sequence[int], values: Sequence[float], level: float) -> int | None:
    """First checkpoint from which ``values`` stay >= ``level`` to the end; None if never."""
    vals = np.asarray(values, dtype=float)
    for j in range(len(vals)):
        if np.all(vals[j:] >= level):
            return int(at[j])
    return None


def recovery(regret: np.ndarray, event: int, phase_end: int, *, window: int = 1000, steady: int = 5000,
             x: float = 0.01, step: int = 250) -> tuple[int | None, float, float]:
    """(requests to recover or None, steady regret g_ss, dip) after an event at ``event``.

    ``regret``: per-request ``r_oracle − r_policy`` (averaged over seeds if
    wanted), shape (n,). ``dip``: mean regret over the first ``window``
    requests after the event minus ``g_ss``.
    """
    g = trailing_mean(regret, window)
    g_ss = float(np.mean(regret[max(event, phase_end - steady):phase_end]))
    dip = float(np.mean(regret[event:event + window])) - g_ss
    for t in range(event + window, phase_end + 1, step):
        if g[t - 1] <= g_ss + x:
            return t - event, g_ss, dip
    return None, g_ss, dip


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def fmt(values: Sequence[float], digits: int = 3, pct: bool = False) -> str:
    """``mean ± sd`` over seeds (sd with ddof=1); ``pct`` multiplies by 100."""
    m, s = mean_sd(values)
    if math.isnan(m):
        return "–"
    k = 100.0 if pct else 1.0
    return f"{m * k:.{digits}f} ± {s * k:.{digits}f}"


__all__ = ["first_sustained", "fmt", "gap_closed", "mean_sd", "recovery", "trailing_mean"]
