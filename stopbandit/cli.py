"""The `stopbandit` command line: one click group, verbs grouped by noun.

User errors (bad URL, bad config, bad input) print one clear line and exit 2;
they never show a traceback. ``--json`` gives machine-readable output where a
command prints results.
"""

from __future__ import annotations

from pathlib import Path

import click

from stopbandit.clikit import DB_HELP, console, emit_json, err_console, table, user_errors
from stopbandit.serve.engines import ENGINES

__all__ = ["DB_HELP", "console", "emit_json", "err_console", "main", "table", "user_errors"]


class LazyGroup(click.Group):
    """A click group whose heavier subcommand groups are imported only when used.

    The pattern from click's documentation ("Lazily Loading Subcommands"):
    ``stopbandit --help`` and ``stopbandit db …`` stay fast because the replay,
    control and decoder groups (SQLAlchemy, numpy, VW, estimators, plotting)
    load on first use. Each entry carries its group's help line, so that
    ``--help`` can list the group without importing it (a test checks the
    lines against the groups' docstrings).
    """

    lazy: dict[str, tuple[str, str, str]] = {
        "replay": ("stopbandit.replay.cli_commands", "replay",
                   "Evaluate, train and sweep policies offline from the replay log; export/import it (DSJSON, CSV)."),
        "lambda": ("stopbandit.control.cli_commands", "lambda_group",
                   "Read, set and target λ, the price of a token in the reward em − λ·tokens/token_scale."),
        "ab": ("stopbandit.control.cli_commands", "ab",
               "Champion/challenger: compare the challenger's decisions with the champion's, and promote it."),
        "decode": ("stopbandit.decoder.cli_commands", "decode",
                   "Decode PROMPTS_FILE with early stopping and report answers, tokens and EM."),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            import importlib

            module, attr, _ = self.lazy[name]
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's listing of the commands, with a group not loaded yet listed by its help line."""
        listed: list[tuple[str, click.Command]] = []
        for name in self.list_commands(ctx):
            if name in self.lazy and name not in self.commands:
                cmd: click.Command | None = click.Command(name, help=self.lazy[name][2])
            else:
                cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                listed.append((name, cmd))
        if listed:
            limit = formatter.width - 6 - max(len(name) for name, _ in listed)  # as click: 3 × the spacing
            with formatter.section("Commands"):
                formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in listed])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="stopbandit")
def main() -> None:
    """stopbandit: learn, per request, how aggressively an LLM should stop reasoning early.

    A contextual bandit picks a stopping arm per request; every decision and
    outcome is logged to an SQL replay store, which these commands migrate,
    evaluate offline and steer. Start with `stopbandit demo`.
    """


# -- db -------------------------------------------------------------------------
@main.group()
def db() -> None:
    """Create and migrate the replay store schema (Alembic)."""


@db.command("upgrade")
@click.option("--db", "url", envvar="STOPBANDIT_DB", help=DB_HELP)
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@user_errors
def db_upgrade(url: str | None, revision: str) -> None:
    """Upgrade the schema to REVISION (creates it on an empty database)."""
    from stopbandit.replay import migrate
    from stopbandit.replay.engine import redact, resolve_url

    migrate.upgrade(url, revision)
    click.echo(f"{redact(resolve_url(url))}: at revision {migrate.current_revision(url)}")


