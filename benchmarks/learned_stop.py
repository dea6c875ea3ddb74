"""The learned stop rule against every fixed stop rule, on the simulator, read exactly off traces.

Per calibration (``conservative``, ``overthinking``) and seed: the ``full``
arm's traces of ``--train`` requests train the learned rule (graded labels:
trial answer against the reference); the ``full`` traces of the next
``--test`` requests evaluate every stop policy exactly (the lenient trace
reveals where each rule stops and its answer, :func:`stopbandit.bandit.stop_eval.evaluate`).
Context of a request: its domain (one-hot) and its prompt length (the
simulator's prompts grow with difficulty), i.e. what a policy may read.

Per λ in ``--lambdas``, the mean reward ``EM − λ·tokens/1000`` on the test
requests of:

* the best fixed DEER threshold, agreement window and budget (each chosen in
  hindsight on the test requests, which favours them);
* the best static arm per feature cell (domain × prompt-length tercile) in hindsight;
* ``learned``: the learned rule at the aggressiveness level chosen on the training requests;
* ``table``: a per-cell choice among every stop policy (learned levels included),
  chosen on the training requests -- the offline contextual choice over stop policies;
* the per-request oracle over every policy (the ceiling);

and ``closed`` = (learned − best fixed) / (oracle − best fixed). The headline
line gives, per family, the most tokens saved at EM within 0.5 points of
``full`` on the test requests.

Matched tokens: the learned rule's stops depend on ``level · λ`` only, so one
curve over ``κ = level · λ`` (48 values from 0.005 to 20, and 0 = never stop =
``full``) is every learned stop policy. At the test-request token spend of each
fixed rule, the learned rule's EM is read off that curve (the per-request mix
of the two neighbouring κ whose mean tokens equals the fixed rule's, exactly),
for the rule trained with graded labels and with agreement labels. Δ = learned
− fixed EM, per request, pooled over seeds (normal 95% interval).

``--bandit``: the Selector serving the named arm set ``stop-policies`` online
(VW heads, nested feedback from every traced reward, the learned rule trained
online) on the training then the test requests, with the simulator running
each chosen policy; its mean reward on the test requests next to the best of
those eight policies in hindsight.

``--sizes m …``: the rule trained on only the first ``m`` training requests
(level picked on those), its ``closed`` on the test requests per λ.

    python benchmarks/learned_stop.py [--train 1500] [--test 1500] [--seeds 0 1 2] [--lambdas 0.1 0.3 1] [--bandit]
                                      [--sizes 50 150 500 1500]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import numpy as np

from stopbandit.bandit.arms import Arm
from stopbandit.bandit.learned_stop import LearnedInputs, LearnedStop
from stopbandit.bandit.stop_eval import evaluate, stop_data
from stopbandit.sim import SimConfig, Simulator, run

FULL = Arm("full", 1.01)
DEER = tuple(Arm(f"deer{t}", t) for t in (0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.99))
AGREE = tuple(Arm(f"agree{k}", 1.01, 0, k) for k in (2, 3, 4, 5, 6))
BUDGET = tuple(Arm(f"budget{b}", 1.01, b) for b in (128, 256, 384, 512, 768, 1024, 1536, 2048))
LEVELS = (0.03, 0.06, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
LEARNED = tuple(Arm(f"learned{k:g}", 1.01, 0, 0, k) for k in LEVELS)
FIXED = (FULL,) + DEER + AGREE + BUDGET
ALL = FIXED + LEARNED
FAMILIES = {"deer": DEER, "agreement": AGREE, "budget": BUDGET, "learned": LEARNED}
KAPPAS = (0.0,) + tuple(float(k) for k in np.geomspace(0.005, 20.0, 48))
CURVE = tuple(Arm(f"k{i}", 1.01, 0, 0, k) for i, k in enumerate(KAPPAS))  # κ = 0: never fires (= full)
MATCHED = DEER + AGREE + BUDGET


def _curve(rule, traces, refs, ctx):
    """EM and tokens ``(N, len(KAPPAS))`` of the learned rule at every κ = level·λ (λ = 1, level = κ)."""
    o = evaluate(traces, refs, CURVE, LearnedInputs(rule, 1.0, ctx))
    assert o.known.all()
    return o.em, o.tokens.astype(float)


def _at_tokens(em, tok, target):
    """Per request, the EM of the mix of the two neighbouring κ whose mean tokens is ``target``."""
    means = tok.mean(axis=0)
    if target >= means[0]:
        return em[:, 0]
    if target <= means[-1]:
        return em[:, -1]
    j = int(np.flatnonzero(means >= target).max())
    k = j + 1
    while k < len(means) - 1 and means[k] == means[j]:
        k += 1
    w = (target - means[k]) / (means[j] - means[k])
    return w * em[:, j] + (1.0 - w) * em[:, k]


def _bandit(reqs, n_train, lam, seed):
    """(mean test reward of the online Selector over the ``stop-policies`` arms, the best of those policies in
    hindsight on the test requests (learned ones with the Selector's final rule), share of test requests
    served by a learned policy)."""
    from stopbandit import Selector
    from stopbandit.bandit.arms import STOP_POLICY_ARMS
    from stopbandit.bandit.learned_stop import stop_context

    rewards, learned_served = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        with Selector.open(f"sqlite:///{tmp}/b.db", arms="stop-policies", lam=lam, seed=seed, follow=False,
                           checkpoint_every=0, checkpoint_interval_s=0) as sel:
            for k, r in enumerate(reqs):
                d = sel.choose(r.prompt, domain=r.domain)
                out = run(r, d.arm, sel.stop_inputs(d) if d.arm.learned else None)
                sel.reward(d.decision_id, em=out.em, tokens=out.tokens, trace=out.trace, reference=r.reference)
                rewards.append(out.em - lam * out.tokens / 1000.0)
                learned_served += bool(d.arm.learned) and k >= n_train
            test = reqs[n_train:]
            ctx = np.stack([stop_context(sel.extractor.extract(r.prompt, r.domain)) for r in test])
            o = evaluate([run(r, FULL).trace for r in test], [r.reference for r in test], STOP_POLICY_ARMS,
                         LearnedInputs(sel.stop_learner.rule, lam, ctx))
    best = float((o.em - lam * o.tokens / 1000.0).mean(axis=0).max())
    return float(np.mean(rewards[n_train:])), best, learned_served / len(test)


def _context(reqs, domains) -> np.ndarray:
    ctx = np.zeros((len(reqs), len(domains) + 1))
    for i, r in enumerate(reqs):
        ctx[i, domains.index(r.domain)] = 1.0
        ctx[i, -1] = len(r.prompt.split()) / 100.0
    return ctx


def _cells(reqs, domains, edges) -> np.ndarray:
    words = np.array([len(r.prompt.split()) for r in reqs])
    return np.array([domains.index(r.domain) for r in reqs]) * 3 + np.digitize(words, edges)


def one(calibration: str, seed: int, n_train: int, n_test: int, lambdas, bandit: bool = False,
        sizes=()) -> dict:
    cfg = SimConfig.named(calibration)
    reqs = list(Simulator(cfg, seed=seed).stream(n_train + n_test))
    domains = list(cfg.domain_names)
    traces = [run(r, FULL).trace for r in reqs]
    refs = [r.reference for r in reqs]
    ctx = _context(reqs, domains)
    tr, te = slice(0, n_train), slice(n_train, None)
    rule = LearnedStop(ctx.shape[1], "graded").fit(stop_data(traces[tr], refs[tr], ctx[tr], "graded"))
    words = np.array([len(r.prompt.split()) for r in reqs[tr]])
    edges = np.quantile(words, [1 / 3, 2 / 3])
    cells = _cells(reqs, domains, edges)
    out = {"lam": {}}
    full_em = full_tok = None
    g_em, g_tok = _curve(rule, traces[te], refs[te], ctx[te])
    for lam in lambdas:
        ev = {}
        for part, sl in (("train", tr), ("test", te)):
            o = evaluate(traces[sl], refs[sl], ALL, LearnedInputs(rule, lam, ctx[sl]))
            assert o.known.all()
            ev[part] = (o.em, o.tokens.astype(float))
        em, tok = ev["test"]
        full_em, full_tok = em[:, 0].mean(), tok[:, 0].mean()
        reward = em - lam * tok / 1000.0
        mean = reward.mean(axis=0)
        col = {a.name: j for j, a in enumerate(ALL)}
        best = {f: max(mean[col[a.name]] for a in arms) for f, arms in FAMILIES.items() if f != "learned"}
        best_fixed = max(best.values())
        r_tr = ev["train"][0] - lam * ev["train"][1] / 1000.0
        lvl = max(LEARNED, key=lambda a: r_tr[:, col[a.name]].mean())
        learned = mean[col[lvl.name]]
        c_te, c_tr = cells[te], cells[tr]
        nf = len(FIXED)
        cell_hind = np.mean([reward[i, reward[c_te == c_te[i], :nf].mean(axis=0).argmax()] for i in range(len(c_te))])
        pick = {c: int(r_tr[c_tr == c].mean(axis=0).argmax()) for c in np.unique(c_tr)}
        table = np.mean([reward[i, pick.get(c_te[i], 0)] for i in range(len(c_te))])
        oracle = reward.max(axis=1).mean()
        fam = {}
        for f, arms in FAMILIES.items():
            if f == "learned":
                continue
            j = max((col[a.name] for a in arms), key=lambda k: mean[k])
            fam[f] = {"rule": ALL[j].name, "reward": float(mean[j]),
                      "diff_reward": reward[:, col[lvl.name]] - reward[:, j],
                      "diff_em": _at_tokens(g_em, g_tok, tok[:, j].mean()) - em[:, j]}
        out["lam"][lam] = dict(best, best_fixed=best_fixed, cell_hindsight=float(cell_hind), learned=float(learned),
                               level=lvl.learned, table=float(table), oracle=float(oracle),
                               closed=float((learned - best_fixed) / (oracle - best_fixed)),
                               diff=(reward[:, col[lvl.name]] - reward[:, int(np.argmax(mean[:nf]))]), families=fam)
    # headline: most tokens saved at EM within 0.5 points of full, per family (test requests, λ-free families;
    # learned levels at every λ of the run)
    head = {}
    for f, arms in FAMILIES.items():
        best_sav = 0.0
        lams = lambdas if f == "learned" else lambdas[:1]
        for lam in lams:
            o = evaluate(traces[te], refs[te], arms, LearnedInputs(rule, lam, ctx[te]))
            for j in range(len(arms)):
                if o.em[:, j].mean() >= full_em - 0.005:
                    best_sav = max(best_sav, 1.0 - o.tokens[:, j].mean() / full_tok)
        head[f] = best_sav
    # the learned κ curve: the headline at full resolution, and EM at each fixed rule's token spend
    curves = {}
    for label in ("graded", "agreement"):
        r_l = LearnedStop(ctx.shape[1], label).fit(stop_data(traces[tr], refs[tr], ctx[tr], label))
        curves[label] = _curve(r_l, traces[te], refs[te], ctx[te])
    c_em, c_tok = curves["graded"]
    ok = c_em.mean(axis=0) >= full_em - 0.005
    head["learned"] = max(head["learned"], float((1.0 - c_tok.mean(axis=0)[ok] / full_tok).max()))
    a_em, a_tok = curves["agreement"]
    ok = a_em.mean(axis=0) >= full_em - 0.005
    head["learned (agreement labels)"] = float((1.0 - a_tok.mean(axis=0)[ok] / full_tok).max())
    o = evaluate(traces[te], refs[te], MATCHED)
    out["matched"] = {}
    for j, a in enumerate(MATCHED):
        t_f = o.tokens[:, j].astype(float).mean()
        row = {"tokens": t_f, "saved": 1.0 - t_f / full_tok, "em_fixed": float(o.em[:, j].mean())}
        for label, (em_l, tok_l) in curves.items():
            mix = _at_tokens(em_l, tok_l, t_f)
            row[label] = float(mix.mean())
            row[f"diff_{label}"] = mix - o.em[:, j]
        out["matched"][a.name] = row
    out["head"] = head
    # how many traced requests the rule needs: trained on the first m training requests only
    out["sizes"] = {}
    for m in sizes:
        r_m = LearnedStop(ctx.shape[1], "graded").fit(stop_data(traces[:m], refs[:m], ctx[:m], "graded"))
        for lam in lambdas:
            o_tr = evaluate(traces[:m], refs[:m], LEARNED, LearnedInputs(r_m, lam, ctx[:m]))
            pick = int(np.argmax((o_tr.em - lam * o_tr.tokens / 1000.0).mean(axis=0)))
            o_te = evaluate(traces[te], refs[te], LEARNED[pick : pick + 1], LearnedInputs(r_m, lam, ctx[te]))
            got = float((o_te.em - lam * o_te.tokens / 1000.0).mean())
            row = out["lam"][lam]
            out["sizes"][(m, lam)] = (got - row["best_fixed"]) / (row["oracle"] - row["best_fixed"])
    if bandit:
        out["bandit"] = {lam: _bandit(reqs, n_train, lam, seed) for lam in lambdas}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=1500)
    ap.add_argument("--test", type=int, default=1500)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    ap.add_argument("--bandit", action="store_true", help="also serve the stop-policies arms with the Selector online")
    ap.add_argument("--sizes", type=int, nargs="*", default=[],
                    help="also train on only the first m training requests: the share of the gap closed per m")
    args = ap.parse_args()
    keys = ("deer", "agreement", "budget", "cell_hindsight", "learned", "table", "oracle")
    for cal in ("conservative", "overthinking"):
        res = [one(cal, s, args.train, args.test, args.lambdas, args.bandit, args.sizes) for s in args.seeds]
        print(f"\n{cal}: {args.train} train / {args.test} test requests, seeds {args.seeds}; mean ± sd over seeds")
        print(f"{'λ':<5}" + "".join(f"{k:>16}" for k in keys) + f"{'closed':>14}{'learned−best fixed (95% CI, pooled)':>40}")
        for lam in args.lambdas:
            cells = []
            for k in keys:
                v = [r["lam"][lam][k] for r in res]
                cells.append(f"{statistics.mean(v):>9.4f}±{statistics.pstdev(v):.4f}")
            cl = [r["lam"][lam]["closed"] for r in res]
            d = np.concatenate([r["lam"][lam]["diff"] for r in res])
            half = 1.96 * d.std(ddof=1) / np.sqrt(d.size)
            levels = sorted({r["lam"][lam]["level"] for r in res})
            print(f"{lam:<5g}" + "".join(f"{c:>16}" for c in cells)
                  + f"{statistics.mean(cl):>8.2f}±{statistics.pstdev(cl):.2f}"
                  + f"   {d.mean():+.4f} [{d.mean() - half:+.4f}, {d.mean() + half:+.4f}] levels {levels}")
        print(f"\n{cal}: the learned rule (level picked on the training requests) against the best rule of each "
              "fixed family at λ (picked in hindsight on the test requests); Δ pooled over seeds, normal 95% CI")
        print(f"{'λ':<5}{'family':<11}{'best rule':>12}{'reward':>9}{'Δ reward [95% CI]':>30}"
              f"{'Δ EM at its tokens [95% CI]':>32}")
        for lam in args.lambdas:
            for f in ("deer", "agreement", "budget"):
                fr = [r["lam"][lam]["families"][f] for r in res]
                cells = []
                for key in ("diff_reward", "diff_em"):
                    d = np.concatenate([x[key] for x in fr])
                    half = 1.96 * d.std(ddof=1) / np.sqrt(d.size)
                    cells.append(f"{d.mean():+.4f} [{d.mean() - half:+.4f}, {d.mean() + half:+.4f}]")
                names = "/".join(sorted({x["rule"] for x in fr}))
                rew = statistics.mean(x["reward"] for x in fr)
                print(f"{lam:<5g}{f:<11}{names:>12}{rew:>9.4f}{cells[0]:>30}{cells[1]:>32}")
        for f in (*FAMILIES, "learned (agreement labels)"):
            v = [r["head"][f] for r in res]
            print(f"  most saved at EM ≥ full − 0.5 pts, {f:<10}: {statistics.mean(v):.1%} ± {statistics.pstdev(v):.1%}"
                  f" (per seed {', '.join(f'{x:.1%}' for x in v)})")
        print(f"\n{cal}: matched tokens — EM of the learned rule at each fixed rule's token spend (test requests)")
        print(f"{'rule':<12}{'saved':>16}{'EM fixed':>18}{'EM learned':>18}{'Δ graded [95% CI]':>32}"
              f"{'Δ agreement [95% CI]':>32}")
        wins = {"graded": [0, 0], "agreement": [0, 0]}
        for a in MATCHED:
            rows = [r["matched"][a.name] for r in res]

            def ms(key):
                v = [x[key] for x in rows]
                return f"{statistics.mean(v):.4f}±{statistics.pstdev(v):.4f}"

            cells = []
            for label in ("graded", "agreement"):
                d = np.concatenate([x[f"diff_{label}"] for x in rows])
                half = 1.96 * d.std(ddof=1) / np.sqrt(d.size)
                lo, hi = d.mean() - half, d.mean() + half
                wins[label][0] += lo > 0
                wins[label][1] += hi < 0
                cells.append(f"{d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]")
            sv = [x["saved"] for x in rows]
            print(f"{a.name:<12}{statistics.mean(sv):>10.1%}±{statistics.pstdev(sv):.1%}{ms('em_fixed'):>18}"
                  f"{ms('graded'):>18}{cells[0]:>32}{cells[1]:>32}")
        for label, (w, l_) in wins.items():
            print(f"  {label} labels: learned better at matched tokens (CI > 0) for {w} of {len(MATCHED)} fixed rules,"
                  f" worse (CI < 0) for {l_}")
        if args.sizes:
            print(f"\n{cal}: share of the gap (best fixed → oracle) closed by the rule trained on m traced requests")
            for m in args.sizes:
                cells = []
                for lam in args.lambdas:
                    v = [r["sizes"][(m, lam)] for r in res]
                    cells.append(f"λ={lam:g}: {statistics.mean(v):+.2f} ± {statistics.pstdev(v):.2f}")
                print(f"  m={m:<6}" + "   ".join(cells))
        if args.bandit:
            print(f"\n{cal}: Selector online over the stop-policies arms (test requests, mean ± sd over seeds)")
            for lam in args.lambdas:
                b = [r["bandit"][lam] for r in res]
                got, best, share = (statistics.mean(x[i] for x in b) for i in range(3))
                sd = statistics.pstdev(x[0] - x[1] for x in b)
                print(f"  λ={lam:g}: bandit {got:.4f}, best of the 8 in hindsight {best:.4f}, "
                      f"bandit − best {got - best:+.4f} ± {sd:.4f}; learned policies served {share:.0%}")


if __name__ == "__main__":
    main()
