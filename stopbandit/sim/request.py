"""A simulated request and its latent reasoning process.

A request fixes everything a greedy decoder would do on it, so every arm sees
the same reasoning, the same trial answers and the same confidences (greedy
decoding semantics; probes are side branches that never alter the reasoning):

* ``think_len`` -- tokens of the full reasoning (the model closes it there);
* probes sit at offsets ``k·probe_spacing`` for ``k = 1 … n_probes`` with
  ``k·probe_spacing < think_len``; ``probe_confidence[k-1]`` is the confidence
  of the trial answer at probe ``k``;
* the answer at any offset ``s`` (probe or not) is, in order of precedence:
  the relapsed wrong answer if ``s >= relapse_offset``; the settled answer if
  ``s >= settle_offset`` (the reference when ``solvable``, else a fixed wrong
  one); otherwise the tentative wrong answer of segment ``s // probe_spacing``
  (``segment_answer``), which flips at some probes before the answer settles;
* every trial answer (and the final answer) is ``answer_tokens`` long.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import numpy as np

from stopbandit.bandit.trace import Probe
from stopbandit.sim.answers import RELAPSED, REFERENCE, SETTLED_WRONG, answer_text


@dataclass(frozen=True, slots=True, eq=False)
class SimRequest:
    """One simulated request (compare requests by ``request_id``; arrays are read-only).

    ``difficulty`` is latent (in [0, 1]); a policy must not read it, nor any
    field below ``reference`` -- they are the simulator's ground truth.
    """

    request_id: str
    index: int
    prompt: str
    domain: str
    difficulty: float
    think_len: int
    reference: str
    solvable: bool
    degraded: bool
    settle_offset: int
    relapse_offset: int
    answer_tokens: int
    probe_spacing: int
    probe_confidence: np.ndarray  # shape (n_probes,), float64 in [0, 1], rounded to 6 decimals
    segment_answer: np.ndarray  # shape (n_probes + 1,), int, tentative wrong-answer code per segment
    answer_base: int
    answer_style: str
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_probes(self) -> int:
        return int(self.probe_confidence.shape[0])

    @property
    def probe_offsets(self) -> np.ndarray:
        """Offsets of the probes, shape (n_probes,)."""
        return np.arange(1, self.n_probes + 1, dtype=np.int64) * self.probe_spacing

    def answer_code(self, offset: int) -> int:
        """Code (see :mod:`stopbandit.sim.answers`) of the answer given after ``offset`` thinking tokens."""
        if offset >= self.relapse_offset:
            return RELAPSED
        if offset >= self.settle_offset:
            return REFERENCE if self.solvable else SETTLED_WRONG
        return int(self.segment_answer[min(offset // self.probe_spacing, self.n_probes)])

    def answer_at(self, offset: int) -> str:
        """Text of the answer given after ``offset`` thinking tokens (0 <= offset <= think_len)."""
        return answer_text(self.answer_base, self.answer_code(offset), self.answer_style)

    def running_max(self) -> list[float]:
        """Running maximum of the probe confidences (cached): entry ``k`` is ``max(conf[:k+1])``.

        The first probe reaching a threshold ``t`` is the first index where it reaches ``t``.
        """
        cached = self._cache.get("running_max")
        if cached is None:
            cached = self._cache["running_max"] = list(accumulate(self.probe_confidence.tolist(), max))
        return cached

    def probes(self, count: int | None = None) -> tuple[Probe, ...]:
        """The first ``count`` probes (all when None), built once and cached: runs slice them.

        Built lazily up to the deepest prefix asked for, since most runs stop
        well before the end; answer texts are rendered once per distinct answer.
        """
        want = self.n_probes if count is None else max(0, min(count, self.n_probes))
        cached: tuple[Probe, ...] = self._cache.get("probes", ())
        if len(cached) < want:
            have, spacing = len(cached), self.probe_spacing
            settle, relapse = self.settle_offset, self.relapse_offset
            settled = REFERENCE if self.solvable else SETTLED_WRONG
            offsets = range((have + 1) * spacing, (want + 1) * spacing, spacing)
            codes = [
                RELAPSED if off >= relapse else settled if off >= settle else seg
                for off, seg in zip(offsets, self.segment_answer[have + 1 : want + 1].tolist())
            ]
            texts: dict[int, str] = self._cache.setdefault("texts", {})
            for code in set(codes).difference(texts):
                texts[code] = answer_text(self.answer_base, code, self.answer_style)
            n = self.answer_tokens
            confs = self.probe_confidence[have:want].tolist()
            cached = cached + tuple(Probe(o, c, texts[k], n) for o, c, k in zip(offsets, confs, codes))
            self._cache["probes"] = cached
        return cached if len(cached) == want else cached[:want]


def answer_codes(
    offsets: np.ndarray,
    settle: np.ndarray,
    relapse: np.ndarray,
    solvable: np.ndarray,
    segment_codes: np.ndarray,
) -> np.ndarray:
    """Vectorised :meth:`SimRequest.answer_code`: all arrays broadcast to the shape of ``offsets``.

    ``segment_codes`` is the tentative code of the segment each offset lies in.
    """
    settled = np.where(solvable, REFERENCE, SETTLED_WRONG)
    return np.where(offsets >= relapse, RELAPSED, np.where(offsets >= settle, settled, segment_codes))


__all__ = ["SimRequest", "answer_codes"]