@db.command("downgrade")
@click.option("--db", "url", envvar="STOPBANDIT_DB", help=DB_HELP)
@click.option("--revision", default="-1", show_default=True, help="Target revision ('base' drops all tables).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@user_errors
def db_downgrade(url: str | None, revision: str, yes: bool) -> None:
    """Downgrade the schema (drops tables and the data in them)."""
    from stopbandit.replay import migrate
    from stopbandit.replay.engine import redact, resolve_url

    if not yes:
        click.confirm(f"Downgrade {redact(resolve_url(url))} to {revision}? Data in dropped tables is lost", abort=True)
    migrate.downgrade(url, revision)
    click.echo(f"{redact(resolve_url(url))}: at revision {migrate.current_revision(url) or 'base'}")


@db.command("current")
@click.option("--db", "url", envvar="STOPBANDIT_DB", help=DB_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@user_errors
def db_current(url: str | None, as_json: bool) -> None:
    """Show the schema revision of the database and the newest one this package ships."""
    from stopbandit.replay import migrate
    from stopbandit.replay.engine import redact, resolve_url

    from stopbandit.errors import StoreError
    from stopbandit.replay.engine import make_engine, sqlite_file

    engine = make_engine(url)
    missing = sqlite_file(engine)
    if missing is not None and Path(missing).exists():
        missing = None
    if missing is not None and not Path(missing).parent.is_dir():
        engine.dispose()
        raise StoreError(f"no SQLite database at {missing}, and its directory does not exist")
    try:
        cur, head = migrate.current_revision(engine=engine), migrate.head_revision()
    finally:
        engine.dispose()
    if as_json:
        emit_json({"url": redact(resolve_url(url)), "current": cur, "head": head, "up_to_date": cur == head,
                   "exists": missing is None})
    elif missing is not None:
        click.echo(f"{redact(resolve_url(url))}: no database file at {missing} (head {head}; "
                   f"`stopbandit db upgrade` would create it there)")
    else:
        state = "up to date" if cur == head else "run `stopbandit db upgrade`"
        click.echo(f"{redact(resolve_url(url))}: revision {cur or 'none'} (head {head}; {state})")


# -- demo ------------------------------------------------------------------------
@main.command()
@click.option("--db", "url", help="SQLAlchemy URL of an EMPTY store for the demo's traffic (default: its own "
              "SQLite file stopbandit-demo/stopbandit.db, recreated on every run; $STOPBANDIT_DB is ignored).")
@click.option("--requests", "n", type=click.IntRange(100, 10_000_000), default=20_000, show_default=True,
              help="Simulated requests to serve.")
@click.option("--lam", type=click.FloatRange(0, None), default=0.5, show_default=True,
              help="λ: reward = EM − λ·tokens/token_scale (0.5: of 0.1-1, where per-request choice can gain the "
                   "most over the best static arm in the simulator; at 0.1-0.2 the best arm per domain gains "
                   "nothing over careful).")
@click.option("--token-scale", type=click.FloatRange(1e-9, None), default=1000.0, show_default=True)
@click.option("--baseline", default="balanced", show_default=True,
              help="Arm served before stopbandit; exploration is conservative against it ('none': off). "
                   "balanced: the best fixed arm at the default λ, what a tuned fixed setting serves.")
@click.option("--max-loss", type=click.FloatRange(0, 10), default=0.01, show_default=True,
              help="Reward per request, on average, the exploration may give up against the baseline.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the simulator and the selector.")
@click.option("--traces/--no-traces", default=True, show_default=True,
              help="Learn every stricter arm revealed by the probe trace (nested feedback).")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=Path("stopbandit-demo.png"),
              show_default=True, help="Where to write the learning-curve PNG.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@user_errors
def demo(url: str | None, n: int, lam: float, token_scale: float, baseline: str, max_loss: float, seed: int,
         traces: bool, plot: Path, as_json: bool) -> None:
    """Serve simulated LLM traffic through a real Selector and SQLite store, then give a verdict.

    Each request gets a stopping arm from the selector, the calibrated simulator
    runs it, and the reward (EM − λ·tokens/token_scale, probe tokens included)
    is learned from and logged. The table compares the learned policy with
    always-full reasoning, every static arm, the best static arm in hindsight and
    the per-request oracle, on the same requests.

    The demo never writes into a store it was not given for it: without --db it
    uses its own throwaway SQLite file, and a store named with --db must be empty.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from stopbandit.demo import fresh_demo_store, require_empty_store, run_demo
    from stopbandit.replay.engine import redact, resolve_url

    base = None if baseline.lower() == "none" else baseline
    if base is not None:
        from stopbandit.bandit.arms import ArmSet

        ArmSet.of().index(base)  # an unknown arm is refused before the store is touched
    if url is None:
        url = fresh_demo_store()
    else:
        url = resolve_url(url)
        require_empty_store(url)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, disable=as_json, transient=True) as bar:
        task = bar.add_task("serving simulated requests", total=n)
        result = run_demo(url, requests=n, lam=lam, token_scale=token_scale, seed=seed, traces=traces, plot=plot,
                          baseline=base, max_loss=max_loss, progress=lambda done: bar.update(task, completed=done))
    rows = [[r.name, f"{r.em:.3f}", f"{r.tokens:.0f}", f"{100 * r.savings:.1f}%", f"{r.reward:.4f}"]
            for r in result.rows]
    budget = result.budget
    if as_json:
        emit_json({"url": redact(url), "requests": n, "lam": lam, "token_scale": token_scale,
                   "snapshot": result.snapshot, "plot": None if result.plot is None else str(result.plot),
                   "elapsed_s": result.elapsed_s,
                   "rows": [r.__dict__ for r in result.rows],
                   "baseline": result.baseline, "max_loss": result.max_loss,
                   "budget": None if budget is None else budget.__dict__,
                   "served_reward": result.served_reward, "best_static": result.best_static,
                   "best_static_reward": result.best_static_reward, "baseline_reward": result.baseline_reward,
                   "second_half_gap": result.second_half_gap, "domain_choice": result.domain_choice, "verdict": result.verdict, "reason": result.reason})
        return
    console.print(table(f"stopbandit demo — {n} requests, λ={lam}, reward = EM − λ·tokens/{token_scale:g}",
                        ["policy", "EM", "mean tokens", "saved vs full", "reward"], rows))
    if result.domain_choice:
        names = list(next(iter(result.domain_choice.values())))
        console.print(table("arm served per domain (second half)", ["domain", *names],
                            [[d, *(f"{100 * share[a]:.0f}%" for a in names)]
                             for d, share in result.domain_choice.items()]))
    if budget is not None and result.baseline_reward is not None:
        console.print(
            f"Baseline: {result.baseline} (reward {result.baseline_reward:.4f}); budget: give up at most "
            f"{result.max_loss:g} reward per request on average ({budget.budget:.1f} over the run); spent: "
            f"{budget.spent:.1f} by the lower bound, {result.served_reward - result.baseline_reward:+.4f} per "
            f"request realized; exploration cut down on {budget.restricted} of {n} decisions.",
            highlight=False, markup=False)
    else:
        console.print("Baseline: none (unconstrained exploration; --baseline ARM --max-loss L to bound it).",
                      highlight=False, markup=False)
    console.print(f"Verdict: {result.verdict}.", highlight=False, markup=False)
    console.print(f"Reason: {result.reason}.", highlight=False, markup=False)
    curve = (f"learning curve in {result.plot}" if result.plot is not None
             else "no learning curve (pip install 'stopbandit[plots]' for matplotlib)")
    console.print(f"Logged {result.decisions_logged} decisions and {result.outcomes_logged} outcomes to "
                  f"{redact(url)}; saved snapshot {result.snapshot}; {curve}. "
                  f"({result.elapsed_s:.1f} s)", highlight=False, markup=False)
    db = f" --db '{redact(url)}'"
    console.print("Next, evaluate offline from the replay log:", highlight=False, markup=False)
    console.print(f"  stopbandit replay evaluate{db} --policy latest --estimators ips,snips,dr,dm", highlight=False, markup=False)
    plot = " --plot pareto.png" if result.plot is not None else ""  # the plots extra is there when the demo drew
    console.print(f"  stopbandit replay sweep{db} --lambdas 0:1:0.05{plot}", highlight=False, markup=False)


# -- serve -----------------------------------------------------------------------
@main.command()
@click.option("--upstream", required=True, help="Base URL of the inference engine (OpenAI-compatible), e.g. "
              "http://127.0.0.1:8000.")
@click.option("--engine", type=click.Choice(["auto", *ENGINES]), default=None, help="Which engine the upstream is (its per-request budget field)  [default: auto].")
@click.option("--db", "url", envvar="STOPBANDIT_DB", help=DB_HELP)
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TOML file: the Selector's settings, and the gateway's under [gateway].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8400, show_default=True, help="Port to listen on.")
@click.option("--shadow", "shadow", metavar="ARM", default=None,
              help="Serve ARM to every request, log what the policy would have chosen and learn from ARM's trace.")
@click.option("--api-key", envvar="STOPBANDIT_API_KEY", default=None,
              help="Bearer key that guards rewards, λ and completions (default: $STOPBANDIT_API_KEY; none = open).")
@click.option("--model", default=None, help="Model name sent upstream when a request names none.")
@click.option("--probe-every", type=click.IntRange(1, None), default=None,
              help="Thinking tokens between probes of the probe driver  [default: 200].")
@click.option("--lam", type=click.FloatRange(0, None), default=None, help="λ (overrides the config and the store).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True)
@user_errors
def serve(upstream: str, engine: str | None, url: str | None, config_path: Path | None, host: str, port: int,
          shadow: str | None, api_key: str | None, model: str | None, probe_every: int | None, lam: float | None,
          log_level: str) -> None:
    """Run the OpenAI-compatible gateway in front of an inference engine (needs the `serve` extra).

    Each request to /v1/chat/completions or /v1/completions gets an arm from the
    Selector, which the gateway runs on the upstream: budget arms through the
    engine's own budget field, threshold arms through its probe driver. Rewards
    go to /v1/rewards; λ to /v1/lambda; /healthz and /metrics for operators.
    """
    try:
        from stopbandit.serve import config as gateway_config
        from stopbandit.serve.app import create_app
        from stopbandit.serve.runner import serve_forever
    except ImportError as exc:
        from stopbandit.errors import ConfigError

        raise ConfigError(f"the gateway needs the serve extra: pip install 'stopbandit[serve]' ({exc})") from None
    from stopbandit.serving.selector import Selector
    from stopbandit.replay.engine import redact, resolve_url

    selector_config, gw = gateway_config.load(config_path)
    gw = gw.with_(upstream=upstream, engine=engine, shadow=shadow, api_key=api_key or None, model=model,
                  probe_every=probe_every)
    url = resolve_url(url or selector_config.store.url)
    selector = Selector.open(url, config=selector_config, lam=lam)
    try:
        app = create_app(selector, gw, close_selector=True)
    except BaseException:
        selector.close()
        raise
    err_console.print(f"stopbandit gateway on http://{host}:{port} → {gw.upstream} (engine {gw.engine}); "
                      f"store {redact(url)}" + (f"; shadow {gw.shadow}" if gw.shadow else ""), highlight=False)
    serve_forever(app, host=host, port=port, log_level=log_level)


# -- dashboard -------------------------------------------------------------------
@main.command()
@click.option("--db", "url", envvar="STOPBANDIT_DB", help=DB_HELP)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8401, show_default=True, help="Port to listen on.")
@click.option("--api-key", envvar="STOPBANDIT_API_KEY", default=None,
              help="Key the page wants (bearer or basic-auth password; default: $STOPBANDIT_API_KEY; none = open).")
@click.option("--sweep-plot", type=click.Path(dir_okay=False, path_type=Path), envvar="STOPBANDIT_SWEEP_PLOT",
              default=None, help="PNG written by `replay sweep --plot`, shown when it exists.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True)
@user_errors
def dashboard(url: str | None, host: str, port: int, api_key: str | None, sweep_plot: Path | None,
              log_level: str) -> None:
    """Serve the read-only operator dashboard over a replay store at /dashboard (needs the `dashboard` extra).

    For deployments that embed the Selector in their own processes; the
    gateway serves the same page at its own /dashboard.
    """
    try:
        from stopbandit.serve.dashboard import create_dashboard_app
        from stopbandit.serve.runner import serve_forever
    except ImportError as exc:
        from stopbandit.errors import ConfigError

        raise ConfigError(f"the dashboard needs the dashboard extra: pip install 'stopbandit[dashboard]' ({exc})") \
            from None
    from stopbandit.replay.engine import redact, resolve_url
    from stopbandit.replay.store import ReplayStore

    url = resolve_url(url)
    store = ReplayStore(url)
    err_console.print(f"stopbandit dashboard on http://{host}:{port}/dashboard; store {redact(url)}", highlight=False)
    try:
        serve_forever(create_dashboard_app(store, key=api_key or None, sweep_plot=sweep_plot), host=host, port=port,
                      log_level=log_level)
    finally:
        store.dispose()


if __name__ == "__main__":  # pragma: no cover
    main()
