"""``[learning] revealed_weighting = "inverse-observation"``: nested-feedback updates weighted by min(1/q, clip).

Real Selector, real VW, real SQLite; the expected weights are computed here
from the arms' strictness order, independently of the library's helper.
"""

from __future__ import annotations

import numpy as np
import pytest

from stopbandit import Selector
from stopbandit.bandit.arms import ArmSet
from stopbandit.bandit.exploration import EpsilonGreedy, SquareCB
from stopbandit.bandit.policy import HeadsPolicy, observation_weights
from stopbandit.bandit.trace import revealed_outcomes
from stopbandit.bandit.vw import shared_line
from stopbandit.config import LearningConfig, SelectorConfig, config_from_mapping, load_config
from stopbandit.errors import ConfigError
from stopbandit.sim import Simulator
from stopbandit.sim import run as sim_run

ARMS = ArmSet.of(None)  # full, careful, balanced, aggressive: most lenient first
REVEALS = [ARMS.revealed_by(j) for j in range(len(ARMS))]


def expected_weights(probs: list[float], logged: int, revealed: list[int], clip: float) -> dict[int, float]:
    """q(a) = P(the logged arm is at least as lenient as a, or as the logged arm) — by hand from the arms."""
    arms = ARMS.arms
    out = {}
    for a in revealed:
        q = sum(p for j, p in enumerate(probs)
                if arms[a].at_most_as_lenient_as(arms[j]) or arms[logged].at_most_as_lenient_as(arms[j]))
        out[a] = min(max(1.0 / q, 1.0), clip)
    return out


@pytest.mark.parametrize(("probs", "logged", "revealed", "clip", "want"), [
    # balanced logged: it and aggressive revealed; q(balanced) = 0.1 + 0.2 + 0.3, q(aggressive) = 1
    ([0.1, 0.2, 0.3, 0.4], 2, [2, 3], 10.0, {2: 1 / 0.6, 3: 1.0}),
    # full logged (reveals all): q(full) = 0.05 → 20, clipped to 10; careful 1/0.15
    ([0.05, 0.1, 0.15, 0.7], 0, [0, 1, 2, 3], 10.0, {0: 10.0, 1: 1 / 0.15, 2: 1 / 0.3, 3: 1.0}),
    ([0.05, 0.1, 0.15, 0.7], 0, [0, 1, 2, 3], 5.0, {0: 5.0, 1: 5.0, 2: 1 / 0.3, 3: 1.0}),
    # careful logged, and its trace also revealed full (the run ended on its own): q(full) counts
    # every arm at least as lenient as careful (a run of full or careful would have revealed it)
    ([0.0, 0.25, 0.5, 0.25], 1, [0, 1, 2, 3], 20.0, {0: 4.0, 1: 4.0, 2: 1 / 0.75, 3: 1.0}),
    # graph-aware SquareCB logs revealed arms with probability 0: q still covers them
    ([0.02, 0.0, 0.98, 0.0], 2, [2, 3], 10.0, {2: 1.0, 3: 1.0}),
    # float round-off of a vector summing to just above 1 never gives a weight below 1
    ([0.4, 0.3, 0.2, 0.1 + 1e-15], 0, [3], 10.0, {3: 1.0}),
])
def test_observation_weights_are_inverse_reveal_probabilities_clipped(probs, logged, revealed, clip, want):
    got = observation_weights(probs, REVEALS, logged, revealed, clip)
    assert list(got) == revealed
    assert got == pytest.approx(want, rel=1e-12)
    assert got == pytest.approx(expected_weights(probs, logged, revealed, clip), rel=1e-12)
    assert all(1.0 <= w <= clip for w in got.values())


def _config(weighting: str = "inverse-observation", clip: float = 10.0, **kw) -> SelectorConfig:
    return SelectorConfig(lam=0.4, seed=3, learning=LearningConfig(weighting, clip), **kw)


