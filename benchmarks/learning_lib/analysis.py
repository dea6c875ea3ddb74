"""From trajectories to the benchmark's tables (rows of already formatted cells).

Every function takes per-seed streams and trajectories and aggregates over
seeds as ``mean ± sd`` (sd with ddof=1). See :mod:`.metrics` for the
definitions of gap closed, requests-to-target and recovery.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from stopbandit.features.extract import FeatureConfig, FeatureExtractor

from .heldout import arm_values, oracle_value
from .metrics import first_sustained, fmt, gap_closed, recovery
from .runners import Trajectory, best_static, from_arms, oracle, static
from .streams import ARMS, Stream

FULL = ARMS.most_conservative()
BALANCED = ARMS.index("balanced")

Trajs = Mapping[int, Mapping[str, Trajectory]]  # seed -> learner key -> trajectory


def baselines(stream: Stream) -> dict[str, Trajectory]:
    """Oracle, best static in hindsight and every static arm, keyed like learners."""
    out = {"oracle": oracle(stream), "best-static": best_static(stream)}
    for j, a in enumerate(ARMS):
        out[f"static-{a.name}"] = static(stream, j)
    return out


def hindsight_cells(stream: Stream, kind: str, features_version: int = 2) -> Trajectory:
    """Per cell (see :func:`cell_keys`), the arm with the best mean reward over the whole stream, in hindsight.

    An in-sample upper bound on what a policy choosing from those cells can
    reach: ``features`` is what the Selector's features can tell apart,
    ``latent`` what a perfect difficulty estimate could (not deployable).
    """
    keys = cell_keys(stream, kind, features_version)
    r = stream.rewards()
    uniq, inv = np.unique(keys, return_inverse=True)
    sums = np.zeros((len(uniq), r.shape[1]))
    np.add.at(sums, inv, r)
    label = {"features": "hindsight best arm per feature cell (in-sample bound)",
             "latent": "hindsight best arm per true-difficulty cell (bound, not deployable)"}[kind]
    return from_arms(label, stream, sums.argmax(axis=1)[inv])


# -- main scenario ------------------------------------------------------------------------

@dataclass
class MainTable:
    header: list[str]
    rows: list[list[str]]


def main_table(streams: Mapping[int, Stream], trajs: Trajs, order: Sequence[str], *,
               checkpoints: Sequence[int], window: int) -> MainTable:
    """Online figures per policy: cumulative reward, gap closed at checkpoints, EM, savings, revealed."""
    n = next(iter(streams.values())).n
    header = ["policy", "mean reward (all)"]
    header += [f"gap closed vs full @{_k(c)}" for c in checkpoints]
    header += [f"gap closed vs best static @{_k(checkpoints[-1])}", "EM", "tokens saved", "outcomes learned / req",
               "s / run"]
    rows = []
    for key in order:
        cells: dict[str, list[float]] = {h: [] for h in header[1:]}
        label = key
        for seed, stream in streams.items():
            t = trajs[seed].get(key)
            if t is None:
                continue
            label = t.name
            r_all = stream.rewards()
            r_full, r_or = r_all[:, FULL], r_all.max(axis=1)
            r_bs = r_all[:, int(r_all.mean(axis=0).argmax())]
            r = t.rewards(stream)
            cells[header[1]].append(float(r.mean()))
            for h, c in zip(header[2:2 + len(checkpoints)], checkpoints):
                cells[h].append(gap_closed(r, r_full, r_or, max(0, c - window), c))
            c = checkpoints[-1]
            cells[header[2 + len(checkpoints)]].append(gap_closed(r, r_bs, r_or, max(0, c - window), c))
            cells["EM"].append(float(t.em.mean()))
            cells["tokens saved"].append(1.0 - float(t.tokens.sum()) / float(stream.tokens[:, FULL].sum()))
            if t.revealed:
                cells["outcomes learned / req"].append(t.revealed / n)
            if t.wall_s:
                cells["s / run"].append(t.wall_s)
        if not cells[header[1]]:
            continue
        row = [label, fmt(cells[header[1]], 4)]
        row += [fmt(cells[h], 3) for h in header[2:3 + len(checkpoints)]]
        row += [fmt(cells["EM"], 3), fmt(cells["tokens saved"], 1, pct=True) + "%",
                fmt(cells["outcomes learned / req"], 2) if cells["outcomes learned / req"] else "–",
                fmt(cells["s / run"], 0) if cells["s / run"] else "–"]
        rows.append(row)
    return MainTable(header, rows)


def _k(c: int) -> str:
    return f"{c // 1000}k" if c % 1000 == 0 else f"{c}"


# -- held-out learning curves ----------------------------------------------------------------

@dataclass
class CurveStats:
    """Seed-mean held-out curves, and per seed the reference values."""

    at: list[int]
    value: dict[str, np.ndarray]  # learner -> (n_seeds, n_checkpoints), served value (with exploration)
    greedy: dict[str, np.ndarray]
    v_full: np.ndarray  # (n_seeds,)
    v_best_static: np.ndarray
    v_oracle: np.ndarray
    ceiling: np.ndarray  # reachable value: max(best static arm, full-information plateau), (n_seeds,)

    def reach(self, key: str, *, greedy: bool = False) -> np.ndarray:
        """Fraction of the reachable gap (always-full → ``ceiling``), (n_seeds, n_checkpoints)."""
        v = (self.greedy if greedy else self.value)[key]
        return (v - self.v_full[:, None]) / (self.ceiling - self.v_full)[:, None]

    def oracle_gap(self, key: str) -> np.ndarray:
        return (self.value[key] - self.v_full[:, None]) / (self.v_oracle - self.v_full)[:, None]


def curve_stats(helds: Mapping[int, Stream], trajs: Trajs, keys: Sequence[str], lam: float,
                ceiling_key: str = "fullinfo", plateau: int = 3) -> CurveStats | None:
    seeds = [s for s in helds if all(trajs[s].get(k) is not None and trajs[s][k].curve for k in keys)]
    if not seeds:
        return None
    at = trajs[seeds[0]][keys[0]].curve.at  # type: ignore[union-attr]
    value = {k: np.array([trajs[s][k].curve.value for s in seeds]) for k in keys}  # type: ignore[union-attr]
    greedy = {k: np.array([trajs[s][k].curve.greedy for s in seeds]) for k in keys}  # type: ignore[union-attr]
    av = np.array([arm_values(helds[s], lam) for s in seeds])
    v_or = np.array([oracle_value(helds[s], lam) for s in seeds])
    ceiling = av.max(axis=1)  # a context-free learner can reach the best static arm
    if ceiling_key in greedy:
        ceiling = np.maximum(ceiling, greedy[ceiling_key][:, -plateau:].mean(axis=1))
    return CurveStats(list(at), value, greedy, av[:, FULL], av.max(axis=1), v_or, ceiling)


def curve_table(cs: CurveStats, keys: Sequence[str], labels: Mapping[str, str], checkpoints: Sequence[int],
                levels: Sequence[float]) -> tuple[list[str], list[list[str]]]:
    """Held-out value at checkpoints and requests to reach each level of the reachable gap."""
    header = ["policy"] + [f"held-out value @{_k(c)}" for c in checkpoints]
    header += [f"oracle gap @{_k(checkpoints[-1])}", f"reachable gap @{_k(checkpoints[-1])}"]
    header += [f"requests to {int(lv * 100)}% of reachable gap" for lv in levels]
    header += ["requests to 90% of oracle gap"]
    rows = []
    idx = [cs.at.index(c) for c in checkpoints]
    for k in keys:
        v = cs.value[k]
        row = [labels.get(k, k)] + [fmt(v[:, j], 4) for j in idx]
        row += [fmt(cs.oracle_gap(k)[:, -1], 3), fmt(cs.reach(k)[:, -1], 3)]
        mean_reach = cs.reach(k).mean(axis=0)
        for lv in levels:
            hit = first_sustained(cs.at, mean_reach, lv)
            row.append(f"{hit:,}" if hit is not None else f"not reached (max {mean_reach.max():.2f})")
        og = cs.oracle_gap(k).mean(axis=0)
        hit = first_sustained(cs.at, og, 0.9)
        row.append(f"{hit:,}" if hit is not None else f"not reached (max {og.max():.2f})")
        rows.append(row)
    return header, rows


def requests_to(cs: CurveStats, key: str, level: float) -> int | None:
    return first_sustained(cs.at, cs.reach(key).mean(axis=0), level)


def ratio_table(cs: CurveStats, base: str, others: Sequence[str],
                levels: Sequence[float]) -> tuple[list[str], list[list[str]]]:
    """Requests ``base`` and each of ``others`` need to reach a target, and the ratio base / other.

    Targets: each level of the reachable gap, 90% of the oracle gap, and the
    held-out value ``base`` has at the last checkpoint ("same quality"). Cells:
    the seed-mean curve's figure, then the per-seed figures in brackets.
    """
    def fig(curves: np.ndarray, level: float | np.ndarray) -> tuple[int | None, list[int | None]]:
        lv = np.broadcast_to(np.asarray(level, dtype=float), (curves.shape[0],))
        mean = first_sustained(cs.at, curves.mean(axis=0), float(lv.mean()))
        return mean, [first_sustained(cs.at, c, float(x)) for c, x in zip(curves, lv)]

    def cell(f: tuple[int | None, list[int | None]]) -> str:
        mean, per = f
        head = f"{mean:,}" if mean is not None else "not reached"
        return head + " [" + " / ".join(f"{x:,}" if x is not None else "–" for x in per) + "]"

    def ratio(a: tuple[int | None, list[int | None]], b: tuple[int | None, list[int | None]]) -> str:
        if a[0] is None and b[0] is not None:
            return f"> {cs.at[-1] / b[0]:.1f}×"
        return f"{a[0] / b[0]:.1f}×" if a[0] and b[0] else "–"

    targets: list[tuple[str, object]] = [(f"{int(lv * 100)}% of reachable gap", ("reach", lv)) for lv in levels]
    targets += [("90% of oracle gap", ("oracle", 0.9)), ("same quality as plain @end", ("value", None))]
    header = ["target", base]
    for o in others:
        header += [o, f"{base} / {o}"]
    rows = []
    for label, (kind, lv) in targets:  # type: ignore[misc]
        def figure(key: str) -> tuple[int | None, list[int | None]]:
            if kind == "reach":
                return fig(cs.reach(key), lv)
            if kind == "oracle":
                return fig(cs.oracle_gap(key), lv)
            return fig(cs.value[key], cs.value[base][:, -1])
        b = figure(base)
        row = [label, cell(b)]
        for o in others:
            f = figure(o)
            row += [cell(f), ratio(b, f)]
        rows.append(row)
    return header, rows


def greedy_table(cs: CurveStats, keys: Sequence[str], labels: Mapping[str, str],
                 last: int = 3) -> tuple[list[str], list[list[str]]]:
    """Plateau (mean of the last ``last`` checkpoints) as served and greedy, and what exploration costs.

    Why: the held-out value counts exploration, the full-information ceiling
    is greedy; this splits a learner's shortfall into "exploring" (served vs
    greedy) and "learned less well" (greedy vs the ceiling).
    """
    header = ["policy", f"served (last {last} checkpoints)", "greedy", "exploration cost",
              "greedy, share of reachable gap"]
    rows = []
    for k in keys:
        if k not in cs.value:
            continue
        v, g = cs.value[k][:, -last:].mean(axis=1), cs.greedy[k][:, -last:].mean(axis=1)
        rg = cs.reach(k, greedy=True)[:, -last:].mean(axis=1)
        rows.append([labels.get(k, k), fmt(v, 4), fmt(g, 4), fmt(g - v, 4), fmt(rg, 3)])
    return header, rows


# -- matched savings -----------------------------------------------------------------------

def savings_em(stream: Stream, traj: Trajectory, lo: int, hi: int) -> tuple[float, float]:
    """(token savings vs always-full, EM drop vs always-full in points) over [lo, hi)."""
    full_tok = float(stream.tokens[lo:hi, FULL].sum())
    sav = 1.0 - float(traj.tokens[lo:hi].sum()) / full_tok
    drop = 100.0 * (float(stream.em[lo:hi, FULL].mean()) - float(traj.em[lo:hi].mean()))
    return sav, drop


def interpolate_lambda(points: Sequence[tuple[float, float]], target: float) -> float:
    """λ at which savings reaches ``target``, linear between grid points (savings rise with λ)."""
    pts = sorted(points)
    for (l0, s0), (l1, s1) in zip(pts, pts[1:]):
        if (s0 - target) * (s1 - target) <= 0 and s1 != s0:
            return l0 + (target - s0) * (l1 - l0) / (s1 - s0)
    return min(pts, key=lambda p: abs(p[1] - target))[0]


def frontier_drop(stream: Stream, lo: int, hi: int, target: float, keys: np.ndarray | None) -> float:
    """EM drop (points) of the hindsight-best policy over ``keys`` cells at ``target`` savings.

    For each λ' on a grid the policy picks, per cell, the arm with the best
    mean reward over [lo, hi) in hindsight (``keys`` None: per request, i.e.
    the oracle); the drop at ``target`` savings is interpolated along λ'.
    """
    em, tok = stream.em[lo:hi], stream.tokens[lo:hi].astype(float)
    full_tok, full_em = tok[:, FULL].sum(), em[:, FULL].mean()
    rows = np.arange(hi - lo)
    if keys is not None:
        uniq, inv = np.unique(keys[lo:hi], return_inverse=True)
        onehot = np.zeros((hi - lo, len(uniq)))
        onehot[rows, inv] = 1.0
        count = onehot.sum(axis=0)
    pts = []
    for lam in np.linspace(0.0, 3.0, 301):
        r = em - lam * tok / 1000.0
        if keys is None:
            choice = r.argmax(axis=1)
        else:
            cell_mean = (onehot.T @ r) / count[:, None]
            choice = cell_mean.argmax(axis=1)[inv]
        pts.append((1.0 - tok[rows, choice].sum() / full_tok, 100.0 * (full_em - em[rows, choice].mean())))
    pts.sort()
    s, d = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    return float(np.interp(target, s, d))


def static_frontier_drop(stream: Stream, lo: int, hi: int, target: float) -> float:
    """EM drop of the randomised mix of two adjacent static arms that saves ``target``."""
    em, tok = stream.em[lo:hi], stream.tokens[lo:hi].astype(float)
    s = 1.0 - tok.sum(axis=0) / tok[:, FULL].sum()
    d = 100.0 * (em[:, FULL].mean() - em.mean(axis=0))
    order = np.argsort(s)
    return float(np.interp(target, s[order], d[order]))


def cell_keys(stream: Stream, kind: str, features_version: int = 2) -> np.ndarray:
    """Cell of each request: ``features`` = domain × difficulty bucket × length bucket as the
    extractor computes them; ``latent`` = domain × 20 bins of the true difficulty."""
    if kind == "features":
        fx = FeatureExtractor(FeatureConfig(version=features_version))
        return np.array([(lambda f: f"{f['dd']}|{f['lbin']}")(fx.extract(r.prompt, r.domain))
                         for r in stream.requests])
    return np.array([f"{r.domain}|{min(int(r.difficulty * 20), 19)}" for r in stream.requests])


# -- drift ---------------------------------------------------------------------------------

def drift_rows(streams: Mapping[int, Stream], trajs: Trajs, keys: Sequence[str], labels: Mapping[str, str],
               events: Sequence[tuple[int, int, str]], *, window: int, steady: int, x: float,
               step: int) -> tuple[list[str], list[list[str]]]:
    """Per learner and event: steady regret before, dip, steady regret after, recovery (seed-mean regret)."""
    seeds = list(streams)
    header = ["policy", "regret before first event"]
    for _, _, name in events:
        header += [f"{name}: dip", f"{name}: steady regret", f"{name}: recovery (requests)"]
    header += ["mean reward (all)"]
    rows = []
    for k in keys:
        regs, rew = [], []
        for s in seeds:
            st = streams[s]
            r_or = st.rewards().max(axis=1)
            r = trajs[s][k].rewards(st)
            regs.append(r_or - r)
            rew.append(float(r.mean()))
        reg = np.mean(regs, axis=0)
        first = events[0][0]
        row = [labels.get(k, k), f"{reg[max(0, first - steady):first].mean():.4f}"]
        for at, end, _ in events:
            rec, g_ss, dip = recovery(reg, at, end, window=window, steady=steady, x=x, step=step)
            row += [f"{dip:+.4f}", f"{g_ss:.4f}",
                    (f"≤ {window:,}" if rec == window else f"{rec:,}") if rec is not None else f"> {end - at:,}"]
        row.append(fmt(rew, 4))
        rows.append(row)
    return header, rows


__all__ = [
    "BALANCED",
    "FULL",
    "CurveStats",
    "MainTable",
    "baselines",
    "cell_keys",
    "curve_stats",
    "curve_table",
    "drift_rows",
    "frontier_drop",
    "hindsight_cells",
    "interpolate_lambda",
    "main_table",
    "requests_to",
    "savings_em",
    "static_frontier_drop",
]
