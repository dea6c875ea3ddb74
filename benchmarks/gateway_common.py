"""Shared parts of the gateway benchmarks: subprocess servers, a lean HTTP client, percentiles.

Every server runs as its own process (its own interpreter and GIL) on a free
loopback port: the canned upstream (:mod:`benchmarks.gateway_upstream`), our
decoder server, llama-cpp-python's server and the gateway itself
(``stopbandit serve``). The load generator is a raw HTTP/1.1 keep-alive
client on asyncio streams (tens of microseconds a request), so the client
costs little next to what is measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.serve.upstreams import (
    EngineUnavailable,
    Upstream,
    free_port,
    start_decoder_server,
    start_gateway,
    start_llamacpp,
)

__all__ = [
    "EngineUnavailable",
    "RawClient",
    "Upstream",
    "cpu_seconds",
    "main_of",
    "write_json",
    "free_port",
    "percentile",
    "start_canned",
    "start_decoder_server",
    "start_gateway",
    "start_llamacpp",
    "summarize",
]


def _log(prefix: str) -> Path:
    return Path(tempfile.mkstemp(prefix=prefix, suffix=".log")[1])


def start_canned() -> Upstream:
    """The trivially fast upstream; it prints its URL once bound."""
    log = _log("sb-canned-")
    with log.open("wb") as err:
        process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "benchmarks.gateway_upstream", "--port", "0"],
            stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    line: list[bytes] = []
    reader = threading.Thread(target=lambda: line.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(30)
    if not line or not line[0]:
        process.kill()
        raise EngineUnavailable(f"canned upstream did not start: {log.read_text(errors='replace')[-2000:]}")
    info = json.loads(line[0])
    return Upstream(info["url"], info["model"], process, log, info)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields_[11]) + int(fields_[12])) / ticks


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarize(values_s: Sequence[float]) -> dict[str, float]:
    """p50 / p90 / p99 / mean in milliseconds."""
    ms = [v * 1000 for v in values_s]
    return {"n": len(ms), "p50": percentile(ms, 0.5), "p90": percentile(ms, 0.9), "p99": percentile(ms, 0.99),
            "mean": statistics.fmean(ms) if ms else float("nan")}


class RawClient:
    """One keep-alive HTTP/1.1 connection; ``post`` returns (status, headers, body bytes)."""

    def __init__(self, url: str) -> None:
        host_port = url.split("://", 1)[1].rstrip("/")
        self.host, port = host_port.split(":")
        self.port = int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def request_bytes(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> bytes:
        data = json.dumps(body).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n{extra}\r\n")
        return head.encode() + data

    async def send(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            await self.connect()
        assert self.reader is not None and self.writer is not None  # noqa: S101 (benchmark code)
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            body = b"".join(parts)
        else:
            body = await self.reader.read()
            self.writer.close()
            self.writer = None
        return status, headers, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def write_json(path: Path | None, report: dict[str, Any]) -> None:
    """Write a benchmark's report as JSON (``--json PATH``); nothing when no path was given."""
    if path:
        path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")


def main_of(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], dict[str, Any]],
            print_report: Callable[[dict[str, Any]], None], argv: list[str] | None) -> int:
    """A benchmark's command line: parse (``--json`` added here), run, print the report, write it as JSON."""
    parser.add_argument("--json", type=Path, default=None, help="also write the report to this JSON file")
    args = parser.parse_args(argv)
    report = run(args)
    print_report(report)
    write_json(args.json, report)
    return 0
