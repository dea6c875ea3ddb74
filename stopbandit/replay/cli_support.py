"""Option resolution and printing shared by the ``stopbandit replay …`` commands.

:func:`setup` resolves what a command evaluates with (arms, λ, token_scale;
the order is in :mod:`stopbandit.replay.cli_commands`); :func:`common_options`
adds the log-filter options every evaluating command takes; the ``print_*``
helpers render estimates, calibration, exact stop-rule tables and warnings
with rich. It belongs to the CLI, like the commands that use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import click

from stopbandit.bandit.arms import ArmSet
from stopbandit.clikit import DB_HELP, console, table
from stopbandit.errors import ConfigError
from stopbandit.replay.candidates import newest_snapshot_meta, resolve_arms, resolve_lambda, snapshot_meta
from stopbandit.replay.logreader import LogCounts
from stopbandit.replay.ope import Estimate
from stopbandit.replay.options import DEFAULT_CHUNK, ReplayOptions
from stopbandit.replay.store import ReplayStore
from stopbandit.replay.times import parse_time


@dataclass
class Setup:
    store: ReplayStore
    arms: ArmSet
    arms_source: str
    meta: dict[str, Any] | None
    config: Any  # SelectorConfig | None
    lam: float
    lam_source: str
    token_scale: float


def setup(url: str | None, config_path: str | None, policy: str | None, lam: float | None,
          token_scale: float | None) -> Setup:
    from stopbandit.config import load_config

    cfg = load_config(config_path) if config_path else None
    store = ReplayStore(url)
    meta = snapshot_meta(store, policy)
    store_arms = store.arms()
    arms_meta = meta
    if cfg is None and store_arms is None and not (meta and meta.get("arms")):
        arms_meta = newest_snapshot_meta(store)  # a serving Selector's checkpoint: the arms it logged with
    arms, arms_source = resolve_arms(cfg.arms if cfg is not None else None, arms_meta, store_arms)
    lam_v, lam_source = resolve_lambda(lam, store, meta, cfg.lam if cfg is not None else 0.2)
    if lam_v < 0 or lam_v != lam_v:
        raise ConfigError(f"--lam must be a number >= 0, got {lam_v!r}")
    if token_scale is None:
        if cfg is not None:
            token_scale = cfg.token_scale
        elif meta is not None and isinstance(meta.get("token_scale"), (int, float)):
            token_scale = float(meta["token_scale"])
        else:
            token_scale = 1000.0
    if not token_scale > 0:
        raise ConfigError(f"--token-scale must be > 0, got {token_scale!r}")
    return Setup(store, arms, arms_source, meta, cfg, lam_v, lam_source, float(token_scale))


def included_statuses(include_defaulted: bool, include_late: bool) -> tuple[str, ...]:
    return ("ok",) + (("defaulted",) if include_defaulted else ()) + (("late",) if include_late else ())


def window(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    s, u = parse_time(since, field="--since"), parse_time(until, field="--until")
    if s is not None and u is not None and u <= s:
        raise ConfigError(f"--until ({until}) must be after --since ({since})")
    return s, u


def cell(metric: str, v: float) -> str:
    if v != v:
        return "n/a"
    return f"{v:,.1f}" if metric == "tokens" else f"{v:.4f}"


def ci_cell(metric: str, e: Estimate) -> str:
    return f"[{cell(metric, e.ci_low)}, {cell(metric, e.ci_high)}]"


def counts_table(counts: LogCounts, title: str = "events"):
    c = counts
    return table(title, ["events", "used", "ok", "defaulted", "late", "excluded", "traced"],
                 [[c.events, c.used, c.ok, c.defaulted, c.late, c.excluded, c.traced]])


HEAVY_WEIGHT = 100.0
"""A sweep row whose largest importance weight reaches this is flagged: a handful of events decide it."""
FEW_ESS = 30.0
"""A sweep row with fewer effective events than this is flagged even when they are a large share of the log."""


def print_calibration(calibration: dict[str, Any] | None, title: str) -> None:
    """Brier score and reliability table of a model's P(EM) (``raw``: before its recalibration)."""
    from stopbandit.replay.calibration import reliability_rows

    if not calibration:
        return
    for which, label in (("raw", "heads, uncalibrated"), ("model", "calibrated" if "raw" in calibration else "heads")):
        rep = calibration.get(which)
        if rep is None or not rep["events"]:
            continue
        console.print(table(f"{title} ({label}): Brier {rep['brier']:.5f}, mean P {rep['mean_prediction']:.4f} vs "
                            f"mean EM {rep['mean_em']:.4f}", ["P bin", "events", "mean P", "mean EM"],
                            reliability_rows(rep)))


