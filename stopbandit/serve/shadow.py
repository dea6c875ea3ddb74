"""Shadow mode: serve a fixed baseline arm, log the policy's choice, learn from the baseline's trace.

Every request is logged as the *policy's* decision (its arm and propensity),
while the gateway serves the baseline (typically the most lenient arm, probes
on). The baseline's probe trace reveals the exact outcome of every arm at most
as lenient (:func:`stopbandit.bandit.trace.counterfactual`): its stop point,
tokens and answer. The decision is rewarded with that counterfactual outcome,
so the log reads as if the policy had served, and ``stopbandit replay
evaluate`` estimates the policy before it is switched on. The EM of the
policy's arm is known when the client sends the reference answer, or when the
policy's answer equals the served one; otherwise the decision is left
unrewarded (counted as ``unrevealed``).

``agreement``: the share of requests where the policy chose the baseline arm
(Personalizer's apprentice mode switches at about 75–85%).
"""

from __future__ import annotations

import threading
from typing import Any

from stopbandit.bandit.arms import Arm
from stopbandit.bandit.trace import ProbeTrace, counterfactual, em_of


class Shadow:
    def __init__(self, baseline: Arm) -> None:
        self.baseline = baseline
        self._lock = threading.Lock()
        self.requests = 0
        self.agreed = 0
        self.unrevealed = 0

    def record(self, chosen: Arm) -> None:
        with self._lock:
            self.requests += 1
            self.agreed += chosen.name == self.baseline.name

    @property
    def agreement(self) -> float | None:
        with self._lock:
            return self.agreed / self.requests if self.requests else None

    def outcome(self, trace: ProbeTrace | None, chosen: Arm, *, served_em: float, served_answer: str,
                served_tokens: int, reference: str | None, learned: Any = None) -> tuple[float, int] | None:
        """(EM, tokens) of the policy's arm on this request, or None when the trace does not tell.

        ``learned``: the learned stop rule's inputs of this decision, when the policy's arm reads it.
        """
        if chosen.name == self.baseline.name:
            return served_em, served_tokens
        if chosen.learned and learned is None:
            self._miss()
            return None
        cf = counterfactual(trace, chosen, learned if chosen.learned else None) if trace is not None else None
        if cf is None:
            self._miss()
            return None
        em = em_of(cf.answer, reference)
        if em is None:
            if cf.answer.strip() != served_answer.strip():
                self._miss()
                return None
            em = served_em
        return em, cf.tokens

    def _miss(self) -> None:
        with self._lock:
            self.unrevealed += 1

    def to_json(self) -> dict[str, object]:
        return {"baseline": self.baseline.name, "requests": self.requests, "agreement": self.agreement,
                "unrevealed": self.unrevealed}


__all__ = ["Shadow"]
