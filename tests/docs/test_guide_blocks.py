"""Every ``python`` and ``bash`` block of the site's pages runs, in page order, in a fresh directory per page.

``text`` blocks are command lines shown but not run (engines this machine does not
have, or the commands every page already runs); any other fence tag fails here, so
a block cannot escape the test by its tag.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if p.name != "benchmarks.md")
RUN = {"python", "bash"}
SHOWN = {"text", "json", "toml"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(page: Path) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(page.read_text(encoding="utf-8"))]


def test_every_block_has_a_known_tag():
    wrong = [(p.name, tag) for p in PAGES for tag, _ in blocks(p) if tag not in RUN | SHOWN]
    assert wrong == []
    assert sum(tag in RUN for p in PAGES for tag, _ in blocks(p)) >= 15


@pytest.mark.parametrize("page", [p for p in PAGES if any(t in RUN for t, _ in blocks(p))],
                         ids=lambda p: str(p.relative_to(DOCS)))
def test_the_blocks_of_the_page_run(page, tmp_path):
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "XDG_STATE_HOME": str(tmp_path / "state"), "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    env.pop("STOPBANDIT_DB", None)
    env.pop("STOPBANDIT_API_KEY", None)
    for i, (tag, code) in enumerate(blocks(page)):
        if tag not in RUN:
            continue
        script = tmp_path / f"block{i}.{'py' if tag == 'python' else 'sh'}"
        script.write_text(code, encoding="utf-8")
        cmd = [sys.executable, str(script)] if tag == "python" else ["bash", "-euo", "pipefail", str(script)]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"block {i} of {page.name}:\n{code}\n--- stdout\n{proc.stdout[-3000:]}" \
                                     f"\n--- stderr\n{proc.stderr[-3000:]}"
