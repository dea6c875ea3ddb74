"""Decoder settings, token resolution and the probe schedule: validation and the default spacing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stopbandit.decoder.config import DecoderConfig, default_probe_every
from stopbandit.decoder.schedule import ProbeSchedule
from stopbandit.decoder.tokens import TokenSpec
from stopbandit.errors import ConfigError


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"think_end": ""}, "think_end"),
        ({"think_end": 3}, "think_end"),
        ({"answer_prefix": None}, "answer_prefix"),
        ({"probe_every": -1}, "probe_every"),
        ({"probe_every": 2.5}, "probe_every"),
        ({"max_answer_tokens": 0}, "max_answer_tokens"),
        ({"max_think_tokens": True}, "max_think_tokens"),
        ({"batch_size": 0}, "batch_size"),
        ({"answer_end": "eos"}, "answer_end"),
        ({"probe_markers": ("",)}, "probe_markers"),
        ({"add_special_tokens": "yes"}, "add_special_tokens"),
    ],
)
def test_config_rejects(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DecoderConfig(**kwargs)


def test_config_round_trips_and_names_unknown_settings(tmp_path):
    config = DecoderConfig(think_start="<think>", answer_end=(";",), probe_markers=("\n\n",), probe_every=8)
    assert DecoderConfig.from_dict(config.to_dict()) == config
    config.save(tmp_path)
    assert DecoderConfig.load(tmp_path) == config
    assert DecoderConfig.load(tmp_path / "missing") is None
    with pytest.raises(ConfigError, match="probe_evry"):
        config.replace(probe_evry=3)
    assert config.replace(probe_every=None) == config  # None = "not given"


@pytest.mark.parametrize("answer_tokens", [1, 4, 16, 33])
def test_default_spacing_bounds_probe_overhead(answer_tokens):
    """Worst case: every probe uses max_answer_tokens; still <= 10% of the thinking tokens."""
    every = default_probe_every(answer_tokens)
    assert DecoderConfig(max_answer_tokens=answer_tokens).probe_spacing == every
    for thinking in range(1, 5 * every):
        worst = (thinking // every) * answer_tokens
        assert worst <= 0.10 * thinking + 1e-9


def test_schedule_every_and_markers():
    schedule = ProbeSchedule(every=3, markers=((7, 8),))
    probed = [s for s in range(10) if schedule.at([1, 7, 8, 2, 2, 2, 7, 8, 5, 5][:s])]
    assert probed == [3, 6, 8, 9]
    assert not ProbeSchedule().enabled and ProbeSchedule(every=5).enabled
    with pytest.raises(ConfigError, match="every"):
        ProbeSchedule(every=-2)


def test_token_spec_from_tokenizer(tokenizer):
    config = DecoderConfig(think_end="</think>", answer_prefix="=", answer_end=(";",), probe_markers=("ab",))
    spec = TokenSpec.from_tokenizer(tokenizer, config)
    assert spec.think_end == (tokenizer.convert_tokens_to_ids("</think>"),)
    assert spec.answer_prefix == tuple(tokenizer.encode("=", add_special_tokens=False))
    assert spec.answer_end == {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(";")}
    assert spec.think_stop == {tokenizer.eos_token_id}
    assert spec.markers == (tuple(tokenizer.encode("ab", add_special_tokens=False)),)
    with pytest.raises(ConfigError, match="answer_end entry 'ab'"):
        TokenSpec.from_tokenizer(tokenizer, DecoderConfig(answer_end=("ab",)))


def test_decoder_package_imports_without_torch():
    """``import stopbandit.decoder`` and the CLI command must not need torch or transformers."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "import stopbandit, stopbandit.decoder, stopbandit.decoder.cli_commands\n"
        "from stopbandit.decoder import DecoderConfig, OpenAIClient, arm_to_request\n"
        "try:\n"
        "    stopbandit.decoder.HFDecoder\n"
        "except ImportError:\n"
        "    print('lazy-ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "lazy-ok" in out.stdout
