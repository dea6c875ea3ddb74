"""Reference pages generated from the code at `mkdocs build` time, so they cannot drift from it.

Used by ``tools/mkdocs_hooks.py`` (the site) and by ``tests/docs`` (which
checks the Grafana dashboard against :func:`metric_catalog`). Every page here
is derived: the CLI from the click commands, the configuration keys from the
config dataclasses, the HTTP API from the gateway's OpenAPI schema, the
metric names from live registries, and one page per benchmark from
``docs/benchmarks.md`` (the single source of the figures).
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parents[1]


# -- CLI ------------------------------------------------------------------------------------------

def _walk(cmd: click.Command, ctx: click.Context, path: list[str]) -> list[tuple[list[str], str]]:
    out = [(path, cmd.get_help(ctx))]
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            out += _walk(sub, click.Context(sub, info_name=name, parent=ctx), [*path, name])
    return out


def cli_markdown() -> str:
    from stopbandit.cli import main

    ctx = click.Context(main, info_name="stopbandit", terminal_width=100, max_content_width=100)
    lines = ["# Command line", "",
             "Every `stopbandit` command and its options, as `--help` prints them (generated from the click "
             "commands when the site is built).", ""]
    for path, text in _walk(main, ctx, ["stopbandit"]):
        level = "#" * min(len(path) + 1, 4)
        lines += [f"{level} `{' '.join(path)}`", "", "```text", text.rstrip(), "```", ""]
    return "\n".join(lines)


# -- configuration ----------------------------------------------------------------------------------

def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{json.dumps(f.default, ensure_ascii=False) if not isinstance(f.default, tuple) else list(f.default)}`"
    return "(see below)"


def _type(f: dataclasses.Field) -> str:
    return f"`{f.type}`".replace("|", "\\|")


def config_rows() -> dict[str, list[tuple[str, str, str]]]:
    """TOML section -> [(key, type, default)] from the config classes the loader checks against."""
    from stopbandit import config as cfg
    from stopbandit.serve.config import GatewayConfig

    top = {f.name: f for f in dataclasses.fields(cfg.SelectorConfig)}
    return {
        "(top level)": [(k, _type(top[k]), _default(top[k])) for k in cfg._SCALARS],
        "[store]": [(f.name, _type(f), _default(f)) for f in dataclasses.fields(cfg.StoreConfig)],
        "[learning]": [(f.name, _type(f), _default(f)) for f in dataclasses.fields(cfg.LearningConfig)],
        "[gateway]": [(f.name, _type(f), _default(f)) for f in dataclasses.fields(GatewayConfig)
                      if f.name not in ("upstream", "engine", "shadow", "api_key")],
    }


def config_markdown() -> str:
    from stopbandit import config as cfg

    lines = ["# Configuration keys", "",
             "The keys a TOML file passed as `Selector.open(url, config=PATH)` or `stopbandit serve --config PATH` "
             "may hold, generated from the configuration classes the loader validates against "
             f"(top-level sections: {', '.join(f'`{k}`' for k in sorted(cfg._TOP - set(cfg._SCALARS)))}). "
             "An unknown key is an error that names it. `[[arms]]` entries take `name`, `threshold`, "
             "`max_think_tokens` and optionally the agreement window; `[exploration]` takes `name` and that "
             "rule's parameters; `[features]` takes `version`, `length_counter`, `difficulty`, `prior_halflife`. "
             "The `[gateway]` section is read by `stopbandit serve` (its command-line flags set `upstream`, "
             "`engine`, `shadow` and `api_key`).", ""]
    for section, rows in config_rows().items():
        lines += [f"## {section}", "", "| key | type | default |", "| --- | --- | --- |"]
        lines += [f"| `{k}` | {t} | {d} |" for k, t, d in rows]
        lines.append("")
    lines += ["## Classes", "", "::: stopbandit.config.SelectorConfig", "", "::: stopbandit.config.LearningConfig", "",
              "::: stopbandit.serve.config.GatewayConfig", ""]
    return "\n".join(lines)


# -- HTTP API -----------------------------------------------------------------------------------------

def gateway_openapi() -> dict[str, Any]:
    """The gateway's OpenAPI schema, from a real app over a Selector on a throwaway SQLite store."""
    from stopbandit.serve.app import create_app
    from stopbandit.serve.config import GatewayConfig
    from stopbandit.serving.selector import Selector

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/openapi.db"
        sel = Selector.open(url, snapshot=None, follow=False)
        try:
            return create_app(sel, GatewayConfig()).openapi()
        finally:
            sel.close()


