"""Early-exit greedy decoder: one batch, one arm per row, probes as side branches.

Every live row advances one reasoning token per step through a shared KV
cache (left padding, attention mask, position ids = cumsum(mask) - 1, exactly
as ``generate`` builds them, so a row decodes the same tokens batched or
alone). At thinking offset ``s`` (``s`` reasoning tokens generated, the cache
holding ``prompt + reasoning[:s]``):

1. rows at a probe point (:class:`ProbeSchedule`), rows whose budget is spent
   and rows whose next token closes the reasoning get a *trial answer*: a
   side branch forks their cache rows, appends ``think_end + answer_prefix``
   and decodes greedily up to ``max_answer_tokens`` or an answer-end token.
   Confidence = mean probability of the trial-answer tokens (DEER, arXiv
   2504.15895). The main cache is never modified by a branch.
2. :class:`ArmStoppingCriteria` returns one boolean per row; a stopped row's
   answer *is* its trial answer at ``s`` -- the same computation whether it
   stopped on confidence or agreement (the probe's answer is reused), budget
   or end.
3. Stopped rows leave the batch (their cache rows are dropped), the others
   feed their next token.

Token accounting and the returned :class:`ProbeTrace` follow
:mod:`stopbandit.bandit.trace`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from stopbandit.bandit.arms import Arm
from stopbandit.bandit.learned_stop import LearnedInputs
from stopbandit.bandit.stoprule import ProbeBatch, learned_fires, streak_of
from stopbandit.bandit.trace import Probe, ProbeTrace
from stopbandit.decoder.config import DecoderConfig
from stopbandit.decoder.kv import cache_keyword, fork_rows, keep_rows, new_cache
from stopbandit.decoder.result import DecodeResult
from stopbandit.decoder.schedule import ProbeSchedule
from stopbandit.decoder.stopping import NONE, REASON_NAMES, ArmStoppingCriteria
from stopbandit.decoder.tokens import TokenSpec
from stopbandit.errors import InputError


@dataclass(frozen=True, slots=True)
class _Trial:
    """A greedy trial answer: its token ids, mean token probability, and whether an end token closed it."""

    ids: tuple[int, ...]
    confidence: float
    complete: bool


class EarlyExitDecoder:
    """Token-level early-exit decoder around a Hugging Face causal LM.

    ``model``: any ``*ForCausalLM`` (its device and dtype are used as they are).
    ``detokenize``: ids -> text for answers (the HF adapter passes the tokenizer's decode).
    """

    def __init__(
        self,
        model: Any,
        spec: TokenSpec,
        config: DecoderConfig,
        detokenize: Callable[[Sequence[int]], str] | None = None,
    ) -> None:
        self.model = model
        self.spec = spec
        self.config = config
        self.schedule = ProbeSchedule(config.probe_spacing, spec.markers)
        self._detokenize = detokenize or (lambda ids: " ".join(str(i) for i in ids))
        params = inspect.signature(model.forward).parameters
        self._keeps_last = "logits_to_keep" in params
        self._cache_kw = cache_keyword(model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def run(self, prompts: Sequence[Sequence[int]], arms: Sequence[Arm],
            learned: LearnedInputs | None = None) -> list[DecodeResult]:
        """Decode one batch: ``prompts[i]`` (token ids) under ``arms[i]``; results in input order.

        ``learned`` (the learned stop rule, λ, one context row per prompt) is required when an arm has a
        learned rule; at each probe of such a row the rule reads the row's probes so far
        (:func:`stopbandit.bandit.stoprule.learned_fires`, the kernel's own definition).
        """
        if len(prompts) == 0:
            raise InputError("prompts must hold at least one prompt, got an empty batch")
        if len(arms) != len(prompts):
            raise InputError(f"arms must give one arm per prompt: got {len(arms)} arms for {len(prompts)} prompts")
        for i, arm in enumerate(arms):
            if not isinstance(arm, Arm):
                raise InputError(f"arms[{i}] must be an Arm, got {type(arm).__name__}")
        for i, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise InputError(f"prompts[{i}] is empty; every prompt needs at least one token")
        if any(a.learned for a in arms):
            if learned is None:
                raise InputError("arms with a learned stop rule need learned= (rule, λ, one context row per prompt)")
            if learned.context.shape[0] != len(prompts):
                raise InputError(f"learned.context needs one row per prompt ({len(prompts)}), "
                                 f"got {learned.context.shape[0]}")
        with torch.inference_mode():
            return self._run([list(map(int, p)) for p in prompts], list(arms), learned)

    # -- main loop -----------------------------------------------------------------

    def _run(self, prompts: list[list[int]], arms: list[Arm], learned: LearnedInputs | None) -> list[DecodeResult]:
        dev = self.device
        batch = len(prompts)
        width = max(len(p) for p in prompts)
        ids = torch.full((batch, width), self.spec.pad_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt) :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)

        cache = new_cache(self.model)
        logits = self._forward(ids, mask, positions, cache, last_only=True)
        nxt = logits[:, -1].float().argmax(-1)  # [live]
        last_pos = positions[:, -1]  # [live]: position of the last token in the cache

        live = list(range(batch))  # original index of each live row
        # the rule's tensors are tiny: keep them on the CPU in float64, the precision trace.stop_point compares in
        rule = ArmStoppingCriteria.from_arms(arms, self.config.max_think_tokens)
        reasoning: list[list[int]] = [[] for _ in range(batch)]
        probes: list[list[Probe]] = [[] for _ in range(batch)]
        results: list[DecodeResult | None] = [None] * batch
        end0, multi_end = self.spec.think_end[0], len(self.spec.think_end) > 1
        offset = 0
        while True:
            n = len(live)
            upcoming = nxt.tolist()
            ended = [t in self.spec.think_stop or (t == end0 and not multi_end) for t in upcoming]
            maybe_end = [multi_end and t == end0 and not e for t, e in zip(upcoming, ended)]
            probing = [self.schedule.at(reasoning[r]) for r in live]
            spent = rule.budget_spent(offset).tolist()
            side = [i for i in range(n) if probing[i] or ended[i] or maybe_end[i] or spent[i]]
            trials: dict[int, _Trial] = {}
            keep = list(range(n))
            if side:  # otherwise no row can stop here: no probe, no end, no budget
                found, verified = self._trials(
                    cache,
                    mask,
                    last_pos,
                    side,
                    check_end=[maybe_end[i] for i in side],
                    optional=[maybe_end[i] and not (probing[i] or spent[i]) for i in side],
                )
                for i, trial, ok in zip(side, found, verified):
                    ended[i] = ended[i] or ok
                    if trial is not None:
                        trials[i] = trial
                confidence = [math.nan] * n
                streak = [0] * n
                on_learned = [False] * n
                for i in range(n):
                    if probing[i]:
                        trial = trials[i]
                        confidence[i] = trial.confidence
                        row = probes[live[i]]
                        row.append(Probe(offset, trial.confidence, self._text(trial), len(trial.ids)))
                        streak[i] = streak_of([p.answer for p in row])
                        arm = arms[live[i]]
                        if arm.learned and learned is not None:
                            row_in = replace(learned, context=learned.context[live[i] : live[i] + 1])
                            on_learned[i] = bool(learned_fires(ProbeBatch.of([row]), (arm,), row_in)[-1, 0])
                reasons = rule.reasons(
                    offset, torch.tensor(confidence, dtype=torch.float64), torch.tensor(ended, dtype=torch.bool),
                    torch.tensor(streak, dtype=torch.int64), torch.tensor(on_learned, dtype=torch.bool),
                ).tolist()
                keep = [i for i in range(n) if reasons[i] == NONE]
                for i in range(n):
                    if reasons[i] != NONE:
                        r = live[i]
                        reason = REASON_NAMES[reasons[i]]
                        results[r] = self._result(arms[r], reasoning[r], probes[r], offset, reason, trials[i])
            if not keep:
                break
            if len(keep) < n:
                rule = rule.select(torch.tensor(keep, dtype=torch.long))
                rows = torch.tensor(keep, dtype=torch.long, device=dev)
                keep_rows(cache, rows)
                mask, last_pos, nxt = mask[rows], last_pos[rows], nxt[rows]
                live = [live[i] for i in keep]
            for r, i in zip(live, keep):
                reasoning[r].append(upcoming[i])
            mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=-1)
            last_pos = last_pos + 1
            logits = self._forward(nxt[:, None], mask, last_pos[:, None], cache, last_only=True)
            nxt = logits[:, -1].float().argmax(-1)
            offset += 1
        return [r for r in results if r is not None]

    # -- side branches -------------------------------------------------------------

    def _trials(
        self,
        cache: Any,
        mask: torch.Tensor,
        last_pos: torch.Tensor,
        rows: list[int],
        check_end: list[bool],
        optional: list[bool],
    ) -> tuple[list[_Trial | None], list[bool]]:
        """Trial answers for ``rows`` of the live batch, in a forked cache.

        ``check_end[j]``: the row's next token starts a multi-token delimiter;
        report whether greedy decoding would emit the whole delimiter
        (verified from the branch's logits over the appended delimiter).
        ``optional[j]``: the row needs its answer only if that check passes;
        otherwise it leaves the branch right after the delimiter (no answer
        tokens generated).
        """
        dev = mask.device
        k = len(rows)
        index = torch.tensor(rows, dtype=torch.long, device=dev)
        branch = fork_rows(cache, index)
        chunk = self.spec.probe_chunk
        width = len(chunk)
        inputs = torch.tensor(chunk, dtype=torch.long, device=dev).repeat(k, 1)
        bmask = torch.cat([mask[index], mask.new_ones((k, width))], dim=-1)
        bpos = last_pos[index][:, None] + torch.arange(1, width + 1, device=dev)
        need_all = any(check_end)
        logits = self._forward(inputs, bmask, bpos, branch, last_only=not need_all).float()

        verified = [False] * k
        if need_all:
            tail = torch.tensor(self.spec.think_end[1:], dtype=torch.long, device=dev)
            agree = (logits[:, : len(tail)].argmax(-1) == tail).all(-1).tolist()
            verified = [c and a for c, a in zip(check_end, agree)]
        step_logits = logits[:, -1]
        cur_pos = bpos[:, -1]
        current = [j for j in range(k) if not (optional[j] and not verified[j])]
        if len(current) < k:
            if not current:
                return [None] * k, verified
            sel = torch.tensor(current, dtype=torch.long, device=dev)
            keep_rows(branch, sel)
            bmask, cur_pos, step_logits = bmask[sel], cur_pos[sel], step_logits[sel]

        tokens: list[list[int]] = [[] for _ in range(k)]
        probs: list[list[float]] = [[] for _ in range(k)]
        done = [False] * k
        for step in range(self.config.max_answer_tokens):
            chosen = step_logits.argmax(-1)
            p = torch.softmax(step_logits, dim=-1).gather(-1, chosen[:, None]).squeeze(-1)
            for j, t, q in zip(current, chosen.tolist(), p.tolist()):
                tokens[j].append(t)
                probs[j].append(q)
                done[j] = t in self.spec.answer_end
            if step == self.config.max_answer_tokens - 1:
                break
            still = [c for c, j in enumerate(current) if not done[j]]
            if not still:
                break
            if len(still) < len(current):
                sel = torch.tensor(still, dtype=torch.long, device=dev)
                keep_rows(branch, sel)
                bmask, cur_pos, chosen = bmask[sel], cur_pos[sel], chosen[sel]
                current = [current[c] for c in still]
            bmask = torch.cat([bmask, bmask.new_ones((len(current), 1))], dim=-1)
            cur_pos = cur_pos + 1
            step_logits = self._forward(chosen[:, None], bmask, cur_pos[:, None], branch, last_only=True)[:, -1].float()

        out: list[_Trial | None] = [None] * k
        for j in range(k):
            if tokens[j]:
                out[j] = _Trial(tuple(tokens[j]), sum(probs[j]) / len(probs[j]), done[j])
        return out, verified

    # -- helpers -------------------------------------------------------------------

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any, last_only: bool) -> torch.Tensor:
        """Logits ``[rows, len, vocab]`` (``len`` = 1 when ``last_only`` and the model can skip the rest)."""
        extra = {"logits_to_keep": 1} if last_only and self._keeps_last else {}
        extra[self._cache_kw] = cache
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **extra,
        )
        return out.logits

    def _text(self, trial: _Trial) -> str:
        """Answer text: the trial's tokens without the answer-end token that closed it."""
        ids = trial.ids[:-1] if trial.complete else trial.ids
        return self._detokenize(list(ids))

    def _result(
        self, arm: Arm, reasoning: list[int], probes: list[Probe], offset: int, reason: str, trial: _Trial
    ) -> DecodeResult:
        text = self._text(trial)
        trace = ProbeTrace(tuple(probes), offset, reason, text, len(trial.ids))
        return DecodeResult(
            arm=arm,
            answer=text,
            think_tokens=offset,
            answer_tokens=len(trial.ids),
            probe_tokens=sum(p.tokens for p in probes if p.offset < offset),
            stop_reason=reason,
            answer_complete=trial.complete,
            trace=trace,
            think_ids=tuple(reasoning),
            answer_ids=trial.ids,
        )


__all__ = ["EarlyExitDecoder"]
