"""Smoke test of the testbed's end-to-end runner: real Selector, real VW, real SQLite store, real decoder.

The model is a tiny random-weight Llama built from a config (no trained
weights from ``benchmarks/testbed/out/``): EM is near zero, so only the
structure and the invariants are checked, not what the policy learns.
"""

from __future__ import annotations

import json

import pytest

e2e = pytest.importorskip("benchmarks.testbed.end_to_end", reason="run from the repository root")
tasks = pytest.importorskip("benchmarks.testbed.tasks", reason="run from the repository root")

from benchmarks.testbed.e2e_stats import hull_em, mean_se  # noqa: E402
from benchmarks.testbed.run_arms import ARMS  # noqa: E402
from stopbandit.bandit.arms import Arm  # noqa: E402
from stopbandit.decoder.chartok import build_char_tokenizer  # noqa: E402
from stopbandit.decoder.config import DecoderConfig  # noqa: E402
from stopbandit.decoder.hf import HFDecoder  # noqa: E402
from stopbandit.decoder.tiny import tiny_causal_lm  # noqa: E402
from stopbandit.replay.store import ReplayStore  # noqa: E402

# Probes every 4 tokens and the arms' caps (8, 16) are multiples of 4, so a capped arm stops at a probe
# offset: the lenient run paid that probe's trial answer, and `full` can never spend fewer tokens.
CONFIG = DecoderConfig(think_start="<think>", think_end="</think>", probe_every=4, max_answer_tokens=3,
                       max_think_tokens=16, add_special_tokens=False, batch_size=8)
# The random model's trial answers have confidences ~0.15-0.5: the 0.30 arms make confidence stops happen.
SETTINGS = e2e.Settings(lambdas=(0.1, 0.3), seeds=(0,), stream=24, items=12, batch=8,
                        arms=(*ARMS, Arm("t30", 0.30), Arm("t30c8", 0.30, 8)))


def _decoder() -> HFDecoder:
    tokenizer = build_char_tokenizer(tasks.ALPHABET)
    model = tiny_causal_lm(len(tokenizer), arch="llama", seed=0, init_std=0.2, pad_token_id=tokenizer.pad_token_id,
                           eos_token_id=tokenizer.eos_token_id)
    return HFDecoder(model, tokenizer, CONFIG, device="cpu")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def model_run(workdir):
    return e2e.run_model(_decoder(), "tiny", SETTINGS, workdir)


def test_tokens_include_probes_and_full_spends_the_most(model_run):
    arms = {a.name: a for a in SETTINGS.arms}
    outcomes = [o for outs in model_run.static.values() for o in outs]
    outcomes += [o for run in model_run.runs for o in (*run.served, *run.learned)]
    for o in outcomes:
        assert o.tokens == o.think + o.probe + o.answer
        assert o.think <= min(arms[o.arm].cap, CONFIG.max_think_tokens)
        assert o.em in (0.0, 1.0)
    assert any(o.probe > 0 for o in model_run.static["full"])  # the count really holds probe tokens
    assert any(o.think < f.think for o, f in zip(model_run.static["t30"], model_run.static["full"]))
    full = model_run.static["full"]
    for name, outs in model_run.static.items():
        assert arms[name].at_most_as_lenient_as(arms["full"])
        for f, o in zip(full, outs):
            assert o.think <= f.think
            assert o.tokens <= f.tokens, f"{name} spent more than full on one item: {o} vs {f}"


def test_learned_rows_are_logged_and_counted(model_run, workdir):
    assert [(r.seed, r.lam) for r in model_run.runs] == [(0, 0.1), (0, 0.3)]
    for run in model_run.runs:
        assert len(run.served) == SETTINGS.stream
        assert run.store == {"decisions": SETTINGS.stream, "outcomes": SETTINGS.stream, "traced": SETTINGS.stream,
                             "matches_served": True}
        assert sum(run.logged_arms.values()) == SETTINGS.stream
        assert set(run.logged_arms) <= {a.name for a in SETTINGS.arms}
        # per-row arms in one batch == each arm run on the whole batch alone
        assert run.agree == SETTINGS.items
        assert [c["stream"] for c in run.curve] == sorted(e2e.checkpoints(SETTINGS.stream, SETTINGS.batch))
    # the stores are real SQLite files that outlive the Selector
    dbs = sorted(workdir.glob("replay-*.db"))
    assert len(dbs) == len(model_run.runs)
    for db in dbs:
        store = ReplayStore(f"sqlite:///{db}")
        try:
            counts = store.counts()
            assert (counts["decisions"], counts["outcomes"]) == (SETTINGS.stream, SETTINGS.stream)
        finally:
            store.dispose()


def test_report_compares_learned_with_static_arms(model_run):
    report = json.loads(json.dumps(e2e.build_report([model_run], SETTINGS)))
    (model,) = report["models"]
    assert set(model["static"]) == {a.name for a in SETTINGS.arms}
    for r in model["runs"]:
        rewards = {n: s["em"] - r["lam"] * s["tokens"] / SETTINGS.token_scale for n, s in model["static"].items()}
        assert r["best_static"]["reward"] == pytest.approx(max(rewards.values()))
        assert r["delta_reward_vs_best_static"] == pytest.approx(r["learned"]["reward"] - max(rewards.values()))
        assert r["oracle_reward"] >= r["cell_oracle_reward"] - 1e-12
        assert r["cell_oracle_reward"] >= max(rewards.values()) - 1e-12
        assert r["oracle_reward"] >= r["learned"]["reward"] - 1e-12
        assert sum(r["learned_arms"].values()) == SETTINGS.items
    for lam in ("0.1", "0.3"):
        assert report["summary"][lam]["runs"] == 1
        assert report["summary"][lam]["learned_em"]["se"] == 0.0


def test_cli_json(tmp_path, capsys):
    decoder = _decoder()
    decoder.model.save_pretrained(tmp_path)
    decoder.tokenizer.save_pretrained(tmp_path)
    CONFIG.save(tmp_path)
    assert e2e.main(["--models", str(tmp_path), "--seeds", "0,1", "--lambdas", "0.3", "--stream", "8",
                     "--items", "6", "--batch", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(r["seed"], r["lam"]) for r in report["models"][0]["runs"]] == [(0, 0.3), (1, 0.3)]
    assert report["summary"]["0.3"]["runs"] == 2
    assert all(r["store"]["decisions"] == 8 for r in report["models"][0]["runs"])


def test_static_frontier_and_standard_error():
    points = {"full": (20.0, 0.9), "cheap": (10.0, 0.5), "bad": (15.0, 0.4)}
    assert hull_em(points, 15.0) == pytest.approx(0.7)  # halfway along the chord cheap -> full
    assert hull_em(points, 25.0) == pytest.approx(0.9)
    assert hull_em(points, 5.0) is None
    assert mean_se([1.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_se([2.0]) == (2.0, 0.0)
