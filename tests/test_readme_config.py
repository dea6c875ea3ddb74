"""The configuration the README shows is a configuration the library accepts."""

from __future__ import annotations

import re
from pathlib import Path

from stopbandit.bandit.arms import ArmSet
from stopbandit.config import LearningConfig, load_config

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_toml_example_loads(tmp_path):
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 1, "the README shows one configuration example"
    path = tmp_path / "stopbandit.toml"
    path.write_text(blocks[0], encoding="utf-8")
    cfg = load_config(path)
    assert cfg.lam == 0.2 and cfg.policy == "heads" and cfg.store.url == "sqlite:///stopbandit.db"
    assert cfg.learning == LearningConfig("none", 10.0)
    assert [(a.name, a.threshold, a.max_think_tokens) for a in cfg.arms] == \
        [(a.name, a.threshold, a.max_think_tokens) for a in ArmSet.of(None)]  # "these four are the defaults"