def http_markdown(schema: dict[str, Any]) -> str:
    lines = ["# HTTP API", "",
             f"The gateway's endpoints (`stopbandit serve`, version {schema['info']['version']}), rendered from the "
             "OpenAPI schema the app itself serves at `/openapi.json` (the full schema: "
             "[openapi.json](openapi.json)). Errors are OpenAI-shaped: "
             "`{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`.", ""]
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            lines += [f"## `{method.upper()} {path}`", "", op.get("description") or op.get("summary", ""), ""]
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                lines += ["Request body:", "", "```json", json.dumps(body, indent=2, ensure_ascii=False), "```", ""]
            codes = ", ".join(f"`{code}` {r.get('description', '')}" for code, r in op.get("responses", {}).items())
            lines += [f"Responses: {codes}", ""]
    return "\n".join(lines)


# -- metrics --------------------------------------------------------------------------------------------

def metric_catalog() -> dict[str, list[tuple[str, str, str]]]:
    """Every Prometheus family the package exports -> [(where, type, help)], read from live registries.

    The ControlledSelector's registry (over a real Selector on a throwaway store, after one decision and
    one reward, with the guardrail on so its gauges exist) and the gateway's (with every scrape-time gauge).
    """
    from prometheus_client import CollectorRegistry

    from stopbandit.control import ControlledSelector
    from stopbandit.control.controller import Target
    from stopbandit.control.metrics import ControlMetrics
    from stopbandit.serve.metrics import GatewayMetrics, health_gauges
    from stopbandit.serving.selector import Selector

    out: dict[str, list[tuple[str, str, str]]] = {}

    def take(registry: CollectorRegistry, where: str) -> None:
        for fam in registry.collect():
            out.setdefault(fam.name, []).append((where, fam.type, fam.documentation))

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/metrics.db"
        sel = Selector.open(url, snapshot=None, follow=False)
        try:
            ctl = ControlledSelector(sel, controller=Target("token_budget", 900.0), metrics=ControlMetrics(),
                                     guardrail=True, seed=0)
            d = ctl.choose("What is 2+2?", domain="math", request_id="catalog-1")
            ctl.reward(d.decision_id, em=1.0, tokens=100)
            take(ctl.metrics.registry, "ControlledSelector")
            shadow = type("Shadow", (), {"agreement": 1.0})()
            take(GatewayMetrics(lambda: health_gauges(sel.health(), shadow, True)).registry, "gateway /metrics")
        finally:
            sel.close()
    return dict(sorted(out.items()))


def metrics_markdown() -> str:
    lines = ["# Metric names", "",
             "Every Prometheus metric stopbandit exports, read from the live registries when the site is built: "
             "the `ControlledSelector`'s (`ControlMetrics`, served by `metrics_server()` or rendered with "
             "`render()`) and the gateway's `/metrics`. Counters get `_total` on the wire, histograms "
             "`_bucket`/`_sum`/`_count`, summaries `_sum`/`_count`. A Grafana dashboard over them: "
             "[grafana-dashboard.json](../grafana-dashboard.json).", "",
             "| name | exported by | type | help |", "| --- | --- | --- | --- |"]
    for name, rows in metric_catalog().items():
        for where, kind, doc in rows:
            lines.append(f"| `{name}` | {where} | {kind} | {doc.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


# -- benchmarks ---------------------------------------------------------------------------------------

def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower().replace("λ", "lambda")).strip("-")


def benchmark_pages(text: str) -> dict[str, str]:
    """``docs/benchmarks.md`` split at its ``## `` headings: {file name: markdown}, ``index.md`` first."""
    parts = re.split(r"(?m)^## ", text)
    intro, sections = parts[0], parts[1:]
    pages: dict[str, str] = {}
    links = []
    for sec in sections:
        title = sec.splitlines()[0].strip()
        name = f"{_slug(title)}.md"
        body = "# " + re.sub(r"(?m)^###", "##", sec)
        pages[name] = body.replace("](img/", "](../img/")
        links.append(f"- [{title.replace('`', '')}]({name})")
    pages = {"index.md": intro.rstrip() + "\n\n" + "\n".join(links) + "\n", **pages}
    return pages
