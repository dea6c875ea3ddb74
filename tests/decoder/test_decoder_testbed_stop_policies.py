"""On a testbed model trained in the test: the exact trace-based evaluation of every stop-policy family
(DEER thresholds, agreement windows, budgets, the learned rule trained with graded labels at several
levels and λ, the ``stop-policies`` arm set) equals re-running each rule on the decoder, item by item,
and ``replay``'s exact report (:func:`stopbandit.replay.stop_rules.exact_stop_rules`) gives the re-runs' means.
"""

from __future__ import annotations

import numpy as np
import pytest

tasks = pytest.importorskip("benchmarks.testbed.tasks", reason="run from the repository root")
train_mod = pytest.importorskip("benchmarks.testbed.train", reason="run from the repository root")

from stopbandit.bandit.arms import STOP_POLICY_ARMS, Arm  # noqa: E402
from stopbandit.bandit.learned_stop import LearnedInputs, LearnedStop  # noqa: E402
from stopbandit.bandit.stop_eval import evaluate, stop_data  # noqa: E402
from stopbandit.bandit.trace import counterfactual, em_of  # noqa: E402
from stopbandit.decoder.hf import HFDecoder  # noqa: E402
from stopbandit.replay.stop_rules import TracedEvents, exact_stop_rules  # noqa: E402

SCALE = 20.0
FAMILIES = (
    tuple(Arm(f"deer{t:g}", t) for t in (0.5, 0.7, 0.8, 0.9, 0.95, 0.99))
    + tuple(Arm(f"agree{k}", 1.01, 0, k) for k in (2, 3, 4))
    + tuple(Arm(f"budget{b}", 1.01, b) for b in (8, 16, 24, 40))
    + tuple(Arm(f"learned{k:g}", 1.01, 0, 0, k) for k in (0.06, 0.25, 1.0, 4.0))
    + (Arm("learned1c16", 1.01, 16, 0, 1.0), Arm("learned1a3", 1.01, 0, 3, 1.0))
)


@pytest.fixture(scope="module")
def testbed(tmp_path_factory):
    """A small testbed model trained here (a few seconds on CPU), its decoder and 96 held-out items."""
    out = tmp_path_factory.mktemp("testbed") / "model"
    train_mod.train(out, steps=300, batch_size=32, lr=3e-3, truncate=0.4, seed=0, threads=1, layers=2, dim=64)
    decoder = HFDecoder.from_pretrained(out, device="cpu")
    items = tasks.sample_items(96, seed=7)
    return decoder, items


def _context(items) -> np.ndarray:
    ctx = np.zeros((len(items), len(tasks.DOMAINS) + 1))
    for i, it in enumerate(items):
        ctx[i, tasks.DOMAINS.index(it.domain)] = 1.0
        ctx[i, -1] = len(it.prompt) / 10.0
    return ctx


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_every_stop_policy_read_off_traces_equals_reruns(testbed, lam):
    decoder, items = testbed
    prompts, refs = [it.prompt for it in items], [it.answer for it in items]
    logged = decoder.run(prompts, Arm("full", 1.01))
    traces = [r.trace for r in logged]
    ctx = _context(items)
    half = len(items) // 2
    rule = LearnedStop(ctx.shape[1], "graded").fit(stop_data(traces[:half], refs[:half], ctx[:half], "graded"))
    assert rule.trained
    arms = FAMILIES + tuple(a for a in STOP_POLICY_ARMS if a.name not in {"full", *(f.name for f in FAMILIES)})
    test = list(range(half, len(items)))
    rows = [(a, i) for a in arms for i in test]
    inputs = LearnedInputs(rule, lam, ctx[[i for _, i in rows]], SCALE)
    reruns = decoder.run([prompts[i] for _, i in rows], [a for a, _ in rows], inputs)
    exact = evaluate([traces[i] for i in test], [refs[i] for i in test], arms,
                     LearnedInputs(rule, lam, ctx[test], SCALE))
    assert exact.known.all(), "a full run that ends on its own reveals every rule"
    reasons = set()
    em_rerun = np.zeros(exact.em.shape)
    for (arm, i), rerun in zip(rows, reruns):
        for probe in traces[i].probes:  # guard: no threshold sits within float noise of a confidence
            assert abs(probe.confidence - arm.threshold) > 1e-6
        r, j = test.index(i), arms.index(arm)
        cf = counterfactual(traces[i], arm, LearnedInputs(rule, lam, ctx[i : i + 1], SCALE))
        assert cf is not None
        assert (cf.stop_offset, cf.tokens, cf.answer, cf.reason) == (
            rerun.think_tokens, rerun.total_tokens, rerun.answer, rerun.stop_reason,
        ), f"{arm.name} λ={lam} on {traces[i].to_json()}"
        assert exact.tokens[r, j] == rerun.total_tokens
        em_rerun[r, j] = em_of(rerun.answer, refs[i])
        assert exact.em[r, j] == em_rerun[r, j]
        reasons.add(rerun.stop_reason)
    # every family actually stops runs, so the comparison covers each kind of stop
    assert {"confidence", "agreement", "budget", "learned", "end"} <= reasons
    # replay's exact report (what `replay evaluate` / `replay sweep` print) equals the re-runs' means
    events = TracedEvents([traces[i] for i in test], [refs[i] for i in test], ctx[test],
                          ["full"] * len(test), 0)
    report = exact_stop_rules(events, arms, lam=lam, token_scale=SCALE, rule=rule)
    assert report.common == len(test)
    tok_rerun = np.array([[rr.total_tokens for rr in reruns[j * len(test) : (j + 1) * len(test)]]
                          for j in range(len(arms))]).T
    for j, row in enumerate(report.rows):
        got = row["common_on"]
        assert got["em"]["mean"] == pytest.approx(em_rerun[:, j].mean())
        assert got["tokens"]["mean"] == pytest.approx(tok_rerun[:, j].mean())
        assert got["reward"]["mean"] == pytest.approx((em_rerun[:, j] - lam * tok_rerun[:, j] / SCALE).mean())
