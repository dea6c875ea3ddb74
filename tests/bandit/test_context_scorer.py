"""ContextScorer: the serving path's one-parse predict and learn must be VW's text path, float for float."""

from __future__ import annotations

import numpy as np
import pytest

from stopbandit.bandit.arms import Arm, ArmSet
from stopbandit.bandit.exploration import SquareCB
from stopbandit.bandit.policy import EM_ARGS, TOKEN_ARGS, HeadsPolicy
from stopbandit.bandit.vw import ContextScorer, VWHead, arm_line, cb_label, labeled, shared_line
from stopbandit.errors import InputError, SnapshotError

ARMS = [Arm("full", 1.01, 0), Arm("careful", 0.97, 0), Arm("balanced", 0.9, 0), Arm("aggressive", 0.75, 512),
        Arm("cap256", 0.75, 256)]


def _context(rng: np.random.Generator) -> str:
    return shared_line({"len": float(rng.normal(3, 1)), "steps": float(rng.integers(0, 5)),
                        "dbin": f"d{int(rng.integers(0, 5))}", "domain": str(rng.choice(["math", "code", "trivia"]))})


def _labels(rng: np.random.Generator, k: int) -> list[tuple[int, int, str]]:
    """1–4 labels on random heads and arms, sometimes two on one head and arm (a fractional EM's pair)."""
    out = []
    for _ in range(int(rng.integers(1, 5))):
        head, arm = int(rng.integers(0, 2)), int(rng.integers(0, k))
        cost = float(rng.choice([-1.0, 1.0])) if head == 0 else float(rng.random())
        out.append((head, arm, cb_label(cost, float(rng.choice([1.0, 0.5, 0.1])))))
    return out


def _predict_text(heads: list[VWHead], shared: str, actions: list[str]) -> list[list[float]]:
    return [h.predict([shared, *actions]) for h in heads]


def _learn_text(heads: list[VWHead], shared: str, actions: list[str], labels: list[tuple[int, int, str]]) -> None:
    for h, arm, label in labels:
        lines = [shared, *actions]
        lines[arm + 1] = f"{label} {lines[arm + 1]}"
        heads[h].learn(lines)


def test_one_parse_predict_and_learn_equal_the_text_path_through_a_save_and_load():
    rng = np.random.default_rng(0)
    actions = [arm_line(a) for a in ARMS]
    ref = [VWHead(EM_ARGS), VWHead(TOKEN_ARGS)]
    fast = [VWHead(EM_ARGS), VWHead(TOKEN_ARGS)]
    scorer = ContextScorer(fast, actions)
    held_out = [_context(rng) for _ in range(40)]
    for step in range(400):
        shared = _context(rng)
        assert scorer.predict(shared) == _predict_text(ref, shared, actions), step
        labels = _labels(rng, len(actions))
        _learn_text(ref, shared, actions, labels)
        scorer.learn(shared, labels)
    preds = [scorer.predict(s) for s in held_out]
    assert preds == [_predict_text(ref, s, actions) for s in held_out]
    assert len({tuple(p[0]) for p in preds}) > 10 and len({tuple(p[1]) for p in preds}) > 10  # not constant
    # both round-trip through VW's save/load and keep learning alike
    scorer.close()
    ref2 = [VWHead(h.args, h.to_bytes()) for h in ref]
    fast2 = [VWHead(h.args, h.to_bytes()) for h in fast]
    scorer2 = ContextScorer(fast2, actions)
    for step in range(60):
        shared = _context(rng)
        labels = _labels(rng, len(actions))
        _learn_text(ref2, shared, actions, labels)
        scorer2.learn(shared, labels)
        assert scorer2.predict(shared) == _predict_text(ref2, shared, actions), step
    scorer2.close()
    for h in (*ref, *fast, *ref2, *fast2):
        h.close()


