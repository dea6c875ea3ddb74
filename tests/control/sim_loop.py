"""Drive a (Controlled)Selector with simulated traffic: choose, run the arm in the simulator, reward with the trace."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from stopbandit.sim import SimRequest, run


@dataclass(frozen=True, slots=True)
class Served:
    index: int
    domain: str
    decision_id: str
    arm: str
    probability: float
    em: float
    tokens: int


def serve(target, requests: Iterable[SimRequest], *, traces: bool = True,
          after: Callable[[Served], None] | None = None) -> list[Served]:
    """One choose + reward per request (``target`` is a Selector or a ControlledSelector)."""
    out = []
    for r in requests:
        d = target.choose(r.prompt, domain=r.domain, request_id=r.request_id)
        o = run(r, d.arm)
        if traces:
            target.reward(d.decision_id, em=o.em, tokens=o.tokens, trace=o.trace, reference=r.reference)
        else:
            target.reward(d.decision_id, em=o.em, tokens=o.tokens)
        s = Served(r.index, r.domain, d.decision_id, d.arm.name, d.probability, o.em, o.tokens)
        out.append(s)
        if after is not None:
            after(s)
    return out
