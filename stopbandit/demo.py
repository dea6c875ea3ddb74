"""`stopbandit demo`: simulated LLM traffic through a real Selector and a real SQLite store.

Every request of a calibrated simulator (:mod:`stopbandit.sim`) goes through
``Selector.choose``; the simulator runs the chosen arm and the outcome goes
back through ``Selector.reward`` (with its probe trace, so every stricter arm
the trace reveals is learned too). Because the simulator can run every arm on
every request, the verdict compares the learned policy with always-full, each
static arm, the best static arm in hindsight and the per-request oracle on
exactly the same requests.
"""

from __future__ import annotations

import importlib.util

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stopbandit.bandit.arms import ArmSet
from stopbandit.serving.selector import Selector
from stopbandit.sim import Simulator, outcome_table, run


@dataclass(frozen=True)
class PolicyFigures:
    name: str
    em: float
    tokens: float
    savings: float  # share of full reasoning's tokens saved
    reward: float


@dataclass(frozen=True)
class DemoResult:
    url: str
    requests: int
    lam: float
    token_scale: float
    rows: list[PolicyFigures]
    snapshot: str
    plot: Path | None
    elapsed_s: float
    decisions_logged: int
    outcomes_logged: int


def _figures(name: str, em: np.ndarray, tokens: np.ndarray, full_tokens: float, lam: float,
             scale: float) -> PolicyFigures:
    m_em, m_tok = float(em.mean()), float(tokens.mean())
    return PolicyFigures(name, m_em, m_tok, 1.0 - m_tok / full_tokens, m_em - lam * m_tok / scale)


def run_demo(
    url: str,
    *,
    requests: int = 20_000,
    lam: float = 0.2,
    token_scale: float = 1000.0,
    seed: int = 0,
    traces: bool = True,
    plot: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> DemoResult:
    """Run the demo; ``progress(n)`` is called with the number of requests done so far."""
    t0 = time.perf_counter()
    sel = Selector.open(url, lam=lam, token_scale=token_scale, seed=seed, snapshot=None, follow=False)
    arms: ArmSet = sel.arms
    if sel.lam != lam:  # the store carries an older λ: the demo states its own on purpose
        sel.set_lambda(lam, reason="stopbandit demo")
    sim = Simulator(seed=seed)
    run_id = uuid.uuid4().hex[:8]
    reqs = sim.take(requests)
    table = outcome_table(reqs, arms.arms)  # every arm on every request: (n, K)
    chosen_em = np.empty(requests)
    chosen_tokens = np.empty(requests)
    for i, req in enumerate(reqs):
        d = sel.choose(req.prompt, domain=req.domain, request_id=f"demo-{run_id}-{i}")
        out = run(req, d.arm)
        if traces:
            sel.reward(d.decision_id, em=out.em, tokens=out.tokens, trace=out.trace, reference=req.reference)
        else:
            sel.reward(d.decision_id, em=out.em, tokens=out.tokens)
        chosen_em[i], chosen_tokens[i] = out.em, out.tokens
        if progress is not None and (i + 1) % 250 == 0:
            progress(i + 1)
    if progress is not None:
        progress(requests)
    version = sel.snapshot()
    sel.flush(120)
    counts = sel.store.counts()
    sel.close()

    full = arms.most_conservative()
    full_tokens = float(table.tokens[:, full].mean())
    rewards = table.em - lam * table.tokens / token_scale  # (n, K)
    rows = [_figures("stopbandit (learned, all requests)", chosen_em, chosen_tokens, full_tokens, lam, token_scale)]
    tail = slice(requests // 2, None)
    rows.append(_figures("stopbandit (learned, second half)", chosen_em[tail], chosen_tokens[tail], full_tokens,
                         lam, token_scale))
    for k, arm in enumerate(arms.arms):
        rows.append(_figures(f"static: {arm.name}", table.em[:, k], table.tokens[:, k].astype(float), full_tokens,
                             lam, token_scale))
    best = int(np.argmax(rewards.mean(axis=0)))
    rows.append(_figures(f"best static in hindsight ({arms[best].name})", table.em[:, best],
                         table.tokens[:, best].astype(float), full_tokens, lam, token_scale))
    pick = rewards.argmax(axis=1)
    idx = np.arange(requests)
    rows.append(_figures("per-request oracle (ceiling)", table.em[idx, pick], table.tokens[idx, pick].astype(float),
                         full_tokens, lam, token_scale))
    chosen_reward = chosen_em - lam * chosen_tokens / token_scale
    if plot is not None:
        if importlib.util.find_spec("matplotlib") is None:  # the optional ``plots`` extra
            plot = None  # the demo runs without it; the CLI says how to get the learning curve
        else:
            _plot_curve(plot, chosen_reward, rewards, pick, arms, best, full)
    return DemoResult(url, requests, lam, token_scale, rows, version, plot, time.perf_counter() - t0,
                      counts["decisions"], counts["outcomes"])


def _plot_curve(path: Path, chosen: np.ndarray, rewards: np.ndarray, oracle_pick: np.ndarray, arms: ArmSet,
                best: int, full: int) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(chosen)
    window = max(50, n // 40)
    kernel = np.ones(window) / window

    def smooth(x: np.ndarray) -> np.ndarray:
        return np.convolve(x, kernel, mode="valid")

    x = np.arange(window, n + 1)
    fig = Figure(figsize=(8, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(x, smooth(rewards[np.arange(n), oracle_pick]), color="0.6", ls="--", label="per-request oracle")
    ax.plot(x, smooth(chosen), color="C0", lw=2, label="stopbandit (learned)")
    ax.plot(x, smooth(rewards[:, best]), color="C2", label=f"best static in hindsight ({arms[best].name})")
    ax.plot(x, smooth(rewards[:, full]), color="C3", label=f"always {arms[full].name}")
    ax.set_xlabel("request")
    ax.set_ylabel(f"reward, moving average over {window} requests")
    ax.set_title("stopbandit demo: learning curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


__all__ = ["DemoResult", "PolicyFigures", "run_demo"]
