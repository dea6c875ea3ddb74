"""The heads regress what they are told to: VW details pinned down."""

from __future__ import annotations

import numpy as np
import pytest

from stopbandit.bandit.arms import ArmSet
from stopbandit.bandit.exploration import SquareCB
from stopbandit.bandit.policy import HeadsPolicy
from stopbandit.bandit.vw import VWHead, labeled, shared_line, shared_lines
from stopbandit.errors import ConfigError, InputError


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


# --------------------------------------------------------------------------- batched scoring (issue 5)


def _trained_policy(seed: int = 0, n: int = 1500) -> tuple[HeadsPolicy, list[str]]:
    """Real VW heads trained on varied contexts; returns the policy and contexts with repeats."""
    rng = np.random.default_rng(seed)
    pol = HeadsPolicy(ArmSet.of(None), SquareCB(), 1000.0)
    domains = ["math", "code", "trivia", "with space", "pipe|colon:"]
    lines = []
    for i in range(n):
        feats = {"len": round(float(rng.uniform(1, 6)), 3), "domain": domains[i % len(domains)],
                 "digits": float(rng.integers(0, 4)), "dbin": f"d{int(rng.integers(0, 4))}"}
        line = shared_line(feats)
        lines.append(line)
        a = int(rng.integers(4))
        em = float(rng.random() < 0.9 - 0.2 * a + 0.05 * feats["digits"])
        pol.learn(line, a, em, int(rng.integers(100, 3000)), 0.25, 0.2)
    return pol, lines[:300] + lines[:50] + lines[100:120]  # repeated contexts


def test_predict_heads_batch_is_the_same_floats_as_predict_heads():
    pol, lines = _trained_policy()
    em, tok = pol.predict_heads_batch(lines)
    assert em.shape == tok.shape == (len(lines), 4)
    for i, line in enumerate(lines):
        e1, t1 = pol.predict_heads(line)
        assert em[i].tolist() == e1.tolist() and tok[i].tolist() == t1.tolist()
    assert not np.allclose(em, em[0])  # the contexts differ: a constant would pass the loop trivially
    empty_em, empty_tok = pol.predict_heads_batch([])
    assert empty_em.shape == empty_tok.shape == (0, 4)
    pol.close()


def test_predict_heads_batch_after_a_snapshot_round_trip():
    from stopbandit.bandit.snapshot import pack, unpack

    pol, lines = _trained_policy(seed=3)
    packed = pack(pol, lam=0.2, feature_config={})
    loaded = unpack(packed.model, packed.meta, packed.checksum)
    assert isinstance(loaded, HeadsPolicy)
    a_em, a_tok = pol.predict_heads_batch(lines)
    b_em, b_tok = loaded.predict_heads_batch(lines)
    assert a_em.tolist() == b_em.tolist() and a_tok.tolist() == b_tok.tolist()
    for i in (0, 7, len(lines) - 1):
        e1, t1 = loaded.predict_heads(lines[i])
        assert b_em[i].tolist() == e1.tolist() and b_tok[i].tolist() == t1.tolist()
    # batch scoring leaves the model as it was: a twin that never scored learns to the same predictions
    twin = unpack(packed.model, packed.meta, packed.checksum)
    for i in range(5):
        for p in (loaded, twin):
            p.learn(lines[i], i % 4, float(i % 2), 300 + 100 * i, 0.25, 0.2)
    assert loaded.predict_heads_batch(lines)[0].tolist() == twin.predict_heads_batch(lines)[0].tolist()
    for p in (pol, loaded, twin):
        p.close()


def test_predict_batch_groups_heads_that_parse_differently():
    from stopbandit.bandit.vw import predict_batch

    pol, lines = _trained_policy(seed=1, n=300)
    other = VWHead("--cb_adf --cb_type mtr -q ca -b 17")  # another hash space: parsed on its own
    for i, line in enumerate(lines[:200]):
        other.learn(labeled([line, *pol.arm_lines], i % 4, 0.1 * (i % 7), 1.0))
    assert other.parse_key() != pol.em.parse_key() and pol.em.parse_key() == pol.tokens.parse_key()
    outs = predict_batch([pol.em, other, pol.tokens], lines, pol.arm_lines)
    for head, out in zip((pol.em, other, pol.tokens), outs):
        assert out.tolist() == [head.predict([line, *pol.arm_lines]) for line in lines]
    other.close()
    pol.close()


