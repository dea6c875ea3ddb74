"""A replay store filled by the simulator through a real Selector, with the sums the dashboard must show."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from stopbandit import Selector  # noqa: E402
from stopbandit.sim import Simulator, run  # noqa: E402


@dataclass
class Filled:
    url: str
    decisions: int
    rewarded: int
    em: float
    tokens: float
    reward: float
    per_arm: dict[str, list[float]]  # arm -> [rewarded, sum em, sum reward]
    domains: set[str]
    lam: float
    reason: str


def fill(url: str, requests: int = 800, unrewarded: int = 7) -> Filled:
    """Serve ``requests`` simulated requests (the last ``unrewarded`` get no reward) and change λ once."""
    sel = Selector.open(url, lam=0.2, token_scale=1000, seed=0, follow=False)
    sim = Simulator(seed=3)
    em = tokens = reward = 0.0
    per_arm: dict[str, list[float]] = {}
    domains: set[str] = set()
    lam = 0.2
    for i, req in enumerate(sim.take(requests)):
        if i == requests // 2:
            sel.set_lambda(0.3, reason="budget cut for the dashboard test")
            lam = 0.3
        d = sel.choose(req.prompt, domain=req.domain, request_id=f"dash-{i}")
        domains.add(req.domain)
        if i >= requests - unrewarded:
            continue
        out = run(req, d.arm)
        sel.reward(d.decision_id, em=out.em, tokens=out.tokens)
        r = out.em - lam * out.tokens / 1000
        em, tokens, reward = em + out.em, tokens + out.tokens, reward + r
        acc = per_arm.setdefault(d.arm.name, [0, 0.0, 0.0])
        acc[0] += 1
        acc[1] += out.em
        acc[2] += r
    sel.flush(120)
    sel.close()
    return Filled(url, requests, requests - unrewarded, em, tokens, reward, per_arm, domains, 0.3,
                  "budget cut for the dashboard test")


@pytest.fixture
def filled(db_url) -> Filled:
    return fill(db_url)