def test_selector_passes_the_expected_weights_to_the_heads(tmp_path):
    """The Selector's heads equal a twin fed the hand-computed weights, and differ from an unweighted twin."""
    clip = 6.0
    sel = Selector.open(f"sqlite:///{tmp_path / 'w.db'}", config=_config(clip=clip), snapshot=None, follow=False)
    twin = HeadsPolicy(ARMS, EpsilonGreedy(0.0), 1000.0)
    flat = HeadsPolicy(ARMS, EpsilonGreedy(0.0), 1000.0)
    seen: list[float] = []
    lines: list[str] = []
    try:
        for req in Simulator(seed=11).take(300):
            line = shared_line(sel.extractor.extract(req.prompt, req.domain))
            d = sel.choose(req.prompt, domain=req.domain, request_id=req.request_id)
            out = sim_run(req, d.arm)
            sel.reward(d.decision_id, em=out.em, tokens=out.tokens, trace=out.trace, reference=req.reference)
            revealed = {k: (em, tok) for k, (em, tok) in revealed_outcomes(out.trace, ARMS.arms, req.reference).items()
                        if em is not None}
            revealed[d.arm_index] = (out.em, out.tokens)
            probs = [d.probabilities[n] for n in ARMS.names]
            want = expected_weights(probs, d.arm_index, list(revealed), clip)
            twin.learn_revealed(line, revealed, d.arm_index, d.probability, 0.4, weights=want)
            flat.learn_revealed(line, revealed, d.arm_index, d.probability, 0.4)
            seen += want.values()
            lines.append(line)
        probe = lines[::17]
        got_em, got_tok = sel.policy.predict_heads_batch(probe)
        twin_em, twin_tok = twin.predict_heads_batch(probe)
        flat_em, _ = flat.predict_heads_batch(probe)
    finally:
        sel.close()
        twin.close()
        flat.close()
    np.testing.assert_array_equal(got_em, twin_em)
    np.testing.assert_array_equal(got_tok, twin_tok)
    assert np.abs(got_em - flat_em).max() > 1e-3  # the weights changed what was learned
    assert max(seen) == clip and min(seen) == 1.0 and any(1.0 < w < clip for w in seen)