@pytest.mark.parametrize(("shared", "match"), [
    (["shared |c a:1\nshared |c b:2"], "one line starting with 'shared'"),
    (["|c a:1"], "one line starting with 'shared'"),
])
def test_predict_batch_rejects_lines_that_are_not_one_shared_example(shared, match):
    from stopbandit.bandit.vw import predict_batch

    pol = HeadsPolicy(ArmSet.of(None), SquareCB(), 1000.0)
    with pytest.raises(InputError, match=match):
        predict_batch([pol.em], shared, pol.arm_lines)
    # the workspace is still usable: every parsed example went back to VW's pool
    assert len(pol.em.predict([shared_line({"len": 1.0}), *pol.arm_lines])) == 4
    pol.close()


HOSTILE = [
    {"len": 3.25, "domain": "math", "digits": 2, "flag": True, "big": 123456789.0, "tiny": 1e-12},
    {"q": "a b|c:d\te\nf%g'h", "domain": "x y", "z": -0.0},
    {"u": "thin\u2009space", "domain": None, "n": 7},
    {"domain": "only"},
    {},
    {"v": "", "domain": ""},
    {"domain": 3.5, "w": "same"},
    {"w": "same", "len": 1},
]


def test_shared_lines_equal_shared_line_one_by_one():
    assert shared_lines(HOSTILE) == [shared_line(f) for f in HOSTILE]
    assert shared_lines([]) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_shared_lines_reject_non_finite_numbers_like_shared_line(bad):
    feats = {"len": 2.0, "x": bad}
    with pytest.raises(InputError, match="feature 'x' must be finite") as single:
        shared_line(feats)
    with pytest.raises(InputError, match="feature 'x' must be finite") as batch:
        shared_lines([{"len": 1.0}, feats])
    assert str(single.value) == str(batch.value)


# --------------------------------------------------------------------------- weighted learning


def _model_bytes(pol: HeadsPolicy) -> dict[str, bytes]:
    return pol.blobs()


def test_weight_one_learns_exactly_like_no_weight():
    a = HeadsPolicy(ArmSet.of(None), SquareCB(), 1000.0)
    b = HeadsPolicy(ArmSet.of(None), SquareCB(), 1000.0)
    line = shared_line({"len": 2.0, "domain": "math"})
    for em in (1.0, 0.0, 0.7, 0.25):
        a.learn(line, 1, em, 600, 0.3, 0.2)
        b.learn(line, 1, em, 600, 0.3, 0.2, weight=1.0)
    a.learn_revealed(line, {0: (1.0, 900), 2: (0.4, 300)}, 2, 0.3, 0.2)
    b.learn_revealed(line, {0: (1.0, 900), 2: (0.4, 300)}, 2, 0.3, 0.2, weights={0: 1.0, 2: 1.0})
    assert _model_bytes(a) == _model_bytes(b) and a.t == b.t == 5
    a.close()
    b.close()


def test_a_larger_weight_moves_the_heads_further():
    line = shared_line({"len": 2.0, "domain": "math"})
    moved = []
    for w in (1.0, 8.0):
        pol = HeadsPolicy(ArmSet.of(None), SquareCB(), 1000.0)
        for _ in range(20):
            pol.learn(line, 3, 0.0, 200, 0.25, 0.2)
        before_em, before_tok = pol.predict_heads(line)
        pol.learn(line, 3, 1.0, 2000, 0.25, 0.2, weight=w)
        after_em, after_tok = pol.predict_heads(line)
        moved.append((after_em[3] - before_em[3], after_tok[3] - before_tok[3]))
        pol.close()
    assert moved[1][0] > moved[0][0] > 0 and moved[1][1] > moved[0][1] > 0