def _policy_pair() -> tuple[HeadsPolicy, HeadsPolicy]:
    arms = ArmSet(ARMS)
    fast = HeadsPolicy(arms, SquareCB(), 1000.0)
    text = HeadsPolicy(arms, SquareCB(), 1000.0)
    assert fast._scorer is not None
    text._scorer.close()
    text._scorer = None  # the text path: VWHead.predict / VWHead.learn per head and label
    return fast, text


def test_heads_policy_learns_revealed_fractional_and_weighted_outcomes_like_the_text_path():
    rng = np.random.default_rng(1)
    fast, text = _policy_pair()
    for step in range(300):
        shared = _context(rng)
        f_probs, f_scores = fast.decide(shared, 0.3)
        t_probs, t_scores = text.decide(shared, 0.3)
        assert (f_probs, f_scores) == (t_probs, t_scores), step
        if step % 3 == 0:  # nested feedback: several arms, importance weights, a fractional EM
            outcomes = {a: (float(rng.choice([0.0, 1.0, 0.5])), int(rng.integers(50, 900))) for a in (1, 2, 4)}
            weights = {a: float(rng.choice([1.0, 2.5])) for a in outcomes}
            for p in (fast, text):
                p.learn_revealed(shared, outcomes, 1, 0.4, 0.3, weights=weights)
        else:
            arm, em, tokens = int(rng.integers(0, 5)), float(rng.random() < 0.7), int(rng.integers(50, 900))
            for p in (fast, text):
                p.learn(shared, arm, em, tokens, 0.3, 0.3)
    held_out = [_context(rng) for _ in range(20)]
    got = [[x.tolist() for x in fast.predict_heads(s)] for s in held_out]
    assert got == [[x.tolist() for x in text.predict_heads(s)] for s in held_out]
    assert len({tuple(em) for em, _ in got}) > 5 and len({tuple(tok) for _, tok in got}) > 5  # not constant
    for p in (fast, text):
        p.close()


def test_heads_that_parse_differently_fall_back_to_the_text_path():
    arms = ArmSet(ARMS)
    pol = HeadsPolicy(arms, SquareCB(), 1000.0, args={"em": EM_ARGS, "tokens": TOKEN_ARGS.replace("-b 18", "-b 17")})
    assert pol._scorer is None
    shared = shared_line({"len": 2.0, "domain": "math"})
    pol.learn(shared, 1, 1.0, 300, 0.5, 0.2)
    em, tok = pol.predict_heads(shared)
    assert em.shape == tok.shape == (len(ARMS),)
    pol.close()


def test_scorer_checks_its_input_and_refuses_work_after_close():
    actions = [arm_line(a) for a in ARMS]
    heads = [VWHead(EM_ARGS), VWHead(TOKEN_ARGS)]
    with pytest.raises(InputError, match="parse alike"):
        ContextScorer([heads[0], VWHead(TOKEN_ARGS.replace("-b 18", "-b 17"))], actions)
    with pytest.raises(InputError, match="action line"):
        ContextScorer(heads, ["shared |c x"])
    scorer = ContextScorer(heads, actions)
    with pytest.raises(InputError, match="one line starting with 'shared'"):
        scorer.predict("shared |c a\n|a injected")
    with pytest.raises(InputError, match="bad learn entry"):
        scorer.learn("shared |c a", [(0, len(actions), cb_label(1.0, 1.0))])
    scorer.learn("shared |c a", [])  # nothing to learn: no parse, no error
    scorer.close()
    scorer.close()  # idempotent
    with pytest.raises(SnapshotError, match="closed"):
        scorer.predict("shared |c a")
    for h in heads:
        h.close()


def test_labeled_puts_cb_label_on_the_action_line():
    lines = ["shared |c a", "|a x", "|a y"]
    assert labeled(lines, 1, 0.25, 0.5) == ["shared |c a", "|a x", f"{cb_label(0.25, 0.5)} |a y"]
    assert cb_label(-1.0, 0.0) == "0:-1:1e-06"
