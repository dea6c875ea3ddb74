"""The Grafana dashboard in docs/ queries only metrics stopbandit exports, with suffixes their types have."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("_sum", "_count")}


def test_every_metric_the_grafana_dashboard_queries_exists():
    pytest.importorskip("prometheus_client")
    pytest.importorskip("fastapi")
    sys.path.insert(0, str(ROOT / "tools"))
    import docgen

    catalog = docgen.metric_catalog()
    wire = {name + sfx for name, rows in catalog.items() for _, kind, _ in rows for sfx in SUFFIXES[kind]}
    dash = json.loads((ROOT / "docs/grafana-dashboard.json").read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bstopbandit_[a-z_]+\b", e)}
    assert len(used) >= 20
    assert sorted(used - wire) == []
    assert {"stopbandit_lambda", "stopbandit_decisions_total", "stopbandit_gateway_requests_total"} <= used
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
