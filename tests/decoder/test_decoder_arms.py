"""Per-row arms: batched equals row-alone, stop rules, token accounting, and dropped rows."""

from __future__ import annotations

import math

import pytest
import torch

from stopbandit.bandit.arms import Arm
from stopbandit.decoder.config import DecoderConfig
from stopbandit.decoder.hf import HFDecoder

EVERY = 4
CAP = 24


@pytest.fixture(scope="module")
def decoder(llama, tokenizer):
    config = DecoderConfig(probe_every=EVERY, max_answer_tokens=4, max_think_tokens=CAP, answer_end=(";",))
    return HFDecoder(llama, tokenizer, config, device="cpu")


def _arms() -> list[Arm]:
    return [
        Arm("full", 1.01, 0),
        Arm("t30", 0.30, 0),
        Arm("cap8", 1.01, 8),
        Arm("t25c12", 0.25, 12),
        Arm("t40", 0.40, 0),
        Arm("cap4", 1.01, 4),
        Arm("t20", 0.20, 16),
        Arm("full2", 2.0, 0),
    ]


def _key(result):
    trace = result.trace
    return (
        result.think_ids,
        result.answer_ids,
        result.stop_reason,
        result.total_tokens,
        [(p.offset, p.answer, p.tokens) for p in trace.probes],
    )


def test_per_row_arms_batched_equal_alone(decoder, prompts):
    arms = _arms()
    batched = decoder.run(prompts, arms)
    for prompt, arm, got in zip(prompts, arms, batched):
        (alone,) = decoder.run([prompt], arm)
        assert _key(got) == _key(alone), f"{prompt!r} under {arm.name}"
        for a, b in zip(got.trace.probes, alone.trace.probes):
            assert math.isclose(a.confidence, b.confidence, rel_tol=1e-5, abs_tol=1e-6)


def test_each_row_obeys_its_own_arm(decoder, prompts):
    arms = _arms()
    for arm, result in zip(arms, decoder.run(prompts, arms)):
        trace = result.trace
        assert result.total_tokens == trace.total_tokens
        assert result.think_tokens == trace.stop_offset == len(result.think_ids)
        assert result.probe_tokens == sum(p.tokens for p in trace.probes if p.offset < trace.stop_offset)
        assert [p.offset for p in trace.probes] == list(range(EVERY, trace.stop_offset + 1, EVERY))
        assert result.think_tokens <= min(arm.cap, CAP)
        before = [p for p in trace.probes if p.offset < trace.stop_offset]
        assert all(p.confidence < arm.threshold for p in before), "a passing probe must stop the row"
        if result.stop_reason == "confidence":
            last = trace.probes[-1]
            assert last.offset == result.think_tokens and last.confidence >= arm.threshold
            assert (last.answer, last.tokens) == (result.answer, result.answer_tokens)  # probe answer reused
        elif result.stop_reason == "budget":
            assert result.think_tokens in (arm.max_think_tokens, CAP)


def test_budget_answer_equals_probe_answer_at_same_offset(decoder, prompts):
    """The answer at offset s is the same whether reached by budget or seen by a probe."""
    lenient = decoder.run(prompts, Arm("full", 1.01))
    capped = decoder.run(prompts, Arm("cap12", 1.01, 12))
    for long_run, short_run in zip(lenient, capped):
        if long_run.think_tokens < 12:
            continue
        probe = next(p for p in long_run.trace.probes if p.offset == 12)
        assert short_run.think_tokens == 12
        assert (short_run.answer, short_run.answer_tokens) == (probe.answer, probe.tokens)


def test_stopped_rows_leave_the_batch(decoder, prompts):
    """After a row stops, the main reasoning steps run on fewer rows."""
    sizes: list[int] = []

    def record(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] == 1:
            sizes.append(ids.shape[0])

    arms = [Arm("cap4", 1.01, 4), Arm("full", 1.01, 0), Arm("cap4b", 1.01, 4), Arm("cap8", 1.01, 8)]
    handle = decoder.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        results = decoder.run(prompts[:4], arms)
    finally:
        handle.remove()
    assert [r.think_tokens for r in results][0] == 4
    assert 4 in sizes and 1 in sizes  # full batch first, the lone lenient row last
    assert max(sizes) == 4


