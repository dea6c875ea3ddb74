"""The heads regress what they are told to: VW details pinned down."""

from __future__ import annotations

import numpy as np

from stopbandit.bandit.arms import ArmSet
from stopbandit.bandit.exploration import SquareCB
from stopbandit.bandit.policy import HeadsPolicy
from stopbandit.bandit.vw import VWHead, shared_line


def test_heads_recover_noiseless_values_per_arm():
    # --cb_type dm in cb_adf does not regress the logged label; MTR does (policy.py docstring)
    pol = HeadsPolicy(ArmSet.of(None), SquareCB(), 1000.0)
    rng = np.random.default_rng(0)
    shared = shared_line({"len": 3.0, "domain": "math"})
    tokens = [1000, 700, 500, 300]
    for _ in range(3000):
        a = int(rng.integers(4))
        pol.learn(shared, a, 1.0 if a < 2 else 0.0, tokens[a], 0.25, 0.2)
    em, tok = pol.predict_heads(shared)
    assert np.all(np.abs(tok - tokens) < 30)
    assert em[0] > 0.9 and em[1] > 0.9 and em[2] < 0.1 and em[3] < 0.1


def test_fractional_em_is_learned_as_its_value():
    pol = HeadsPolicy(ArmSet.of(None), SquareCB(), 1000.0)
    shared = shared_line({"len": 2.0, "domain": "qa"})
    for _ in range(3000):
        pol.learn(shared, 1, 0.8, 500, 0.25, 0.2)
    em, _ = pol.predict_heads(shared)
    assert abs(em[1] - 0.8) < 0.05


def test_fast_predict_path_equals_vw_public_predict():
    head = VWHead("--cb_adf --cb_type mtr -q ca -b 18")
    lines = [shared_line({"len": 1.5, "domain": "x"}), "|a arm=a thr:0.9", "|a arm=b thr:0.8 nocap"]
    for i in range(200):
        lab = list(lines)
        lab[1 + i % 2] = f"0:{0.3 + 0.4 * (i % 2)}:1 " + lab[1 + i % 2]
        head.learn(lab)
    assert head.predict(lines) == head.predict_slow(lines)
    head.close()
