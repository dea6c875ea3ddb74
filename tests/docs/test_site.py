"""The documentation site builds with ``mkdocs build --strict`` (a broken link or a stale API reference fails)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    return out


def test_the_site_builds_strict_with_every_page(site):
    for page in ("getting-started", "guides/embedding", "guides/gateway", "guides/offline-evaluation",
                 "guides/lambda-operations", "guides/dashboard", "guides/security", "reliability",
                 "reference/cli", "reference/configuration", "reference/api", "reference/http",
                 "reference/formats", "reference/metrics", "benchmarks"):
        assert (site / page / "index.html").is_file(), page


def test_generated_references_follow_the_code(site):
    from stopbandit.cli import main
    from stopbandit.serve.engines import ENGINES

    cli = (site / "reference/cli/index.html").read_text(encoding="utf-8")
    for name in main.list_commands(None):  # every command, the lazy groups included
        assert f"stopbandit {name}" in cli, name
    assert "--sweep-plot" in cli and all(e in cli for e in ENGINES)
    http = (site / "reference/http/index.html").read_text(encoding="utf-8")
    for path in ("/v1/chat/completions", "/v1/rewards", "/v1/lambda", "/healthz", "/dashboard/data.json"):
        assert path in http, path
    assert (site / "reference/openapi.json").is_file()
    config = (site / "reference/configuration/index.html").read_text(encoding="utf-8")
    for key in ("decision_wait", "spill_dir", "revealed_weight_clip", "probe_every", "reward_window_s"):
        assert key in config, key
    api = (site / "reference/api/index.html").read_text(encoding="utf-8")
    assert "choose_forced" in api and "ControlledSelector" in api and "OpenAIClient" in api
    for member in ("choose", "reward", "set_lambda", "snapshot", "health"):  # the parts' methods included
        assert f'id="stopbandit.serving.selector.Selector.{member}"' in api, member


def test_one_page_per_benchmark_from_the_single_source(site):
    sections = re.findall(r"(?m)^## (.+)$", (ROOT / "docs/benchmarks.md").read_text(encoding="utf-8"))
    pages = sorted(p.parent.name for p in (site / "benchmarks").glob("*/index.html"))
    assert len(pages) == len(sections) >= 5
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert all(f"benchmarks/{p}.md" in nav for p in pages)  # a new section needs its nav entry
    assert not (ROOT / "docs/benchmarks").exists()  # figures are never copied, only split at build time


def test_the_docs_show_the_dashboard_screenshot(site):
    shot = ROOT / "docs/img/dashboard.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    assert "img/dashboard.png" in (site / "guides/dashboard/index.html").read_text(encoding="utf-8")
    assert (site / "img/dashboard.png").is_file()


def test_the_readme_links_to_the_guides():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).exists(), target
    for guide in ("embedding", "gateway", "offline-evaluation", "lambda-operations", "dashboard", "security"):
        assert f"docs/guides/{guide}.md" in readme, guide
    assert "mkdocs serve" in readme