def print_warnings(lines: Sequence[str]) -> None:
    from rich.markup import escape

    for w in lines:
        console.print(f"[bold yellow]WARNING[/] {escape(w)}")


def common_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--db", "url", envvar="STOPBANDIT_DB", help=DB_HELP),
        click.option("--config", "config_path", type=click.Path(dir_okay=False),
                     help="Selector TOML config ([[arms]], token_scale, exploration, features)."),
        click.option("--include-defaulted", is_flag=True,
                     help="Also estimate on events whose reward was defaulted (excluded by default)."),
        click.option("--include-late", is_flag=True, help="Also estimate on events whose reward arrived late."),
        click.option("--chunk", type=click.IntRange(100, 200_000), default=DEFAULT_CHUNK, show_default=True,
                     help="Events per chunk read (memory is bounded by it)."),
        click.option("--no-progress", is_flag=True, help="Never show the progress bar (stderr)."),
        click.option("--jobs", type=click.IntRange(1, 64), default=None,
                     help="Worker processes (default: chosen after the first 50,000 outcome ids from what they "
                          "cost and the idle cores, up to 8)."),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def stop_rule(meta: dict[str, Any] | None) -> Any:
    from stopbandit.bandit.snapshot import stop_rule_of

    rule = stop_rule_of(meta) if meta is not None else None
    return rule if rule is not None and rule.trained else None


def exact_reports(s: Setup, options: ReplayOptions, lams: Sequence[float]) -> list[dict[str, Any]]:
    """The exact trace evaluation of every stop rule (the arms, the snapshot's learned rule) at each λ."""
    from stopbandit.replay.stop_rules import exact_stop_rules, stop_rule_arms, traced_events

    events = traced_events(s.store, options)
    if events.n == 0:
        return []
    rule = stop_rule(s.meta)
    arms = stop_rule_arms(s.arms, rule)
    return [exact_stop_rules(events, arms, lam=lam, token_scale=s.token_scale, rule=rule).to_dict() for lam in lams]


def print_exact(reports: Sequence[dict[str, Any]]) -> None:
    """One table: per stop rule (learned ones per λ), exact EM / tokens / reward on the common and revealed events."""
    if not reports:
        return
    first = reports[0]
    rows = []
    for rep in reports:
        for r in rep["rules"]:
            learned = bool(r["arm"].get("learned"))
            if rep is not first and not learned:
                continue  # a fixed rule does not depend on λ: shown once
            c, v = r["common_on"], r["revealed_on"]
            rows.append([r["rule"], f"{rep['lam']:g}" if learned else "any",
                         cell("em", c["em"]["mean"]), f"[{cell('em', c['em']['ci_low'])}, {cell('em', c['em']['ci_high'])}]",
                         cell("tokens", c["tokens"]["mean"]), cell("reward", c["reward"]["mean"]),
                         f"{r['revealed']:,}", cell("em", v["em"]["mean"]), cell("tokens", v["tokens"]["mean"])])
    console.print(table(f"stop rules, EXACT off the probe traces ({first['graded_events']:,} graded traced events, "
                        f"{first['common_events']:,} reveal every rule; reward at λ = {first['lam']:g} for fixed rules)",
                        ["rule", "λ", "EM (common)", "95% CI", "tokens (common)", "reward (common)", "revealed",
                         "EM (revealed)", "tokens (revealed)"], rows))
    console.print(first["note"])
