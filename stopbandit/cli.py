"""The `stopbandit` command line: one click group, verbs grouped by noun.

User errors (bad URL, bad config, bad input) print one clear line and exit 2;
they never show a traceback. ``--json`` gives machine-readable output where a
command prints results.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from stopbandit.errors import StopbanditError

console = Console()
err_console = Console(stderr=True)

DB_HELP = "SQLAlchemy URL of the replay store (default: $STOPBANDIT_DB, else sqlite:///stopbandit.db)."


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn StopbanditError into a one-line message and exit status 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StopbanditError as exc:
            err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False)
            sys.exit(2)

    return wrapper


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="left" if c == columns[0] else "right")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    return t


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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

    cur, head = migrate.current_revision(url), migrate.head_revision()
    if as_json:
        emit_json({"url": redact(resolve_url(url)), "current": cur, "head": head, "up_to_date": cur == head})
    else:
        state = "up to date" if cur == head else "run `stopbandit db upgrade`"
        click.echo(f"{redact(resolve_url(url))}: revision {cur or 'none'} (head {head}; {state})")


if __name__ == "__main__":  # pragma: no cover
    main()
