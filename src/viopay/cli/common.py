"""What every CLI command shares: settings, one unit of work, and output (Rich or one JSON document)."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.errors import ViopayError
from viopay.runtime import Runtime, run_unit_of_work
from viopay.settings import Settings

T = TypeVar("T")
err = Console(stderr=True)
out = Console()

JsonOption = typer.Option(False, "--json", help="Print exactly one JSON document on stdout.")


def load_settings_or_exit() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            field = ".".join(str(p) for p in error["loc"])
            name = f"VIOPAY_{field.upper()}" if field else "configuration"
            lines.append(f"{name}: {error['msg']}")
        if json_mode():
            document = problem(
                "invalid_configuration", 500, "Invalid configuration", "; ".join(lines)
            )
            sys.stdout.write(orjson.dumps(document).decode() + "\n")
        for line in lines:
            err.print(f"[red]error:[/red] {line}")
        raise typer.Exit(2) from None


def json_mode(argv: list[str] | None = None) -> bool:
    """``--json`` anywhere on the command line: errors too are one JSON document on stdout."""
    return "--json" in (sys.argv[1:] if argv is None else argv)


def problem(code: str, status: int, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    """An error as the API would answer it (PROTOCOL §1), for ``--json``."""
    return {
        "type": f"urn:viopay:error:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }


def write_problem(document: dict[str, Any]) -> None:
    """The problem: one JSON document on stdout with ``--json``, else a line on stderr."""
    if json_mode():  # stdout belongs to the JSON document; people still get their line
        sys.stdout.write(orjson.dumps(document).decode() + "\n")
    sys.stderr.write(f"error: {document['detail']} ({document['code']})\n")
    sys.stderr.flush()


def fail(document: dict[str, Any], *, exit_code: int) -> None:
    """Print the problem and exit with ``exit_code``."""
    write_problem(document)
    raise typer.Exit(exit_code)


def run_in_transaction(
    work: Callable[[AsyncSession, Runtime], Awaitable[T]], *, settings: Settings | None = None
) -> T:
    """Run one unit of work against the configured database, migrating first; a domain error
    is printed (a JSON problem with ``--json``) and exits 1."""
    try:
        return run_unit_of_work(settings or load_settings_or_exit(), work)
    except ViopayError as exc:
        fail(problem(exc.code, exc.status, exc.title, exc.detail, **exc.extra), exit_code=1)
        raise  # not reached: fail() exits


def emit(
    document: dict[str, Any], *, as_json: bool, title: str, secret_field: str | None = None
) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(document).decode() + "\n")
        return
    table = Table(title=title, show_header=False)
    for key, value in document.items():
        table.add_row(key, "" if value is None else str(value))
    out.print(table)
    if secret_field:
        err.print(
            f"[yellow]{secret_field} is shown once: store it now, it cannot be read back.[/yellow]"
        )


def emit_list(rows: list[dict[str, Any]], *, as_json: bool, title: str, columns: list[str]) -> None:
    """A list: ``{"data": [...]}`` with ``--json``, else a table of ``columns``."""
    if as_json:
        sys.stdout.write(orjson.dumps({"data": rows}).decode() + "\n")
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column.replace("_", " "))
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    out.print(table)
    if not rows:
        err.print("nothing to list")
