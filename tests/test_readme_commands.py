"""Every command and code block of the README runs: the Python example, and each command of the command-line
block, in order, through the real ``stopbandit`` entry point (exit code 0, no traceback)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_the_quick_start_commands_are_the_ones_ci_runs():
    quick = blocks("bash")[0].strip().splitlines()
    assert quick[0] == "pip install -e . && stopbandit demo"
    test_cmd = quick[1]
    assert test_cmd.startswith("pip install torch==") and '-e ".[test]"' in test_cmd
    assert test_cmd.endswith("&& python -m pytest")
    ci = (README.parent / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == test_cmd  # .ci/run runs exactly the README's test command


def test_the_python_example_runs(tmp_path, monkeypatch):
    code = blocks("python")[0]  # the Selector example (the Gateway section's block runs in tests/serve)
    assert "Selector.open" in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    sel = namespace["sel"]
    assert (tmp_path / "stopbandit.db").exists()
    assert sel.store.current_lambda().value == 0.35  # stored (set_lambda wrote it before close returned)


def _decode_model(directory: Path) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from stopbandit.decoder.chartok import build_char_tokenizer
    from stopbandit.decoder.config import DecoderConfig
    from stopbandit.decoder.tiny import tiny_causal_lm

    tok = build_char_tokenizer("abcdefghijklmnopqrstuvwxyz0123456789 +=;,?*")
    tiny_causal_lm(len(tok), arch="llama", seed=0, init_std=0.2).save_pretrained(directory)
    tok.save_pretrained(directory)
    DecoderConfig(probe_every=4, max_answer_tokens=4, max_think_tokens=16, answer_end=(";",)).save(directory)
    return directory


def test_every_command_line_command_runs(tmp_path):
    cli = next(b for b in blocks("bash") if b.lstrip().startswith("stopbandit db upgrade"))  # "Command line"
    commands = [line.split("  #")[0].strip() for line in cli.strip().splitlines()]
    commands = [c for c in commands if c]
    assert all(c.startswith("stopbandit ") for c in commands)
    # the store the commands after the demo read is the one the demo fills (its own default path)
    (tmp_path / "stopbandit-demo").mkdir()
    env = {**os.environ, "STOPBANDIT_DB": f"sqlite:///{tmp_path / 'stopbandit-demo' / 'stopbandit.db'}"}
    (tmp_path / "prompts.txt").write_text("what is 2+2\nname a cat\n")
    model = _decode_model(tmp_path / "model")
    ran = []
    for cmd in commands:
        argv = shlex.split(cmd)[1:]
        argv = [str(model) if a == "DIR" else a for a in argv]
        if argv[0] == "demo":  # the demo makes the store the others read; the default PNG needs [plots]
            argv += ["--no-progress"] if "--no-progress" in _help("demo") else []
        res = subprocess.run([sys.executable, "-m", "stopbandit.cli", *argv], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
        out = res.stdout + res.stderr
        assert "Traceback" not in out, (cmd, out)
        if argv[:2] == ["ab", "report"]:  # the demo routes no challenger traffic: a clear refusal, as documented
            assert res.returncode == 2 and "no challenger decisions" in out, (cmd, out)
        else:
            assert res.returncode == 0, (cmd, out)
        ran.append(argv[0] + " " + argv[1] if argv[0] in ("db", "replay", "lambda", "ab") else argv[0])
    assert {"db upgrade", "demo", "replay train", "replay evaluate", "replay sweep", "replay export",
            "replay import", "lambda set", "ab report", "decode"} <= set(ran)
    assert (tmp_path / "pareto.png").exists() and (tmp_path / "events.jsonl").stat().st_size > 0


def _help(cmd: str) -> str:
    return subprocess.run([sys.executable, "-m", "stopbandit.cli", cmd, "--help"], capture_output=True,
                          text=True, timeout=120).stdout
