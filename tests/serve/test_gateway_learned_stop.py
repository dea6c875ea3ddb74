"""Learned stop arms through the gateway, on a real model: our decoder server (engine mode, tiny random Llama)
as a subprocess. The probe driver consults the Selector's learned rule at every probe; where it stops is what the
stop-rule kernel reads off a lenient run's trace with the same rule, λ and context."""

from __future__ import annotations

import httpx
import numpy as np

from stopbandit import Selector
from stopbandit.bandit.arms import Arm
from stopbandit.bandit.learned_stop import (
    CONTEXT_FEATURES,
    LearnedInputs,
    LearnedStop,
    StopData,
    probe_features,
    stop_context,
)
from stopbandit.bandit.stoprule import ProbeBatch
from stopbandit.bandit.trace import ProbeTrace, counterfactual
from stopbandit.serve import GatewayConfig, GatewayServer, create_app

ARMS = [Arm("full", 1.01, 0), Arm("learned0.3", 1.01, 0, 0, 0.3), Arm("learned3", 1.01, 0, 0, 3.0),
        Arm("learned30", 1.01, 0, 0, 30.0), Arm("learned300", 1.01, 0, 0, 300.0)]
PROMPTS = ["12+34=", "hello world", "the cat", "zz top", "7*8=", "why"]


def _rule(traces, ctx) -> LearnedStop:
    """A rule fitted on the real model's probes: a trial answer counts as right when it is the run's last one."""
    batch = ProbeBatch.of([t.probes for t in traces])
    feats = probe_features(batch.offset, batch.confidence, batch.tokens, batch.streak, batch.start, batch.count, ctx)
    now = np.array([1.0 if p.answer == t.probes[-1].answer else 0.0 for t in traces for p in t.probes])
    rest = np.array([float(t.stop_offset - p.offset) for t in traces for p in t.probes])
    return LearnedStop(len(CONTEXT_FEATURES), "graded").fit(StopData(feats, now, np.ones_like(now), rest))


def test_learned_arms_run_through_the_gateway_and_stop_where_the_trace_says(db_url, tiny_upstream):
    sel = Selector.open(db_url, arms=ARMS, seed=0, follow=False, lam=0.5)
    try:
        app = create_app(sel, GatewayConfig(upstream=tiny_upstream.url, probe_every=8, max_think_tokens=48,
                                                    probe_all=True))
        with GatewayServer(app) as gw, httpx.Client(base_url=gw.url, timeout=120) as c:
            fulls = {}
            for prompt in PROMPTS:
                r = c.post("/v1/completions", json={"prompt": prompt, "stopbandit": {"arm": "full"}})
                assert r.status_code == 200, r.text
                fulls[prompt] = ProbeTrace.from_json(r.json()["stopbandit"]["trace"])
            ctx = np.stack([stop_context(sel.extractor.extract(p)) for p in PROMPTS])
            rule = _rule(list(fulls.values()), ctx)
            sel.stop_learner.load(rule)
            reasons = []
            for i, prompt in enumerate(PROMPTS):
                for arm in ARMS[1:]:
                    r = c.post("/v1/completions", json={"prompt": prompt, "stopbandit": {"arm": arm.name}})
                    assert r.status_code == 200, r.text
                    ours = r.json()["stopbandit"]
                    assert ours["mode"] == "probe"
                    cf = counterfactual(fulls[prompt], arm, LearnedInputs(rule, 0.5, ctx[i]))
                    if cf is None:  # no learned stop before the gateway's thinking limit: the arm runs like full
                        full = fulls[prompt]
                        assert (ours["stop_reason"], ours["tokens"]["thinking"]) == (full.stop_reason, full.stop_offset)
                        assert r.json()["choices"][0]["text"] == full.answer
                        reasons.append("thought on")
                        continue
                    assert ours["stop_reason"] == cf.reason
                    assert ours["tokens"]["thinking"] == cf.stop_offset
                    assert r.json()["choices"][0]["text"] == cf.answer
                    assert ours["tokens"]["total"] == cf.tokens
                    reasons.append(cf.reason)
            # λ is read at decision time: the same arm on a request it stopped early, after λ moves to 0
            i = next(k for k, p in enumerate(PROMPTS)
                     if getattr(counterfactual(fulls[p], ARMS[4], LearnedInputs(rule, 0.5, ctx[k])), "reason",
                                None) == "learned")
            sel.set_lambda(0.0, reason="test")
            zero = c.post("/v1/completions", json={"prompt": PROMPTS[i], "stopbandit": {"arm": "learned300"}}).json()
            reward = c.post("/v1/rewards", json={"decision_id": zero["stopbandit"]["decision_id"], "em": 1.0,
                                                 "reference": zero["choices"][0]["text"]})
        assert reward.status_code == 200 and reward.json()["trace"] is True
        assert "learned" in reasons and len(set(reasons)) >= 2  # some learned stops, some runs think on
        cf0 = counterfactual(fulls[PROMPTS[i]], ARMS[4], LearnedInputs(rule, 0.0, ctx[i]))
        want = (fulls[PROMPTS[i]].stop_reason, fulls[PROMPTS[i]].stop_offset) if cf0 is None else \
            (cf0.reason, cf0.stop_offset)
        assert (zero["stopbandit"]["stop_reason"], zero["stopbandit"]["tokens"]["thinking"]) == want
        assert want[0] != "learned"  # at λ = 0 thinking on costs nothing: the rule stops only at no expected gain
    finally:
        sel.close()
