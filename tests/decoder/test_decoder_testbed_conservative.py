"""The testbed's conservative benchmark serves each chosen arm's outcome from the static runs: it must equal decoding.

Real Selector, VW, SQLite store and decoder (a tiny random-weight Llama, as in
``test_decoder_end_to_end.py``): the same Selector seed served once with every
batch decoded under its per-row arms and once with outcomes read from the
static runs must choose the same arms, see the same outcomes and end with the
same budget state. The held-out learning curve values the greedy policy as
the end-to-end benchmark's ``greedy_arms`` picks arms, and leaves the served
stream as it is.
"""

from __future__ import annotations

import pytest

cons = pytest.importorskip("benchmarks.testbed.conservative", reason="run from the repository root")
tasks = pytest.importorskip("benchmarks.testbed.tasks", reason="run from the repository root")

from benchmarks.testbed.e2e_stats import Outcome  # noqa: E402
from benchmarks.testbed.run_arms import ARMS, run_items  # noqa: E402
from stopbandit.bandit.conservative import ConservativeConfig  # noqa: E402
from stopbandit.decoder.chartok import build_char_tokenizer  # noqa: E402
from stopbandit.decoder.config import DecoderConfig  # noqa: E402
from stopbandit.decoder.hf import HFDecoder  # noqa: E402
from stopbandit.decoder.tiny import tiny_causal_lm  # noqa: E402

CONFIG = DecoderConfig(think_start="<think>", think_end="</think>", probe_every=4, max_answer_tokens=3,
                       max_think_tokens=16, add_special_tokens=False, batch_size=8)


def _decoder() -> HFDecoder:
    tokenizer = build_char_tokenizer(tasks.ALPHABET)
    model = tiny_causal_lm(len(tokenizer), arch="llama", seed=0, init_std=0.2, pad_token_id=tokenizer.pad_token_id,
                           eos_token_id=tokenizer.eos_token_id)
    return HFDecoder(model, tokenizer, CONFIG, device="cpu")


@pytest.mark.parametrize("conservative", [None, ConservativeConfig("careful", max_loss=0.01, window=8)],
                         ids=["plain", "conservative"])
def test_served_from_static_runs_equals_decoding_each_batch(tmp_path, conservative):
    decoder = _decoder()
    items = tasks.sample_items(40, seed=cons.STREAM_SEED)
    runs = {a.name: run_items(decoder, items, [a] * len(items)) for a in ARMS}
    got = {}
    for decode_served in (False, True):
        url = f"sqlite:///{tmp_path / f'{decode_served}.db'}"
        got[decode_served] = cons.one_run(decoder, items, runs, 1.0, 3, url, 8, conservative, decode_served)
    (from_static, budget_static, _), (decoded, budget_decoded, _) = got[False], got[True]
    assert from_static == decoded
    assert budget_static == budget_decoded
    if conservative is None:  # plain SquareCB explores, so per-row arms were mixed in a batch
        assert len({o.arm for o in decoded}) > 1
    else:  # the random model's EM is ~0, so the budget keeps the baseline
        assert budget_static.baseline_served == sum(o.arm == "careful" for o in decoded) > 0
    for i, o in enumerate(decoded):  # and each served outcome is the static run of its arm
        assert o == Outcome.of(o.arm, *runs[o.arm][i])


def test_windows_and_interval_of_the_analysis():
    items = tasks.sample_items(6, seed=1)
    zero = Outcome("careful", 0.0, 10, 10, 0, 0)
    one = Outcome("careful", 1.0, 10, 10, 0, 0)
    static = {"careful": [one] * 6, "aggressive": [zero] * 6}
    served = [one, one, Outcome("aggressive", 0.0, 10, 10, 0, 0), one, one, one]
    r = cons.analyse(items, static, served, 0.0, "careful", 2)
    assert r["windows_vs_baseline"] == [-0.5, 0.0]  # windows after the first: items 2-3 and 4-5
    assert r["run_vs_baseline"] == pytest.approx(-1 / 6) and r["best"] == "careful"
    assert r["ci"] > 0 and r["realized"] == pytest.approx(-1.0)


def test_heldout_curve_values_the_greedy_arms_and_leaves_serving_alone(tmp_path):
    from benchmarks.testbed.end_to_end import greedy_arms
    from stopbandit.config import SelectorConfig
    from stopbandit.serving.selector import Selector

    decoder = _decoder()
    items = tasks.sample_items(40, seed=cons.STREAM_SEED)
    held = tasks.sample_items(24, seed=cons.HELD_OUT_SEED)
    runs = {a.name: run_items(decoder, items, [a] * len(items)) for a in ARMS}
    held_runs = {a.name: run_items(decoder, held, [a] * len(held)) for a in ARMS}
    lam = 1.0
    table = cons.reward_table(held_runs, lam)
    assert table.shape == (len(held), len(ARMS))
    own = {a.name: cons.rewards_of([Outcome.of(a.name, *r) for r in held_runs[a.name]], lam) for a in ARMS}
    assert len({tuple(r) for r in own.values()}) > 1  # the arms differ on the held-out items
    for j, a in enumerate(ARMS):  # columns in ARMS order (the Selector's): column j is arm j's own static run
        assert list(table[:, j]) == own[a.name]

    served, budget, curve = cons.one_run(decoder, items, runs, lam, 3, f"sqlite:///{tmp_path / 'a.db'}", 8, None,
                                         False, (held, held_runs), 16)
    bare, bare_budget, no_curve = cons.one_run(decoder, items, runs, lam, 3, f"sqlite:///{tmp_path / 'b.db'}", 8,
                                               None, False)
    assert served == bare and budget == bare_budget and no_curve == []  # valuation logs and learns nothing
    assert [n for n, _ in curve] == [0, 16, 32, 40]  # batch boundaries past each multiple of 16, then the end
    assert curve[0][1] != curve[-1][1]  # the policy learned from the stream

    # the final value is the mean static reward of the arm greedy_arms picks per held-out item
    with Selector.open(f"sqlite:///{tmp_path / 'c.db'}", config=SelectorConfig(), lam=lam,
                       token_scale=cons.TOKEN_SCALE, arms=list(ARMS), seed=3, snapshot=None, follow=False) as sel:
        assert cons.serve_static(sel, items, runs, 8) == served
        picks = greedy_arms(sel, held, lam)
        expected = sum(own[p.name][i] for i, p in enumerate(picks)) / len(held)
    assert curve[-1][1] == pytest.approx(expected)
