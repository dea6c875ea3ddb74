"""`stopbandit demo`: simulated LLM traffic through a real Selector and a real SQLite store.

Every request of a calibrated simulator (:mod:`stopbandit.sim`) goes through
``Selector.choose``; the simulator runs the chosen arm and the outcome goes
back through ``Selector.reward`` (with its probe trace, so every stricter arm
the trace reveals is learned too). Because the simulator can run every arm on
every request, the verdict compares the learned policy with always-full, each
static arm, the best static arm in hindsight and the per-request oracle on
exactly the same requests.

The Selector explores conservatively against a baseline arm (``--baseline``,
``balanced`` by default: the fixed setting an operator would switch from, and
at the default λ the best static arm in hindsight, so the hardest one to beat)
with a loss budget (``--max-loss`` reward units per request on average,
:mod:`stopbandit.bandit.conservative`); the demo reports the baseline, the
budget and what was spent of it, and its verdict compares the reward served
over *all* requests, exploration included, with the best static arm in
hindsight, with the reason.

The demo writes simulated traffic, a serving snapshot and a λ change, so it
never touches a store it was not given for that purpose: by default it
recreates its own SQLite file under ``./stopbandit-demo/``, and a store named
with ``--db`` must be empty.
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
from stopbandit.bandit.conservative import BudgetState, ConservativeConfig
from stopbandit.errors import ConfigError
from stopbandit.replay import migrate
from stopbandit.replay.engine import make_engine, redact
from stopbandit.replay.store import ReplayStore
from stopbandit.serving.selector import Selector
from stopbandit.sim import Simulator, outcome_table, run

DEMO_DIR = Path("stopbandit-demo")
DEMO_DB = DEMO_DIR / "stopbandit.db"
DEMO_LAM = 0.5
"""The demo's λ: of λ ∈ {0.1, 0.2, 0.3, 0.5, 1}, where per-request choice can gain the most over the best static
arm in the simulator (per-request oracle +0.149, best arm per domain +0.008 over ``balanced``; at λ ≤ 0.2 the
best arm per domain gains nothing over ``careful``, so no learner can be ahead there by more than noise)."""
DEMO_BASELINE = "balanced"
"""The demo's baseline: the setting an operator who had tuned one fixed arm at :data:`DEMO_LAM` would serve
(the best static arm in hindsight there), so the verdict is against the fixed setting the tool replaces."""


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
    baseline: str | None = None
    max_loss: float = 0.0
    budget: BudgetState | None = None
    served_reward: float = 0.0  # mean over all requests, exploration included
    best_static: str = ""
    best_static_reward: float = 0.0
    baseline_reward: float | None = None
    second_half_gap: float = 0.0  # learned (second half) minus best static on the same requests
    domain_choice: dict[str, dict[str, float]] | None = None  # second half: domain -> arm -> share
    verdict: str = ""
    reason: str = ""


def _figures(name: str, em: np.ndarray, tokens: np.ndarray, full_tokens: float, lam: float,
             scale: float) -> PolicyFigures:
    m_em, m_tok = float(em.mean()), float(tokens.mean())
    return PolicyFigures(name, m_em, m_tok, 1.0 - m_tok / full_tokens, m_em - lam * m_tok / scale)


def fresh_demo_store(directory: Path = DEMO_DIR) -> str:
    """Recreate the demo's own SQLite store in ``directory`` and return its URL.

    The file belongs to the demo alone, so a previous run's database (and its
    WAL/SHM companions) is removed rather than appended to.
    """
    directory.mkdir(parents=True, exist_ok=True)
    db = directory / DEMO_DB.name
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        path.unlink(missing_ok=True)
    return f"sqlite:///{db}"


def require_empty_store(url: str) -> None:
    """Refuse a store that already holds rows: the demo would mix simulated traffic into it.

    A database without our schema counts as empty (the demo migrates it).
    """
    engine = make_engine(url)
    try:
        if migrate.current_revision(engine=engine) is None:
            return
        store = ReplayStore(engine=engine, check_schema=False)
        held = {name: n for name, n in store.counts().items() if n}
    finally:
        engine.dispose()
    if held:
        what = ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in held.items())
        raise ConfigError(
            f"the demo refuses {redact(url)}: it already holds {what}. The demo writes simulated decisions, "
            f"a serving snapshot and a λ change; omit --db to use its own store ({DEMO_DB}), or name an empty one"
        )


def run_demo(
    url: str,
    *,
    requests: int = 20_000,
    lam: float = DEMO_LAM,
    token_scale: float = 1000.0,
    seed: int = 0,
    traces: bool = True,
    baseline: str | None = DEMO_BASELINE,
    max_loss: float = 0.01,
    plot: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> DemoResult:
    """Run the demo; ``progress(n)`` is called with the number of requests done so far."""
    t0 = time.perf_counter()
    conservative = ConservativeConfig(baseline, max_loss=max_loss) if baseline is not None else None
    sel = Selector.open(url, lam=lam, token_scale=token_scale, seed=seed, snapshot=None, follow=False,
                        conservative=conservative)
    arms: ArmSet = sel.arms
    if sel.lam != lam:  # the store carries an older λ: the demo states its own on purpose
        sel.set_lambda(lam, reason="stopbandit demo")
    sim = Simulator(seed=seed)
    run_id = uuid.uuid4().hex[:8]
    reqs = sim.take(requests)
    table = outcome_table(reqs, arms.arms)  # every arm on every request: (n, K)
    chosen_em = np.empty(requests)
    chosen_tokens = np.empty(requests)
    chosen_arm = np.empty(requests, dtype=np.intp)
    for i, req in enumerate(reqs):
        d = sel.choose(req.prompt, domain=req.domain, request_id=f"demo-{run_id}-{i}")
        out = run(req, d.arm)
        if traces:
            sel.reward(d.decision_id, em=out.em, tokens=out.tokens, trace=out.trace, reference=req.reference)
        else:
            sel.reward(d.decision_id, em=out.em, tokens=out.tokens)
        chosen_em[i], chosen_tokens[i], chosen_arm[i] = out.em, out.tokens, d.arm_index
        if progress is not None and (i + 1) % 250 == 0:
            progress(i + 1)
    if progress is not None:
        progress(requests)
    version = sel.snapshot()
    budget = sel.budget()
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
    domains = [r.domain for r in reqs]
    choice = _domain_choice(domains[requests // 2:], chosen_arm[tail], arms)
    b = arms.index(baseline) if baseline is not None else None
    served, best_r = float(chosen_reward.mean()), float(rewards[:, best].mean())
    base_r = float(rewards[:, b].mean()) if b is not None else None
    half_gap = float(chosen_reward[tail].mean() - rewards[tail, best].mean())
    paired = chosen_reward - rewards[:, best]  # per request, so the interval is of the difference itself
    ci = 1.96 * float(paired.std(ddof=1)) / float(np.sqrt(requests)) if requests > 1 else float("inf")
    verdict, reason = _verdict(served, best_r, arms[best].name, half_gap, base_r, baseline, max_loss, budget,
                               float(rewards[idx, pick].mean()), ci)
    if plot is not None:
        if importlib.util.find_spec("matplotlib") is None:  # the optional ``plots`` extra
            plot = None  # the demo runs without it; the CLI says how to get the learning curve
        else:
            _plot_curve(plot, chosen_reward, rewards, arms, best, b, max_loss, choice, lam)
    return DemoResult(url, requests, lam, token_scale, rows, version, plot, time.perf_counter() - t0,
                      counts["decisions"], counts["outcomes"], baseline, max_loss if baseline else 0.0, budget,
                      served, arms[best].name, best_r, base_r, half_gap, choice, verdict, reason)


def _domain_choice(domains: list[str], chosen: np.ndarray, arms: ArmSet) -> dict[str, dict[str, float]]:
    """Share of each arm served per domain (the requests given)."""
    out: dict[str, dict[str, float]] = {}
    for dom in sorted(set(domains)):
        mask = np.fromiter((d == dom for d in domains), dtype=bool, count=len(domains))
        n = int(mask.sum())
        out[dom] = {a.name: float((chosen[mask] == k).sum()) / n for k, a in enumerate(arms.arms)}
    return out


def _verdict(served: float, best: float, best_name: str, half_gap: float, base: float | None,
             baseline: str | None, max_loss: float, budget: BudgetState | None, oracle: float,
             ci: float | None = None) -> tuple[str, str]:
    """(verdict, reason) — on the reward served over all requests, exploration included.

    ``ci``: the 95 % half-width of the served-minus-best difference (paired per request); the reason says
    when the difference is inside it.
    """
    gap = served - best
    headroom = oracle - best
    if gap > 0:
        verdict = f"win: the reward served over all requests, exploration included, beats the best static arm " \
                  f"({best_name}) by {gap:+.4f}"
    else:
        verdict = f"no win: the reward served over all requests, exploration included, is {gap:+.4f} against the " \
                  f"best static arm ({best_name})"
    parts = []
    if ci is not None:
        parts.append(f"95% interval of the difference ±{ci:.4f} per request"
                     + (" (within noise: a tie)" if abs(gap) <= ci else ""))
    parts += [f"per-request choice could gain at most {headroom:+.4f} over {best_name} (the oracle's headroom)",
             f"once learned (second half) the policy is {half_gap:+.4f} against it"]
    if gap <= 0 < half_gap:
        parts.append("so learning, not the learned policy, is what costs: a longer run amortises it")
    elif half_gap <= 0:
        parts.append("the learned policy itself does not yet pick better per request than the static arm")
    if baseline is not None and base is not None and budget is not None:
        parts.append(f"against the baseline ({baseline}) it served {served - base:+.4f} per request "
                     f"(budget −{max_loss:g}; lower bound spent {budget.spent:.1f} of {budget.budget:.1f})")
    return verdict, "; ".join(parts)


def _plot_curve(path: Path, chosen: np.ndarray, rewards: np.ndarray, arms: ArmSet, best: int,
                baseline: int | None, max_loss: float, choice: dict[str, dict[str, float]], lam: float) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(chosen)
    x = np.arange(1, n + 1)
    fig = Figure(figsize=(11, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax, bx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    # cumulative mean from request 0: what the operator has gained (or lost) so far, every request counted
    ax.plot(x, np.cumsum(chosen - rewards[:, best]) / x, color="C0", lw=2,
            label=f"stopbandit − best static in hindsight ({arms[best].name})")
    if baseline is not None and baseline != best:
        ax.plot(x, np.cumsum(chosen - rewards[:, baseline]) / x, color="C1",
                label=f"stopbandit − baseline ({arms[baseline].name})")
    if baseline is not None:
        ax.axhline(-max_loss, color="C3", ls=":", label=f"budget: −{max_loss:g} per request vs baseline")
    ax.axhline(0.0, color="0.4", lw=0.8)
    ax.set_xlabel("request")
    ax.set_ylabel("mean reward difference since request 0")
    ax.set_ylim(max(ax.get_ylim()[0], -0.1), ax.get_ylim()[1])
    ax.set_title(f"served reward vs static arms (λ={lam:g})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    doms = list(choice)
    left = np.zeros(len(doms))
    for k, arm in enumerate(arms.arms):
        share = np.array([choice[d][arm.name] for d in doms])
        bx.barh(doms, share, left=left, color=f"C{k}", label=arm.name)
        left += share
    bx.set_xlabel("share of requests (second half)")
    bx.set_title("arm served per domain")
    bx.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


__all__ = ["DemoResult", "PolicyFigures", "run_demo"]
