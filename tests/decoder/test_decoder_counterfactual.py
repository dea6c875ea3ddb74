"""A lenient run's probe trace reveals exactly what re-running each stricter arm yields.

Probes every 4 tokens and caps that are multiples of 4 put a probe at every
cap, so budget arms are revealed as well as threshold arms.
"""

from __future__ import annotations

import itertools

import pytest

from stopbandit.bandit.arms import Arm
from stopbandit.bandit.trace import counterfactual
from stopbandit.decoder.config import DecoderConfig
from stopbandit.decoder.hf import HFDecoder

EVERY = 4
CAP = 24
THRESHOLDS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 1.01)
CAPS = (0, 4, 8, 12, 16, 20)


@pytest.fixture(scope="module")
def decoder(llama, tokenizer):
    config = DecoderConfig(probe_every=EVERY, max_answer_tokens=4, max_think_tokens=CAP, answer_end=(";",), batch_size=64)
    return HFDecoder(llama, tokenizer, config, device="cpu")


def _grid() -> list[Arm]:
    return [Arm(f"t{int(t * 100)}c{c}", t, c) for t, c in itertools.product(THRESHOLDS, CAPS)]


@pytest.mark.parametrize("lenient", [Arm("lenient", 1.01, 0), Arm("mid", 0.45, 16)], ids=lambda a: a.name)
def test_counterfactuals_equal_reruns(decoder, prompts, lenient):
    logged = decoder.run(prompts, lenient)
    stricter = [a for a in _grid() if a.at_most_as_lenient_as(lenient)]
    assert len(stricter) >= 20
    # every stricter arm re-run on every prompt, many arms per batch (per-row arms)
    rows = [(arm, prompt) for arm in stricter for prompt in prompts]
    reruns = decoder.run([p for _, p in rows], [a for a, _ in rows])
    revealed = 0
    for k, arm in enumerate(stricter):
        for log, rerun in zip(logged, reruns[k * len(prompts) : (k + 1) * len(prompts)]):
            for probe in log.trace.probes:  # guard: no threshold sits within float noise of a confidence
                assert abs(probe.confidence - arm.threshold) > 1e-4
            cf = counterfactual(log.trace, arm)
            if arm.cap <= log.think_tokens:
                assert cf is not None, f"cap {arm.max_think_tokens} lies on a probe and must be revealed"
            if cf is None:
                continue
            revealed += 1
            assert (cf.stop_offset, cf.tokens, cf.answer, cf.reason) == (
                rerun.think_tokens,
                rerun.total_tokens,
                rerun.answer,
                rerun.stop_reason,
            ), f"{arm.name} on {log.trace.to_json()}"
    assert revealed >= len(stricter) * len(prompts) // 2


AGREEMENT_ARMS = tuple(Arm(f"k{k}c{c}t{int(t * 100)}", t, c, k)
                       for k in (2, 3, 4) for c in (0, 8, 16) for t in (0.3, 1.01))


@pytest.mark.parametrize("lenient", [Arm("lenient", 1.01, 0), Arm("k4", 1.01, 0, 4)], ids=lambda a: a.name)
def test_agreement_counterfactuals_equal_reruns(decoder, prompts, lenient):
    """Agreement arms (Dynasor's window): a lenient trace reveals them exactly, as a re-run decodes them."""
    logged = decoder.run(prompts, lenient)
    stricter = [a for a in AGREEMENT_ARMS if a.at_most_as_lenient_as(lenient)]
    rows = [(arm, prompt) for arm in stricter for prompt in prompts]
    reruns = decoder.run([p for _, p in rows], [a for a, _ in rows])
    revealed = agreed = 0
    for k, arm in enumerate(stricter):
        for log, rerun in zip(logged, reruns[k * len(prompts) : (k + 1) * len(prompts)]):
            for probe in log.trace.probes:
                assert abs(probe.confidence - arm.threshold) > 1e-4
            cf = counterfactual(log.trace, arm)
            if arm.cap <= log.think_tokens:
                assert cf is not None
            if cf is None:
                continue
            revealed += 1
            agreed += rerun.stop_reason == "agreement"
            assert (cf.stop_offset, cf.tokens, cf.answer, cf.reason) == (
                rerun.think_tokens, rerun.total_tokens, rerun.answer, rerun.stop_reason,
            ), f"{arm.name} on {log.trace.to_json()}"
    assert revealed >= len(stricter) * len(prompts) // 2
    assert agreed > 0


def test_stopping_criteria_stop_rows_on_agreement_below_their_cap():
    import torch

    from stopbandit.decoder.stopping import AGREEMENT, CONFIDENCE, NONE, ArmStoppingCriteria

    arms = [Arm("k2", 1.01, 0, 2), Arm("k3", 1.01, 0, 3), Arm("k2c8", 1.01, 8, 2), Arm("k2t5", 0.5, 0, 2)]
    rule = ArmStoppingCriteria.from_arms(arms, 100)
    conf = torch.tensor([0.1, 0.1, 0.1, 0.9], dtype=torch.float64)
    got = rule.reasons(8, conf, torch.zeros(4, dtype=torch.bool), torch.tensor([2, 2, 2, 2]))
    assert got.tolist() == [AGREEMENT, NONE, 2, CONFIDENCE]  # k2c8: the cap is reached, a budget stop
    assert rule.select(torch.tensor([1])).reasons(8, conf[1:2], torch.zeros(1, dtype=torch.bool),
                                                  torch.tensor([3])).tolist() == [AGREEMENT]
