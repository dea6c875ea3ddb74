"""VW's private entry points have a public fallback: the same predictions and learning through Workspace.predict/learn.

The fast path drives VW's extension directly (``Workspace._parse``,
``pylibvw.vw._finish_example_multi_ex``). If a VW release drops those names,
:data:`stopbandit.bandit.vw.FAST_PATH` is False and every call takes the
public API; here the flag is turned off to run that path for real.
"""

from __future__ import annotations

import numpy as np

from stopbandit.bandit import vw
from stopbandit.bandit.arms import DEFAULT_ARMS, ArmSet
from stopbandit.bandit.exploration import SquareCB
from stopbandit.bandit.policy import HeadsPolicy
from stopbandit.features.extract import FeatureExtractor
from stopbandit.sim import Simulator, run

ARMS = ArmSet(DEFAULT_ARMS)


def _play(policy: HeadsPolicy, n: int = 150) -> tuple[list[list[float]], np.ndarray, np.ndarray]:
    extractor = FeatureExtractor()
    probs, lines = [], []
    for i, req in enumerate(Simulator(seed=4).take(n)):
        line = vw.shared_line(extractor.extract(req.prompt, req.domain))
        p, _ = policy.decide(line, 0.3)
        probs.append(p)
        lines.append(line)
        arm = i % len(ARMS)
        out = run(req, ARMS[arm])
        if i % 2:
            policy.learn(line, arm, out.em, out.tokens, p[arm], 0.3)
        else:
            policy.learn_revealed(line, {arm: (out.em, out.tokens), len(ARMS) - 1: (1.0, 120)}, arm, p[arm], 0.3)
    em, tok = policy.predict_heads_batch(lines)
    return probs, em, tok


def test_the_public_api_path_predicts_and_learns_the_same(monkeypatch):
    assert vw.FAST_PATH  # the installed VW has the private entry points
    fast = HeadsPolicy(ARMS, SquareCB(), 1000.0)
    want = _play(fast)
    fast.close()
    monkeypatch.setattr(vw, "FAST_PATH", False)
    slow = HeadsPolicy(ARMS, SquareCB(), 1000.0)
    assert slow._scorer is None  # the one-parse scorer needs the private entry points
    got = _play(slow)
    slow.close()
    np.testing.assert_allclose(np.array(got[0]), np.array(want[0]), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got[2], want[2], rtol=1e-6, atol=1e-6)
