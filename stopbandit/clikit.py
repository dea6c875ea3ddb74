"""Shared pieces of the command line: error handling, JSON and table output.

Kept apart from ``cli.py`` so that command modules in the subpackages
(``replay``, ``control``, ``decoder``) can import them without an import cycle
with the group that registers them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from stopbandit.errors import StopbanditError

DB_HELP = "SQLAlchemy URL of the replay store (default: $STOPBANDIT_DB, else sqlite:///stopbandit.db)."

# 160 columns when stdout is not a terminal (a file or a pipe), so tables of intervals are not squeezed.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn StopbanditError into a one-line message on stderr and exit status 2 (no traceback)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StopbanditError as exc:
            # one physical line: collapse the driver's own newlines, never wrap
            message = escape(" ".join(str(exc).split()))  # "[[arms]]" in a message is text, not markup
            err_console.print(f"[bold red]error:[/] {message}", highlight=False,
                              soft_wrap=True, markup=True)
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


__all__ = ["DB_HELP", "console", "emit_json", "err_console", "table", "user_errors"]
