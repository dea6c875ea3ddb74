"""Online training of the learned stop rule from a Selector's traced rewards.

A reward that carries a probe trace of a run that reached the end of its
reasoning is a set of training rows for the learned stop rule
(:mod:`stopbandit.bandit.learned_stop`): one per probe, labelled

* ``graded`` when the reward gives the reference answer: is the trial answer at
  this probe (and the run's final answer) the reference;
* ``agreement`` otherwise: is the trial answer at this probe the run's own
  final answer (the final answer is then right by construction).

``learning.stop_label`` picks the labels (``auto``: graded where a reference
is given, agreement elsewhere; ``graded``: graded rewards only; ``agreement``:
every trace against its own end); :attr:`StopLearner.labelled` counts the
traces that went each way. A trace stopped before the end is not used: the
tokens thinking on would have cost are not known from it.

Rows are buffered and fitted every ``learning.stop_batch`` traces
(:meth:`~stopbandit.bandit.learned_stop.LearnedStop.fit`, which carries the
weights' precision from batch to batch). The rule in use is replaced by an
updated copy, never changed in place, so a reader always sees one consistent
rule. λ is not part of the rule: :meth:`StopLearner.inputs` pairs the rule
with the λ of the moment. The buffer is not part of a snapshot (at most
``stop_batch − 1`` traces are not yet in a stored rule).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stopbandit.bandit.arms import ArmSet
from stopbandit.bandit.learned_stop import CONTEXT_FEATURES, LearnedInputs, LearnedStop, stop_context
from stopbandit.bandit.stop_eval import labelled_stop_data
from stopbandit.bandit.trace import ProbeTrace
from stopbandit.errors import SnapshotError

log = logging.getLogger("stopbandit.selector")


class StopLearner:
    """The serving copy of the learned stop rule and its online training (thread-safe)."""

    def __init__(self, *, label: str = "auto", batch: int = 16, train: bool = True, token_scale: float = 1000.0,
                 rule: LearnedStop | None = None) -> None:
        self.label, self.batch, self.train, self.token_scale = label, batch, train, token_scale
        self._rule = rule if rule is not None else LearnedStop(len(CONTEXT_FEATURES), "graded")
        self._lock = threading.Lock()
        self._traces: list[ProbeTrace] = []
        self._refs: list[str | None] = []
        self._ctx: list[np.ndarray] = []
        self.labelled = {"graded": 0, "agreement": 0, "unused": 0}
        self.updates = 0
        self.failed = 0  # batches that could not be fitted (the rule in use stays)

    @classmethod
    def for_selector(cls, arms: ArmSet, learning: Any, token_scale: float) -> StopLearner | None:
        """The learner a Selector with these arms and ``[learning]`` settings runs, None when it needs none."""
        learns = any(a.learned > 0 for a in arms)
        mode = learning.stop_rule
        if mode == "on" or (mode == "auto" and learns):
            return cls(label=learning.stop_label, batch=learning.stop_batch, train=True, token_scale=token_scale)
        if learns:  # "off": learned arms read the rule a snapshot brings, never trained here
            return cls(label=learning.stop_label, batch=learning.stop_batch, train=False, token_scale=token_scale)
        return None

    @property
    def rule(self) -> LearnedStop:
        return self._rule

    @staticmethod
    def context(features: Mapping[str, Any] | None) -> np.ndarray:
        return stop_context(features)

    def inputs(self, context: np.ndarray | Sequence[np.ndarray], lam: float) -> LearnedInputs:
        """The rule in use with ``lam`` and one context row per run (what the stop-rule kernel reads)."""
        return LearnedInputs(self._rule, lam, np.asarray(context, dtype=np.float64), self.token_scale)

    def observe(self, trace: ProbeTrace | None, reference: str | None, context: np.ndarray | None) -> bool:
        """Take one traced reward; True when it completed a batch and the rule was updated."""
        if not self.train or trace is None or context is None:
            return False
        usable = trace.stop_reason == "end" and (reference is not None or self.label != "graded")
        with self._lock:
            if not usable:
                self.labelled["unused"] += 1
                return False
            self._traces.append(trace)
            self._refs.append(reference if self.label != "agreement" else None)
            self._ctx.append(np.asarray(context, dtype=np.float64))
            if len(self._traces) < self.batch:
                return False
            traces, refs, ctx = self._traces, self._refs, np.stack(self._ctx)
            self._traces, self._refs, self._ctx = [], [], []
            data, counts = labelled_stop_data(traces, refs, ctx, "auto")
            try:
                rule = self._rule.copy().fit(data)
            except (np.linalg.LinAlgError, FloatingPointError, ValueError) as exc:  # a reward never fails on it
                log.error("learned stop rule: a batch of %d traces could not be fitted (%s); the rule is kept",
                          len(traces), exc)
                self.failed += 1
                return False
            self._rule = rule
            self.labelled["graded"] += counts["graded"]
            self.labelled["agreement"] += counts["agreement"]
            self.updates += 1
            return True

    def check(self, rule: LearnedStop, version: str = "?") -> None:
        """Refuse a stored rule that does not read this learner's context."""
        if rule.context_size != len(CONTEXT_FEATURES):
            raise SnapshotError(f"snapshot {version!r}: its stop_rule reads {rule.context_size} context columns, "
                                f"this selector builds {len(CONTEXT_FEATURES)} ({', '.join(CONTEXT_FEATURES)})")

    def load(self, rule: LearnedStop, version: str = "?") -> None:
        """Serve ``rule`` (from a snapshot) from now on; the buffered traces are kept for the next update."""
        self.check(rule, version)
        with self._lock:
            self._rule = rule

    def state(self) -> dict[str, Any]:
        return {"rows": self._rule.rows, "updates": self.updates, "failed": self.failed, "buffered": len(self._traces),
                "labelled": dict(self.labelled), "label": self.label, "train": self.train}


__all__ = ["StopLearner"]
