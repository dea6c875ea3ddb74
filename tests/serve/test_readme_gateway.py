"""The README's Gateway section runs as written: engine, gateway, an `openai` request, a reward, an evaluation.

The blocks run verbatim in a fresh directory, with one substitution: the
ports 8000 and 8400 become free ports, so the test never collides with
anything else listening on this machine.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.serve.upstreams import free_port

README = Path(__file__).resolve().parents[2] / "README.md"


def _section_blocks() -> list[tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Gateway\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(bash|python)\n(.*?)```", section, flags=re.S)


def _wait(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args!r} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout} s")


def test_the_readme_gateway_section_runs_as_written(tmp_path):
    blocks = _section_blocks()
    assert [kind for kind, _ in blocks] == ["bash", "python", "bash"]
    engine_port, gateway_port = free_port(), free_port()

    def ported(code: str) -> str:
        return code.replace(":8000", f":{engine_port}").replace("--port 8000", f"--port {engine_port}") \
            .replace(":8400", f":{gateway_port}").replace("--port 8400", f"--port {gateway_port}")

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(README.parent)}
    env.pop("STOPBANDIT_DB", None)
    started: list[subprocess.Popen] = []
    try:
        for line in ported(blocks[0][1]).strip().splitlines():
            assert line.endswith(" &"), line
            process = subprocess.Popen(shlex.split(line[:-2]), cwd=tmp_path, env=env, start_new_session=True,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            started.append(process)
            port = engine_port if len(started) == 1 else gateway_port
            _wait(f"http://127.0.0.1:{port}/v1/models", process)
        request = subprocess.run([sys.executable, "-c", ported(blocks[1][1])], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=300)
        assert request.returncode == 0, request.stderr
        assert request.stdout.split()[0] in ("full", "careful", "balanced", "aggressive")
        evaluate = subprocess.run(ported(blocks[2][1]), shell=True, cwd=tmp_path, env=env,  # noqa: S602
                                  capture_output=True, text=True, timeout=300)
        assert evaluate.returncode == 0, evaluate.stderr + evaluate.stdout
        assert "ips" in evaluate.stdout.lower()
    finally:
        for process in reversed(started):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)
    gateway_log = started[1].stderr.read().decode(errors="replace") if len(started) > 1 and started[1].stderr else ""
    assert "Traceback" not in gateway_log, gateway_log[-3000:]
    assert (tmp_path / "gateway.db").is_file()


@pytest.mark.parametrize("args", [["--help"]])
def test_serve_help_lists_its_options(args):
    out = subprocess.run([sys.executable, "-m", "stopbandit.cli", "serve", *args], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    for option in ("--upstream", "--engine", "--db", "--config", "--host", "--port", "--shadow", "--api-key"):
        assert option in out.stdout
