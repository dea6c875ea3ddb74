"""Exact trace-based evaluation of the learned stop rule equals re-running it on the decoder, row by row."""

from __future__ import annotations

import numpy as np
import pytest

from stopbandit.bandit.arms import Arm
from stopbandit.bandit.learned_stop import LearnedInputs, LearnedStop
from stopbandit.bandit.stop_eval import evaluate, stop_data
from stopbandit.bandit.trace import counterfactual
from stopbandit.decoder.config import DecoderConfig
from stopbandit.decoder.hf import HFDecoder

EVERY = 4
CAP = 24
ARMS = (Arm("l0.5", 1.01, 0, 0, 0.5), Arm("l2", 1.01, 0, 0, 2.0), Arm("l8", 1.01, 0, 0, 8.0),
        Arm("l32", 1.01, 0, 0, 32.0), Arm("l8c12", 1.01, 12, 0, 8.0), Arm("l2t40", 0.40, 0, 0, 2.0),
        Arm("l4a2", 1.01, 0, 2, 4.0))


@pytest.fixture(scope="module")
def decoder(llama, tokenizer):
    config = DecoderConfig(probe_every=EVERY, max_answer_tokens=4, max_think_tokens=CAP, answer_end=(";",), batch_size=64)
    return HFDecoder(llama, tokenizer, config, device="cpu")


def test_learned_counterfactuals_equal_reruns(decoder, prompts):
    logged = decoder.run(prompts, Arm("lenient", 1.01, 0))
    traces = [r.trace for r in logged]
    # one context column: the prompt length (what the request features would carry)
    ctx = np.array([[len(p) / 10.0] for p in prompts])
    rule = LearnedStop(1, "agreement").fit(stop_data(traces, [None] * len(traces), ctx, "agreement"))
    assert rule.trained
    learned_reasons = revealed = 0
    for lam in (0.3, 3.0):
        rows = [(arm, i) for arm in ARMS for i in range(len(prompts))]
        inputs = LearnedInputs(rule, lam, ctx[[i for _, i in rows]])
        reruns = decoder.run([prompts[i] for _, i in rows], [a for a, _ in rows], inputs)
        exact = evaluate(traces, [r.answer for r in logged], ARMS, LearnedInputs(rule, lam, ctx))
        for k, ((arm, i), rerun) in enumerate(zip(rows, reruns)):
            cf = counterfactual(traces[i], arm, LearnedInputs(rule, lam, ctx[i : i + 1]))
            j = ARMS.index(arm)
            assert (cf is not None) == bool(exact.known[i, j])
            if cf is None:  # the stop lies past the lenient run's own (global budget) stop: not revealed
                continue
            revealed += 1
            assert (cf.stop_offset, cf.tokens, cf.answer, cf.reason) == (
                rerun.think_tokens, rerun.total_tokens, rerun.answer, rerun.stop_reason,
            ), f"{arm.name} λ={lam} on {traces[i].to_json()}"
            assert exact.tokens[i, j] == rerun.total_tokens
            assert exact.em[i, j] == (1.0 if rerun.answer.strip() == logged[i].answer.strip() else 0.0)
            learned_reasons += rerun.stop_reason == "learned"
    assert revealed >= len(ARMS) * len(prompts)  # of 2x that many
    assert learned_reasons >= 5, "the learned rule must actually stop some runs for this test to mean anything"


def test_learned_arm_without_rule_is_refused(decoder, prompts):
    with pytest.raises(Exception, match="learned"):
        decoder.run(prompts[:1], ARMS[0])