def test_probes_never_alter_the_reasoning(decoder, prompts):
    """Probing every 4 tokens leaves the reasoning identical to a run without probes."""
    plain = HFDecoder(decoder.model, decoder.tokenizer, decoder.config.replace(probe_every=0), device="cpu")
    with_probes = decoder.run(prompts, Arm("full", 1.01))
    without = plain.run(prompts, Arm("full", 1.01))
    for a, b in zip(with_probes, without):
        assert a.think_ids == b.think_ids
        assert (a.answer_ids, a.stop_reason) == (b.answer_ids, b.stop_reason)
        assert b.probe_tokens == 0 and a.probe_tokens > 0


def test_markers_schedule_probes(llama, tokenizer, prompts):
    config = DecoderConfig(probe_every=0, probe_markers=("q",), max_answer_tokens=3, max_think_tokens=CAP)
    decoder = HFDecoder(llama, tokenizer, config, device="cpu")
    q = tokenizer.encode("q", add_special_tokens=False)[0]
    for result in decoder.run(prompts, Arm("full", 1.01)):
        expected = [s for s in range(1, result.think_tokens + 1) if result.think_ids[s - 1] == q]
        assert [p.offset for p in result.trace.probes] == expected


def test_multi_token_delimiter_natural_end(llama, tokenizer):
    """A row that writes a two-token delimiter itself stops before it and answers as greedy decoding would."""
    config = DecoderConfig(think_end="</think>", probe_every=0, max_answer_tokens=3, max_think_tokens=30)
    free = HFDecoder(llama, tokenizer, config, device="cpu").run(["hello world"], Arm("full", 1.01))[0]
    text = tokenizer.decode(list(free.think_ids))
    # a two-character sequence the model writes on its own, whose first character is new at that point
    pair = next(text[i : i + 2] for i in range(4, len(text) - 1) if text[i] != text[i + 1] and text[i] not in text[:i])
    natural_at = text.index(pair)
    two = HFDecoder(llama, tokenizer, config.replace(think_end=pair), device="cpu")
    ended = two.run(["hello world"], Arm("full", 1.01))[0]
    assert ended.stop_reason == "end" and ended.think_tokens == natural_at
    assert ended.think_ids == free.think_ids[:natural_at]
    context = two.encode("hello world") + list(ended.think_ids) + list(two.spec.think_end)
    reference = llama.generate(
        torch.tensor([context]), attention_mask=torch.ones(1, len(context), dtype=torch.long),
        do_sample=False, max_new_tokens=3, eos_token_id=sorted(two.spec.answer_end), pad_token_id=0,
    )[0, len(context):].tolist()
    assert reference[: len(ended.answer_ids)] == list(ended.answer_ids)


def test_answer_prefix_is_appended_not_counted(llama, tokenizer, prompts):
    config = DecoderConfig(answer_prefix="=", probe_every=0, max_answer_tokens=3, max_think_tokens=6)
    results = HFDecoder(llama, tokenizer, config, device="cpu").run(prompts[:3], Arm("full", 1.01))
    for r in results:
        assert r.total_tokens == r.think_tokens + r.answer_tokens == 6 + len(r.answer_ids)


def test_stopping_rule_is_per_row():
    from stopbandit.decoder.stopping import ArmStoppingCriteria, BUDGET, CONFIDENCE, END, NONE

    arms = [Arm("a", 0.5, 0), Arm("b", 0.9, 8), Arm("c", 1.01, 0), Arm("d", 0.2, 0)]
    rule = ArmStoppingCriteria.from_arms(arms, max_think_tokens=100)
    confidence = torch.tensor([0.6, 0.6, 0.99, float("nan")])
    ended = torch.tensor([False, False, False, True])
    stop = rule(8, confidence, ended)
    assert stop.dtype == torch.bool and stop.shape == (4,)
    assert stop.tolist() == [True, True, False, True]
    assert rule.reasons(8, confidence, ended).tolist() == [CONFIDENCE, BUDGET, NONE, END]
    assert rule(100, torch.full((4,), float("nan")), torch.zeros(4, dtype=torch.bool)).all()
    # labels as trace.stop_point gives them: a probe passing at the arm's cap is a budget stop,
    # a probe passing below the cap wins over a natural end
    at_cap = rule.reasons(8, torch.tensor([0.1, 0.95, 0.1, 0.1]), torch.tensor([False, False, False, False]))
    assert at_cap.tolist()[1] == BUDGET
    both = rule.reasons(4, torch.tensor([0.7, 0.1, 0.1, 0.1]), torch.tensor([True, True, False, False]))
    assert both.tolist() == [CONFIDENCE, END, NONE, NONE]
    assert rule.select(torch.tensor([2])).thresholds.tolist() == [pytest.approx(1.01)]
