"""The learned stop rule against every fixed stop rule on the testbed, read exactly off real decoder traces.

Usage (repository root, after ``python -m benchmarks.testbed.train``)::

    nice -n 10 python -m benchmarks.testbed.learned_stop --models benchmarks/testbed/out/model \\
        benchmarks/testbed/out/model-seed1 --train 1500 --test 1500 --seeds 0 1 --lambdas 0.1 0.3 1

Per trained model and seed ``s``: ``--train + --test`` held-out items (drawn
from ``HELD_OUT_SEED + 1 + s``, never a training seed) are decoded once under
the lenient ``full`` arm. Every stop policy is then evaluated **exactly** off
those traces (:func:`stopbandit.bandit.stop_eval.evaluate`: the trace reveals
where each rule stops and the answer there; nothing is estimated), and
``--check`` items of the test split are also *re-run* on the decoder under
the chosen rules, which must equal what the traces reveal.

Families: DEER confidence thresholds, agreement windows (k consecutive equal
trial answers), budgets (thinking-token caps on the probe grid), and the
learned rule (:mod:`stopbandit.bandit.learned_stop`), trained on the train
split's traces with graded labels (trial answer against the task's answer).
Context of a request: its domain (one-hot) and payload length (what the
prompt shows). Reward ``EM − λ·tokens/token_scale`` (``--token-scale`` 20:
the testbed spends 10–25 tokens an item, probes included).

Per λ:

* the best fixed rule of each family, picked **in hindsight on the test split**
  (which favours it), and the learned rule's EM at that rule's mean tokens
  (matched tokens: read off the learned rule's curve over ``κ = level·λ``, the
  per-request mix of the two neighbouring κ whose mean tokens equals the fixed
  rule's): Δ EM = Δ reward there, with a 95% paired bootstrap interval over
  test requests (seeds and models pooled);
* the learned rule at the level picked on the train split against the best
  fixed rule of all families (hindsight), Δ reward with its interval;
* two ceilings: the per-request oracle over every policy, and the hindsight
  stop (each request stopped at its best probe).

And, λ-free, the learned rule's EM at the mean tokens of **every** fixed rule
(not only each family's best): a family's best rule can sit at an end of the
learned curve (``full``'s tokens, or stopping every request at its first
probe), where every stop rule is the same policy and Δ is 0 by construction.

Features' information, on the test split's probes: how well ``p_now`` (the
learned rule's estimate that the trial answer is right) and the raw
confidence alone (what DEER reads) predict "trial answer correct": AUC, and
log-loss against the constant base rate; and the same on the probes whose
confidence is below 0.95 (``band_*``: where a near-certainty DEER threshold
thinks on, so where a rule that beats it must find the answers already right).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.learned_stop import _at_tokens
from benchmarks.testbed.run_arms import HELD_OUT_SEED
from benchmarks.testbed.tasks import DOMAINS, sample_items
from benchmarks.testbed.train import DEFAULT_OUT, require_trained
from stopbandit.bandit.arms import Arm
from stopbandit.bandit.learned_stop import LearnedInputs, LearnedStop
from stopbandit.bandit.stop_eval import evaluate, stop_data
from stopbandit.bandit.trace import counterfactual, em_of

FULL = Arm("full", 1.01)
DEER = tuple(Arm(f"deer{t:g}", t) for t in (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995))
AGREE = tuple(Arm(f"agree{k}", 1.01, 0, k) for k in (2, 3, 4, 5, 6))
BUDGET = tuple(Arm(f"budget{b}", 1.01, b) for b in (8, 16, 24, 32, 40, 48, 56))
LEVELS = (0.03, 0.06, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
LEARNED = tuple(Arm(f"learned{k:g}", 1.01, 0, 0, k) for k in LEVELS)
FIXED = (FULL,) + DEER + AGREE + BUDGET
FAMILIES = {"DEER": DEER, "agreement": AGREE, "budget": BUDGET}
KAPPAS = (0.0,) + tuple(float(k) for k in np.geomspace(0.002, 50.0, 60))
CURVE = tuple(Arm(f"k{i}", 1.01, 0, 0, k) for i, k in enumerate(KAPPAS))
BAND = 0.95
STOP_POINTS = tuple(Arm(f"stop{c}", 1.01, c) for c in range(8, 64, 8)) + (FULL,)


def context(items) -> np.ndarray:
    ctx = np.zeros((len(items), len(DOMAINS) + 1))
    for i, it in enumerate(items):
        ctx[i, DOMAINS.index(it.domain)] = 1.0
        ctx[i, -1] = len(it.prompt.split(":", 1)[1]) / 8.0
    return ctx


def auc(score: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (ties count half)."""
    pos, neg = score[y == 1], score[y == 0]
    if not pos.size or not neg.size:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    allv = np.concatenate([pos, neg])[order]
    ranks = np.empty(allv.size)
    i = 0
    while i < allv.size:  # average ranks over ties
        j = i
        while j + 1 < allv.size and allv[j + 1] == allv[i]:
            j += 1
        ranks[i : j + 1] = (i + j) / 2.0 + 1.0
        i = j + 1
    r = np.empty(allv.size)
    r[order] = ranks
    return float((r[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0) / (pos.size * neg.size))


def logloss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def boot_ci(d: np.ndarray, rng: np.random.Generator, n: int = 2000) -> tuple[float, float]:
    means = np.concatenate([d[rng.integers(0, d.size, size=(min(100, n - k), d.size))].mean(axis=1)
                            for k in range(0, n, 100)])  # in chunks: a pooled d has tens of thousands of rows
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def _mean_finite(values) -> float:
    """Mean over the runs where a figure is defined (NaN where it is in none)."""
    v = [x for x in values if np.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


def one(decoder, seed: int, n_train: int, n_test: int, lambdas, scale: float, n_check: int) -> dict:
    items = sample_items(n_train + n_test, seed=HELD_OUT_SEED + 1 + seed)
    t0 = time.perf_counter()
    runs = decoder.run([it.prompt for it in items], FULL)
    decode_s = time.perf_counter() - t0
    traces = [r.trace for r in runs]
    refs = [it.answer for it in items]
    ctx = context(items)
    tr, te = slice(0, n_train), slice(n_train, None)
    rule = LearnedStop(ctx.shape[1], "graded").fit(stop_data(traces[tr], refs[tr], ctx[tr], "graded"))
    bare = LearnedStop(0, "graded").fit(stop_data(traces[tr], refs[tr], np.zeros((n_train, 0)), "graded"))
    out: dict = {"decode_s": decode_s, "lam": {}}
    # features' information on the test probes
    d_te = stop_data(traces[te], refs[te], ctx[te], "graded")
    d_bare = stop_data(traces[te], refs[te], np.zeros((n_test, 0)), "graded")
    y = d_te.correct_now
    base = float(np.asarray(stop_data(traces[tr], refs[tr], ctx[tr], "graded").correct_now).mean())
    p_now = rule.estimates(d_te.features)[0]
    p_bare = bare.estimates(d_bare.features)[0]
    conf = d_te.features[:, 1]
    out["info"] = {"probes": int(y.size), "base_rate": float(y.mean()),
                   "auc_p_now": auc(p_now, y), "auc_p_now_no_context": auc(p_bare, y), "auc_confidence": auc(conf, y),
                   "logloss_const": logloss(np.full(y.size, base), y), "logloss_p_now": logloss(p_now, y),
                   "logloss_p_now_no_context": logloss(p_bare, y)}
    low = conf < BAND  # the probes where a near-certainty DEER threshold thinks on: where a better rule must find
    out["info"].update({"band_probes": float(low.mean()), "band_base_rate": float(y[low].mean()),
                        "band_auc_p_now": auc(p_now[low], y[low]), "band_auc_confidence": auc(conf[low], y[low]),
                        "band_share_p_now_ge_0.95": float((p_now[low] >= BAND).mean()),
                        "band_em_p_now_ge_0.95": float(y[low & (p_now >= BAND)].mean()) if (low & (p_now >= BAND)).any()
                        else float("nan"),
                        "em_confidence_ge_0.95": float(y[~low].mean()) if (~low).any() else float("nan")})
    # exact outcomes of the fixed rules and stop points (λ-free)
    fx = evaluate(traces[te], refs[te], FIXED + STOP_POINTS)
    assert fx.known.all()
    em_fx, tok_fx = fx.em, fx.tokens.astype(float)
    full_em, full_tok = em_fx[:, 0].mean(), tok_fx[:, 0].mean()
    out["full"] = (float(full_em), float(full_tok))
    cv = evaluate(traces[te], refs[te], CURVE, LearnedInputs(rule, 1.0, ctx[te], scale))
    c_em, c_tok = cv.em, cv.tokens.astype(float)
    ok = c_em.mean(axis=0) >= full_em - 0.005
    out["head"] = {"learned": float((1.0 - c_tok.mean(axis=0)[ok] / full_tok).max())}
    for f, arms in FAMILIES.items():
        js = [FIXED.index(a) for a in arms]
        sav = [1.0 - tok_fx[:, j].mean() / full_tok for j in js if em_fx[:, j].mean() >= full_em - 0.005]
        out["head"][f] = max(sav, default=0.0)
    out["matched"] = {}
    floor = c_tok.mean(axis=0)[-1]
    for j, a in enumerate(FIXED[1:], start=1):  # every fixed rule: the learned rule's EM at its token spend
        target = tok_fx[:, j].mean()
        out["matched"][a.name] = {"tokens": float(target), "em": float(em_fx[:, j].mean()),
                                  "diff": _at_tokens(c_em, c_tok, target) - em_fx[:, j],
                                  "edge": bool(target >= full_tok - 1e-9 or target <= floor + 1e-9)}
    nfix = len(FIXED)
    checks = []
    for lam in lambdas:
        rew_fx = em_fx[:, :nfix] - lam * tok_fx[:, :nfix] / scale
        mean_fx = rew_fx.mean(axis=0)
        ev = {}
        for part, sl in (("train", tr), ("test", te)):
            o = evaluate(traces[sl], refs[sl], LEARNED, LearnedInputs(rule, lam, ctx[sl], scale))
            ev[part] = o.em - lam * o.tokens / scale
        lvl = int(np.argmax(ev["train"].mean(axis=0)))
        lr = ev["test"][:, lvl]
        row: dict = {"families": {}}
        for f, arms in FAMILIES.items():
            j = max((FIXED.index(a) for a in arms), key=lambda k: mean_fx[k])
            target = tok_fx[:, j].mean()
            mix = _at_tokens(c_em, c_tok, target)
            row["families"][f] = {"rule": FIXED[j].name, "em": float(em_fx[:, j].mean()),
                                  "tokens": float(target), "reward": float(mean_fx[j]),
                                  "learned_em": float(mix.mean()), "diff": mix - em_fx[:, j],
                                  "below_curve": bool(target < floor - 1e-9),
                                  "diff_reward": lr - rew_fx[:, j]}
            checks.append(FIXED[j])
        jbest = int(np.argmax(mean_fx))
        all_rew = np.column_stack([rew_fx, ev["test"], c_em - lam * c_tok / scale])
        stop_rew = em_fx[:, nfix:] - lam * tok_fx[:, nfix:] / scale
        row.update(best_fixed=FIXED[jbest].name, best_fixed_reward=float(mean_fx[jbest]),
                   level=LEVELS[lvl], learned_reward=float(lr.mean()), diff_reward=lr - rew_fx[:, jbest],
                   oracle=float(all_rew.max(axis=1).mean()), hindsight_stop=float(stop_rew.max(axis=1).mean()))
        out["lam"][lam] = row
        checks.append(Arm(f"learned{LEVELS[lvl]:g}_lam{lam:g}", 1.01, 0, 0, LEVELS[lvl] * lam))
    # re-run the compared rules on the decoder for the first --check test items: must equal the traces' reading
    agree = total = 0
    if n_check:
        sub = list(range(n_train, n_train + min(n_check, n_test)))
        uniq = list({a.name: a for a in checks}.values())
        rows = [(a, i) for a in uniq for i in sub]
        inputs = LearnedInputs(rule, 1.0, ctx[[i for _, i in rows]], scale)
        reruns = decoder.run([items[i].prompt for _, i in rows], [a for a, _ in rows], inputs)
        for (a, i), rr in zip(rows, reruns):
            cf = counterfactual(traces[i], a, LearnedInputs(rule, 1.0, ctx[i : i + 1], scale))
            total += 1
            agree += cf is not None and (cf.tokens, em_of(cf.answer, refs[i])) == (rr.total_tokens,
                                                                                    em_of(rr.answer, refs[i]))
    out["check"] = (agree, total)
    return out


def report(res: list[dict], args: argparse.Namespace, rng: np.random.Generator, title: str) -> dict:
    """Print the tables of ``res`` (runs pooled) and return their summary."""
    summary: dict = {"runs": len(res), "lam": {}}
    print(f"\n== {title}: {len(res)} runs (models × seeds), {args.test} test items each; "
          "Δ pooled over runs, 95% paired bootstrap")
    print(f"{'λ':<5}{'family':<11}{'best fixed':>12}{'EM':>8}{'tokens':>8}{'learned EM':>12}{'Δ EM = Δ reward':>16}"
          f"{'95% CI':>20}{'reward':>9}{'Δ reward, learned at its level':>34}")
    for lam in args.lambdas:
        rows = [r["lam"][lam] for r in res]
        summary["lam"][lam] = {"families": {}}
        for f in FAMILIES:
            fr = [x["families"][f] for x in rows]
            d = np.concatenate([x["diff"] for x in fr])
            lo, hi = boot_ci(d, rng)
            dr = np.concatenate([x["diff_reward"] for x in fr])
            rlo, rhi = boot_ci(dr, rng)
            names = sorted({x["rule"] for x in fr})
            em, tok, lem, rew = (float(np.mean([x[k] for x in fr])) for k in ("em", "tokens", "learned_em", "reward"))
            below = sum(x["below_curve"] for x in fr)
            summary["lam"][lam]["families"][f] = {"rules": names, "em": em, "tokens": tok, "reward": rew,
                                                  "learned_em": lem, "diff": float(d.mean()), "ci": [lo, hi],
                                                  "diff_reward": float(dr.mean()), "ci_reward": [rlo, rhi],
                                                  "below_curve": below}
            print(f"{lam:<5g}{f:<11}{'/'.join(names):>12}{em:>8.4f}{tok:>8.2f}{lem:>12.4f}{d.mean():>+16.4f}"
                  f"   [{lo:+.4f}, {hi:+.4f}]{rew:>9.4f}{dr.mean():>+10.4f} [{rlo:+.4f}, {rhi:+.4f}]"
                  + (f"  ({below} runs below the learned curve's fewest tokens)" if below else ""))
    print(f"\n{'λ':<5}{'best fixed':>14}{'reward':>9}{'learned (level)':>22}{'Δ reward [95% CI]':>30}{'oracle':>9}"
          f"{'hindsight stop':>16}{'closed':>8}")
    for lam in args.lambdas:
        rows = [r["lam"][lam] for r in res]
        d = np.concatenate([x["diff_reward"] for x in rows])
        lo, hi = boot_ci(d, rng)
        bf, lr, orc, hs = (float(np.mean([x[k] for x in rows])) for k in
                           ("best_fixed_reward", "learned_reward", "oracle", "hindsight_stop"))
        names = "/".join(sorted({x["best_fixed"] for x in rows}))
        levels = sorted({x["level"] for x in rows})
        closed = (lr - bf) / (orc - bf) if orc > bf else float("nan")
        summary["lam"][lam].update(best_fixed=names, best_fixed_reward=bf, learned_reward=lr, levels=levels,
                                   diff_reward=float(d.mean()), ci=[lo, hi], oracle=orc, hindsight_stop=hs,
                                   closed=closed)
        print(f"{lam:<5g}{names:>14}{bf:>9.4f}{lr:>12.4f} {str(levels):>9}{d.mean():>+12.4f} [{lo:+.4f}, {hi:+.4f}]"
              f"{orc:>9.4f}{hs:>16.4f}{closed:>8.2f}")
    print(f"\nmatched tokens, every fixed rule: the learned rule's EM at its mean tokens (test items; Δ pooled over "
          "runs, 95% paired bootstrap; * = at an end of the learned curve: full's tokens or its fewest)")
    print(f"{'rule':<12}{'saved':>8}{'EM fixed':>10}{'EM learned':>12}{'Δ EM':>9}{'95% CI':>20}")
    summary["matched"] = {}
    for a in FIXED[1:]:
        rows = [r["matched"][a.name] for r in res]
        d = np.concatenate([x["diff"] for x in rows])
        lo, hi = boot_ci(d, rng)
        tok = float(np.mean([x["tokens"] for x in rows]))
        em = float(np.mean([x["em"] for x in rows]))
        saved = 1.0 - tok / float(np.mean([r["full"][1] for r in res]))
        edge = any(x["edge"] for x in rows)
        summary["matched"][a.name] = {"saved": saved, "em": em, "learned_em": em + float(d.mean()),
                                      "diff": float(d.mean()), "ci": [lo, hi], "edge": edge}
        print(f"{a.name + ('*' if edge else ''):<12}{saved:>8.1%}{em:>10.4f}{em + d.mean():>12.4f}{d.mean():>+9.4f}"
              f"   [{lo:+.4f}, {hi:+.4f}]")
    info = {k: _mean_finite([r["info"][k] for r in res]) for k in res[0]["info"]}
    summary["info"] = info
    print("\nfeatures' information on the test probes (mean over runs): "
          + ", ".join(f"{k} {v:.4f}" for k, v in info.items()))
    head = {k: [r["head"][k] for r in res] for k in res[0]["head"]}
    summary["head"] = {k: float(np.mean(v)) for k, v in head.items()}
    summary["full"] = [float(np.mean([r["full"][0] for r in res])), float(np.mean([r["full"][1] for r in res]))]
    print("most tokens saved at EM within 0.5 points of full: "
          + ", ".join(f"{k} {np.mean(v):.1%} ({', '.join(f'{x:.1%}' for x in v)})" for k, v in head.items()))
    chk = (sum(r["check"][0] for r in res), sum(r["check"][1] for r in res))
    summary["check"] = chk
    print(f"re-runs on the decoder equal to the traces' reading: {chk[0]}/{chk[1]}")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, nargs="+", default=[DEFAULT_OUT])
    ap.add_argument("--train", type=int, default=1500)
    ap.add_argument("--test", type=int, default=1500)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    ap.add_argument("--token-scale", type=float, default=20.0)
    ap.add_argument("--check", type=int, default=200, help="test items re-run on the decoder under the compared rules")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", type=Path, help="also write the summary as JSON")
    args = ap.parse_args()

    import torch

    from stopbandit.decoder.hf import HFDecoder

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    res, names = [], []
    require_trained(ap, args.models)
    for m in args.models:
        dec = HFDecoder.from_pretrained(m, device="cpu")
        for s in args.seeds:
            r = one(dec, s, args.train, args.test, args.lambdas, args.token_scale, args.check)
            print(f"model {m.name} seed {s}: decoded {args.train + args.test} items in {r['decode_s']:.0f} s; "
                  f"full EM {r['full'][0]:.4f} tokens {r['full'][1]:.2f}; re-run check {r['check'][0]}/{r['check'][1]}",
                  flush=True)
            res.append(r)
            names.append(str(m))
    groups = {str(m): [r for r, n in zip(res, names) if n == str(m)] for m in args.models}
    summary = {"per_model": {k: report(v, args, rng, f"model {k}") for k, v in groups.items()} if len(groups) > 1
               else {}}
    summary["pooled"] = report(res, args, rng, "all models")
    if args.save:
        args.save.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
