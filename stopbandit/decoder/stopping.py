"""Per-row stopping rule for a batch in which every row has its own arm.

Like Hugging Face ``StoppingCriteria``, the rule answers one boolean per row
(shape ``[batch]``), never one flag for the whole batch. It is evaluated at a
thinking offset ``s`` shared by every live row (all rows start thinking
together and advance one token per step) and decides, per row:

* ``end``        -- the model closed its reasoning itself at ``s``;
* ``confidence`` -- a probe ran at ``s`` and its trial-answer confidence is
  ``>= threshold`` (DEER, arXiv 2504.15895);
* ``agreement``  -- a probe ran at ``s`` and its trial answer ends a run of
  ``agreement`` equal trial answers (Dynasor, arXiv 2412.20993);
* ``learned``    -- a probe ran at ``s`` and the row's learned stop rule fires there
  (:mod:`stopbandit.bandit.learned_stop`);
* ``budget``     -- ``s`` reached the arm's ``max_think_tokens`` (when > 0) or
  the decoder's global cap.

Whether a probe fires is :func:`stopbandit.bandit.stoprule.fires`, the
definition every other consumer of the stop rule evaluates, here on per-row
tensors. When several reasons hold, the label follows the kernel
(:func:`stopbandit.bandit.stoprule.stops`), so that a counterfactual read
from a lenient trace names the same reason as a re-run: ``confidence`` or
``agreement`` when the firing probe lies below the arm's own cap, else
``end``, else ``budget`` (a probe firing exactly at the cap is a budget stop). The outcome (offset, answer, tokens) is the same whichever label a
stop gets; only in one corner -- the model closes its reasoning at a probe
offset where a probe passes, and the arm's cap is that offset -- can the two
labels differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from stopbandit.bandit.arms import Arm
from stopbandit.bandit.stoprule import AGREEMENT, BUDGET, CONFIDENCE, END, LEARNED, NONE, REASON_NAMES, fires


@dataclass(frozen=True)
class ArmStoppingCriteria:
    """Per live row: thresholds ``[batch]`` (float64, as the trace compares), caps ``[batch]`` (int64, 0 = no
    cap) and agreement windows ``[batch]`` (int64, 0 = off)."""

    thresholds: torch.Tensor
    caps: torch.Tensor
    max_think_tokens: int
    agreements: torch.Tensor | None = None

    @classmethod
    def from_arms(cls, arms: Sequence[Arm], max_think_tokens: int, device: torch.device | str = "cpu") -> ArmStoppingCriteria:
        return cls(
            torch.tensor([a.threshold for a in arms], dtype=torch.float64, device=device),
            torch.tensor([a.max_think_tokens for a in arms], dtype=torch.int64, device=device),
            max_think_tokens,
            torch.tensor([a.agreement for a in arms], dtype=torch.int64, device=device),
        )

    def select(self, rows: torch.Tensor) -> ArmStoppingCriteria:
        """The rule restricted to ``rows`` (indices into the current batch)."""
        agreements = None if self.agreements is None else self.agreements[rows]
        return ArmStoppingCriteria(self.thresholds[rows], self.caps[rows], self.max_think_tokens, agreements)

    def cap_reached(self, offset: int) -> torch.Tensor:
        """Rows whose arm's own cap is reached at ``offset``: bool ``[batch]``."""
        return (self.caps > 0) & (self.caps <= offset)

    def budget_spent(self, offset: int) -> torch.Tensor:
        """Rows that may think no further (arm cap or global cap): bool ``[batch]``."""
        capped = self.cap_reached(offset)
        if offset >= self.max_think_tokens:
            return torch.ones_like(capped)
        return capped

    def reasons(self, offset: int, confidence: torch.Tensor, ended: torch.Tensor,
                streak: torch.Tensor | None = None, learned: torch.Tensor | None = None) -> torch.Tensor:
        """Stop reason per row (int64 ``[batch]``: NONE/CONFIDENCE/AGREEMENT/LEARNED/BUDGET/END).

        ``confidence``: float ``[batch]``, NaN where no probe ran at ``offset``.
        ``ended``: bool ``[batch]``, the model closed its reasoning at ``offset``.
        ``streak``: int64 ``[batch]``, how many consecutive probes up to the one
        at ``offset`` gave its trial answer (0 where no probe ran; None: no
        row stops on agreement). ``learned``: bool ``[batch]``, the row's learned
        stop rule fires at the probe at ``offset`` (None: no row has one).
        """
        under_cap = ~self.cap_reached(offset)
        agreements = self.agreements if self.agreements is not None else torch.zeros_like(self.caps)
        streak = streak if streak is not None else torch.zeros_like(self.caps)
        on_conf, on_agree = fires(confidence, streak, self.thresholds, agreements)  # NaN compares False
        out = torch.full_like(self.caps, NONE)
        out = torch.where(self.budget_spent(offset), torch.full_like(out, BUDGET), out)
        out = torch.where(ended, torch.full_like(out, END), out)
        if learned is not None:
            out = torch.where(learned & under_cap, torch.full_like(out, LEARNED), out)
        out = torch.where(on_agree & under_cap, torch.full_like(out, AGREEMENT), out)
        return torch.where(on_conf & under_cap, torch.full_like(out, CONFIDENCE), out)

    def __call__(self, offset: int, confidence: torch.Tensor, ended: torch.Tensor,
                 streak: torch.Tensor | None = None, learned: torch.Tensor | None = None) -> torch.Tensor:
        """Bool ``[batch]``: which rows stop thinking at ``offset``."""
        return self.reasons(offset, confidence, ended, streak, learned) != NONE


__all__ = ["AGREEMENT", "BUDGET", "CONFIDENCE", "END", "LEARNED", "NONE", "REASON_NAMES", "ArmStoppingCriteria"]
