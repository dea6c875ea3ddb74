"""`stopbandit serve` as a process: its settings file, its key from the environment, its user errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from stopbandit.serve.config import GatewayConfig, load

from tests.serve.toyengine import ToyEngine
from tests.serve.upstreams import free_port

CONFIG = """\
lam = 0.3

[[arms]]
name = "full"
threshold = 1.01

[[arms]]
name = "quick"
threshold = 0.25
max_think_tokens = 40

[gateway]
probe_every = 8
max_think_tokens = 64
confidence_mean = "geometric"
answer_stop = ["}"]
"""


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stopbandit.cli", "serve", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)


def test_config_file_holds_the_selector_and_the_gateway_settings(tmp_path):
    path = tmp_path / "stopbandit.toml"
    path.write_text(CONFIG, encoding="utf-8")
    selector, gateway = load(path)
    assert selector.lam == 0.3 and selector.arms.names == ("full", "quick")
    assert gateway == GatewayConfig(probe_every=8, max_think_tokens=64, confidence_mean="geometric")
    path.write_text(CONFIG + "probe_spacing = 3\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\[gateway\]: unknown key\(s\) \['probe_spacing'\]"):
        load(path)


@pytest.mark.parametrize(("args", "config", "needle"), [
    (["--shadow", "nope"], None, "unknown arm 'nope'"),
    ([], "[gateway]\nprobe_every = 0\n", "gateway.probe_every must be a positive integer"),
    (["--engine", "tgi"], None, "Invalid value for '--engine'"),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, args, config, needle):
    extra = []
    if config is not None:
        (tmp_path / "c.toml").write_text(config, encoding="utf-8")
        extra = ["--config", str(tmp_path / "c.toml")]
    out = _cli("--upstream", "http://127.0.0.1:9", "--db", f"sqlite:///{tmp_path / 'x.db'}", *args, *extra,
               cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr and "Traceback" not in out.stderr


def test_serve_runs_with_its_config_and_the_key_from_the_environment(tmp_path):
    (tmp_path / "stopbandit.toml").write_text(CONFIG, encoding="utf-8")
    port = free_port()
    env = {**os.environ, "STOPBANDIT_API_KEY": "k3y"}
    env.pop("STOPBANDIT_DB", None)
    with ToyEngine("vllm") as toy:
        process = subprocess.Popen(
            [sys.executable, "-m", "stopbandit.cli", "serve", "--upstream", toy.url, "--port", str(port),
             "--config", "stopbandit.toml", "--db", "sqlite:///gateway.db", "--log-level", "warning"],
            cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode()
                time.sleep(0.2)
            assert httpx.post(url + "/v1/completions", json={"prompt": "x"}).status_code == 401
            auth = {"Authorization": "Bearer k3y"}
            r = httpx.post(url + "/v1/completions", json={"prompt": "x", "stopbandit": {"arm": "quick"}},
                           headers=auth, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["stopbandit"]["trace"]["p"][0][0] == 8, "probe_every from [gateway]"
            assert httpx.get(url + "/v1/lambda", headers=auth).json() == {"lambda": 0.3}
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
    assert process.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in process.stderr.read().decode()
