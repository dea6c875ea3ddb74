"""``stopbandit decode`` end to end on a model saved to a local directory."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from stopbandit.decoder.cli_commands import decode, read_prompts
from stopbandit.decoder.config import DecoderConfig
from stopbandit.errors import InputError


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, llama, tokenizer):
    path = tmp_path_factory.mktemp("tiny-model")
    llama.save_pretrained(path)
    tokenizer.save_pretrained(path)
    DecoderConfig(probe_every=4, max_answer_tokens=4, max_think_tokens=16, answer_end=(";",)).save(path)
    return path


def test_decode_jsonl_with_arm_json_output(model_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "ab", "reference": "zz"}\n\n{"prompt": "hello world"}\n', encoding="utf-8")
    result = CliRunner().invoke(decode, [str(prompts), "--model", str(model_dir), "--arm", "aggressive", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rows = data["results"]
    assert [r["prompt"] for r in rows] == ["ab", "hello world"]
    assert rows[0]["em"] == 0.0 and rows[1]["em"] is None
    for row in rows:
        assert row["arm"] == "aggressive"
        assert row["total_tokens"] == row["think_tokens"] + row["probe_tokens"] + row["answer_tokens"]
        assert row["think_tokens"] <= 16  # the model directory's global cap applies
    assert data["summary"]["n"] == 2


def test_decode_text_file_table_and_overrides(model_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("ab\nthe cat\n", encoding="utf-8")
    config = tmp_path / "arms.toml"
    config.write_text('[[arms]]\nname = "tight"\nthreshold = 1.01\nmax_think_tokens = 8\n'
                      '[[arms]]\nname = "open"\nthreshold = 1.01\n[decoder]\nprobe_every = 2\n', encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(decode, [str(prompts), "--model", str(model_dir), "--config", str(config), "--arm", "tight", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["results"]
    assert all(r["think_tokens"] == 8 and r["stop_reason"] == "budget" for r in rows)
    assert all([p[0] for p in r["trace"]["p"]] == [2, 4, 6, 8] for r in rows)  # [decoder] probe_every = 2
    table = runner.invoke(decode, [str(prompts), "--model", str(model_dir), "--arm", "full", "--probe-every", "0"])
    assert table.exit_code == 0, table.output
    assert "stopbandit decode" in table.output and "mean tokens" in table.output


def test_decode_select_uses_a_selector_and_logs_to_the_store(model_dir, tmp_path, monkeypatch):
    from stopbandit.replay.store import ReplayStore

    url = f"sqlite:///{tmp_path / 'sel.db'}"
    monkeypatch.setenv("STOPBANDIT_DB", url)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "ab", "reference": "zz"}\n{"prompt": "the cat", "reference": "q"}\n'
                       '{"prompt": "no reference"}\n', encoding="utf-8")
    result = CliRunner().invoke(decode, [str(prompts), "--model", str(model_dir), "--select", "--json",
                                         "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["results"]
    store = ReplayStore(url)
    counts = store.counts()
    assert counts["decisions"] == 3 and counts["outcomes"] == 2  # no reference, no reward
    events = [e for chunk in store.iter_events() for e in chunk]
    assert sorted(e.tokens for e in events) == sorted(r["total_tokens"] for r in rows if r["em"] is not None)
    assert all(e.trace is not None for e in events)
    store.dispose()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ([], "exactly one of --arm NAME or --select"),
        (["--arm", "nope"], "unknown arm 'nope'"),
        (["--arm", "full", "--think-end", ""], "think_end"),
    ],
)
def test_decode_usage_errors(model_dir, tmp_path, args, match):
    prompts = tmp_path / "p.txt"
    prompts.write_text("ab\n", encoding="utf-8")
    result = CliRunner().invoke(decode, [str(prompts), "--model", str(model_dir), *args])
    assert result.exit_code != 0
    assert match in result.output


@pytest.mark.parametrize(
    ("text", "match"),
    [("", "no prompts"), ('{"prompt": 3}\n', "non-empty string field 'prompt'"), ('{"prompt": "a"}\n{bad\n', ":2: not valid JSON")],
)
def test_read_prompts_rejects(tmp_path, text, match):
    path = tmp_path / "p.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=match):
        read_prompts(path)