def test_rewards_without_traces_are_unaffected(tmp_path):
    runs = []
    for weighting in ("none", "inverse-observation"):
        with Selector.open(f"sqlite:///{tmp_path / (weighting + '.db')}", config=_config(weighting),
                           snapshot=None, follow=False) as sel:
            for req in Simulator(seed=2).take(150):
                d = sel.choose(req.prompt, domain=req.domain, request_id=req.request_id)
                out = sim_run(req, d.arm)
                sel.reward(d.decision_id, em=out.em, tokens=out.tokens)
            runs.append(sel.policy.predict_heads(shared_line(sel.extractor.extract("what is 2 + 2?", "math"))))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_snapshot_round_trip_keeps_the_option_and_the_vw_args(tmp_path):
    """The weighting is a learning setting, not a model property: the VW args stay the heads' own, and a
    snapshot reloads (with the same floats) into a Selector configured with or without it."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    cfg_path = tmp_path / "stopbandit.toml"
    cfg_path.write_text('lam = 0.4\nseed = 3\n[exploration]\nname = "squarecb"\nnested = true\n'
                        '[learning]\nrevealed_weighting = "inverse-observation"\nrevealed_weight_clip = 7\n')
    config = load_config(cfg_path)
    assert config.learning == LearningConfig("inverse-observation", 7.0)
    a = Selector.open(url, config=config, follow=False)
    reqs = Simulator(seed=4).take(200)
    for req in reqs[:150]:
        d = a.choose(req.prompt, domain=req.domain, request_id=req.request_id)
        out = sim_run(req, d.arm)
        a.reward(d.decision_id, em=out.em, tokens=out.tokens, trace=out.trace, reference=req.reference)
    args = a.policy.vw_args()
    version = a.snapshot()
    line = shared_line(a.extractor.extract(reqs[0].prompt, reqs[0].domain))
    before = a.policy.predict_heads(line)
    a.close()
    for cfg in (config, config_from_mapping({"lam": 0.4, "seed": 3})):
        # by version: the first reopened Selector checkpoints what it learns at close, and "latest" would resume it
        b = Selector.open(url, config=cfg, follow=False, snapshot=version)
        try:
            assert b.policy_version == version
            assert b.config.learning == cfg.learning
            assert b.policy.vw_args() == args == HeadsPolicy(ARMS, SquareCB(), 1000.0).vw_args()
            after = b.policy.predict_heads(line)
            np.testing.assert_array_equal(before[0], after[0])
            np.testing.assert_array_equal(before[1], after[1])
            for req in reqs[150:]:  # keeps learning, weighted or not
                d = b.choose(req.prompt, domain=req.domain, request_id=f"{req.request_id}-{cfg.learning.weighted}")
                out = sim_run(req, d.arm)
                b.reward(d.decision_id, em=out.em, tokens=out.tokens, trace=out.trace, reference=req.reference)
            assert not np.array_equal(b.policy.predict_heads(line)[0], after[0])
        finally:
            b.close()


@pytest.mark.parametrize(("table", "match"), [
    ({"revealed_weighting": "ips"}, r"learning.revealed_weighting must be one of \['none', 'inverse-observation'\], "
                                    r"got 'ips'"),
    ({"revealed_weighting": True}, r"learning.revealed_weighting must be one of .*got True"),
    ({"revealed_weight_clip": 0.5}, r"learning.revealed_weight_clip must be a finite number >= 1, got 0.5"),
    ({"revealed_weight_clip": float("inf")}, r"revealed_weight_clip must be a finite number >= 1, got inf"),
    ({"revealed_weight_clip": "10"}, r"revealed_weight_clip must be a finite number >= 1, got '10'"),
    ({"revealed_weight_clip": True}, r"revealed_weight_clip must be a finite number >= 1, got True"),
    ({"clip": 10}, r"\[learning\] unknown key\(s\) \['clip'\]"),
])
def test_learning_table_validation(table, match):
    with pytest.raises(ConfigError, match=match):
        config_from_mapping({"learning": table})


def test_learning_table_must_be_a_table_and_weighting_needs_heads():
    with pytest.raises(ConfigError, match=r"\[learning\] must be a table, got 'x'"):
        config_from_mapping({"learning": "x"})
    with pytest.raises(ConfigError, match="needs policy 'heads'.*got policy 'vw-native'"):
        config_from_mapping({"policy": "vw-native", "learning": {"revealed_weighting": "inverse-observation"}})
    assert config_from_mapping({"policy": "vw-native"}).learning == LearningConfig()
    assert not LearningConfig().weighted and LearningConfig().revealed_weight_clip == 10.0


def test_a_reward_found_in_the_store_is_weighted_by_the_logged_probabilities(tmp_path):
    """A decision no longer in memory (another process made it): q comes from the stored probability vector."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    reqs = Simulator(seed=8).take(40)
    with Selector.open(url, config=_config(clip=4.0), snapshot=None, follow=False) as a:
        made = [(req, a.choose(req.prompt, domain=req.domain, request_id=req.request_id)) for req in reqs]
        for req, d in made[:20]:  # learn a little so the later decisions are not uniform
            out = sim_run(req, d.arm)
            a.reward(d.decision_id, em=out.em, tokens=out.tokens, trace=out.trace, reference=req.reference)
    twin = HeadsPolicy(ARMS, EpsilonGreedy(0.0), 1000.0)
    weights: list[float] = []
    with Selector.open(url, config=_config(clip=4.0), snapshot=None, follow=False) as b:
        for req, d in made[20:]:
            out = sim_run(req, d.arm)
            b.reward(d.decision_id, em=out.em, tokens=out.tokens, trace=out.trace, reference=req.reference)
            revealed = {k: (em, tok) for k, (em, tok) in revealed_outcomes(out.trace, ARMS.arms, req.reference).items()
                        if em is not None}
            revealed[d.arm_index] = (out.em, out.tokens)
            want = expected_weights([d.probabilities[n] for n in ARMS.names], d.arm_index, list(revealed), 4.0)
            line = shared_line(d.features)
            twin.learn_revealed(line, revealed, d.arm_index, d.probability, 0.4, weights=want)
            weights += want.values()
        lines = [shared_line(d.features) for _, d in made]
        got = b.policy.predict_heads_batch(lines)
    want_em, want_tok = twin.predict_heads_batch(lines)
    twin.close()
    np.testing.assert_array_equal(got[0], want_em)
    np.testing.assert_array_equal(got[1], want_tok)
    assert max(weights) > 1.0


def test_selector_open_takes_the_learning_option_as_a_keyword(tmp_path):
    url = f"sqlite:///{tmp_path / 'kw.db'}"
    with Selector.open(url, lam=0.4, seed=3, learning=LearningConfig("inverse-observation", 3.0),
                       snapshot=None, follow=False) as sel:
        assert sel.config.learning == LearningConfig("inverse-observation", 3.0)
    with Selector.open(url, config=_config("inverse-observation", 7.0), learning=LearningConfig(),
                       snapshot=None, follow=False) as sel:
        assert sel.config.learning == LearningConfig()  # the keyword overrides the config, like the others
    with pytest.raises(ConfigError, match="learning must be a LearningConfig, got dict"):
        Selector.open(url, learning={"revealed_weighting": "none"}, snapshot=None, follow=False)  # type: ignore[arg-type]
