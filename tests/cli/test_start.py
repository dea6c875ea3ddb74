"""What a CLI start loads: `stopbandit --help` and `stopbandit lambda get` stay free of the heavy engines.

Run in fresh interpreters (this test process has long imported everything);
what is measured is which modules are loaded, not how long it takes (speed
belongs in benchmarks).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from stopbandit.cli import main

NEVER = ("scipy", "matplotlib", "torch", "transformers", "vowpalwabbit")
"""Modules no command start may load before its command needs them."""

_RUN = """
import json, sys
from stopbandit.cli import main
{prepare}
try:
    main({args!r}, prog_name="stopbandit")
except SystemExit as exc:
    code = exc.code
print("\\n@@" + json.dumps({{"code": code, "loaded": sorted(m for m in sys.modules if "." not in m)}}))
"""


def run_cli(*args: str, prepare: str = "") -> tuple[str, int, set[str]]:
    """(stdout before the report, exit code, top-level modules loaded) of ``stopbandit ARGS`` in a fresh interpreter."""
    env = {**os.environ, "COLUMNS": "100"}
    out = subprocess.run([sys.executable, "-c", _RUN.format(args=list(args), prepare=prepare)], env=env,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    text, _, report = out.rpartition("\n@@")
    info = json.loads(report)
    return text, info["code"], set(info["loaded"])


def test_help_lists_every_group_without_importing_one():
    text, code, loaded = run_cli("--help")
    assert code == 0
    assert not loaded & {*NEVER, "numpy", "sqlalchemy", "alembic"}, loaded
    assert not any(m.startswith("stopbandit.") for m in loaded)
    loaded_text, _, _ = run_cli(
        "--help", prepare="import click\nfor n in main.lazy: main.get_command(click.Context(main), n)")
    assert text == loaded_text  # the listing is the one the loaded groups give
    for name in ("replay", "lambda", "ab", "decode", "db", "demo"):
        assert f"\n  {name} " in text


@pytest.mark.parametrize("name", sorted(main.lazy))
def test_lazy_help_lines_are_the_groups_docstrings(name):
    module, attr, line = main.lazy[name]
    cmd = getattr(importlib.import_module(module), attr)
    assert line == " ".join(cmd.help.partition("\n\n")[0].split())
    assert cmd.name == name


def test_lambda_get_loads_no_heavy_engine(sqlite_url):
    assert CliRunner().invoke(main, ["db", "upgrade", "--db", sqlite_url]).exit_code == 0
    r = CliRunner().invoke(main, ["lambda", "set", "0.25", "--reason", "test", "--db", sqlite_url])
    assert r.exit_code == 0, r.output
    text, code, loaded = run_cli("lambda", "get", "--db", sqlite_url)
    assert code in (0, None) and "0.25" in text
    assert not loaded & set(NEVER), loaded