@pytest.mark.parametrize("weight", [0.5, 0.0, -1.0, float("nan"), float("inf")])
def test_weight_must_be_at_least_one(weight):
    pol = HeadsPolicy(ArmSet.of(None), SquareCB(), 1000.0)
    line = shared_line({"len": 2.0})
    with pytest.raises(InputError, match="weight must be a finite number >= 1"):
        pol.learn(line, 0, 1.0, 100, 0.5, 0.2, weight=weight)
    with pytest.raises(InputError, match="weight must be a finite number >= 1"):
        pol.learn_revealed(line, {0: (1.0, 100), 1: (0.0, 50)}, 0, 0.5, 0.2, weights={0: 1.0, 1: weight})
    assert pol.t == 0
    pol.close()


def test_native_policy_refuses_importance_weights():
    from stopbandit.bandit.policy import NativePolicy

    pol = NativePolicy(ArmSet.of(None), SquareCB(), 1000.0)
    with pytest.raises(ConfigError, match="learns from logged propensities only"):
        pol.learn(shared_line({"len": 1.0}), 0, 1.0, 100, 0.5, 0.2, weight=2.0)
    with pytest.raises(ConfigError, match="has no EM/token heads"):
        pol.predict_heads_batch([shared_line({"len": 1.0})])
    pol.close()


# --------------------------------------------------------------------------- learning rate (issue 9)


def _learn_steps(pols: list[HeadsPolicy], lines: list[str], start: int, n: int) -> None:
    for i in range(start, start + n):
        for p in pols:
            p.learn(lines[i % len(lines)], i % 4, float(i % 3 == 0), 200 + 37 * (i % 11), 0.25, 0.2)


def test_heads_learn_at_the_default_rate_and_keep_it_through_a_snapshot():
    """-l 0.25 is the default; a reloaded model keeps learning exactly like one never saved (VW pitfall)."""
    from stopbandit.bandit.policy import EM_ARGS, HEADS_LEARNING_RATE, TOKEN_ARGS
    from stopbandit.bandit.snapshot import pack, unpack

    assert HEADS_LEARNING_RATE == 0.25
    assert EM_ARGS.split().count("-l") == TOKEN_ARGS.split().count("-l") == 1 and " -l 0.25" in EM_ARGS
    pol, lines = _trained_policy(seed=5, n=400)
    assert pol.vw_args() == {"em": EM_ARGS, "tokens": TOKEN_ARGS}
    packed = pack(pol, lam=0.2, feature_config={})
    assert packed.meta["vw_args"] == {"em": EM_ARGS, "tokens": TOKEN_ARGS}
    loaded = unpack(packed.model, packed.meta, packed.checksum)
    _learn_steps([pol, loaded], lines, 0, 200)
    a, b = pol.predict_heads_batch(lines[:50]), loaded.predict_heads_batch(lines[:50])
    assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()
    for p in (pol, loaded):
        p.close()


def test_a_snapshot_trained_at_the_old_rate_keeps_its_own_arguments():
    """Stored snapshots are served with the VW arguments they were trained with, not today's default."""
    from stopbandit.bandit.policy import EM_ARGS, TOKEN_ARGS
    from stopbandit.bandit.snapshot import pack, unpack

    old = {"em": EM_ARGS.replace(" -l 0.25", ""), "tokens": TOKEN_ARGS.replace(" -l 0.25", "")}
    assert "-l" not in old["em"].split()
    rng = np.random.default_rng(7)
    lines = [shared_line({"len": round(float(rng.uniform(1, 6)), 3), "domain": "math",
                          "dbin": f"d{int(rng.integers(0, 4))}"}) for _ in range(60)]
    at_old = HeadsPolicy(ArmSet.of(None), SquareCB(), 1000.0, None, old)
    at_new = HeadsPolicy(ArmSet.of(None), SquareCB(), 1000.0)
    _learn_steps([at_old, at_new], lines, 0, 300)
    packed = pack(at_old, lam=0.2, feature_config={})
    loaded = unpack(packed.model, packed.meta, packed.checksum)
    assert loaded.vw_args() == old
    _learn_steps([at_old, at_new, loaded], lines, 300, 100)
    old_pred, new_pred, loaded_pred = (p.predict_heads_batch(lines)[1] for p in (at_old, at_new, loaded))
    assert loaded_pred.tolist() == old_pred.tolist()
    assert not np.allclose(old_pred, new_pred)  # the rate matters: the two defaults learn differently
    for p in (at_old, at_new, loaded):
        p.close()
