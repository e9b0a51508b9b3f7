"""What every CLI command shares: settings, one unit of work, and output (Rich or one JSON document)."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import orjson
import typer
import typer.core
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.errors import ViopayError
from viopay.runtime import OperatorError, Runtime, run_unit_of_work
from viopay.settings import Settings

T = TypeVar("T")
err = Console(stderr=True)
out = Console()

JsonOption = typer.Option(False, "--json", help="Print exactly one JSON document on stdout.")
# Set by ``viopay --verbose``: every command then says which data folder and database it uses.
VERBOSE = {"on": False}
# pydantic puts these before the message of a validator's ValueError; the operator needs none.
_LIBRARY_PREFIXES = ("Value error, ", "Assertion failed, ")


def _no_type_on_flags(self: typer.core.TyperOption, ctx: Any) -> str | None:
    """Typer labels every flag ``<bool>`` in --help (even --help): a flag takes no value."""
    return None if self.is_flag else _typer_display_type(self, ctx)


_typer_display_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _no_type_on_flags  # type: ignore[method-assign]


def fail(message: str, *, code: int = 2) -> NoReturn:
    """One unwrapped line on stderr (however narrow the terminal), then exit: 2 for a mistake
    of configuration or usage, 1 for a refused operation."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def setting_errors(exc: ValidationError) -> list[str]:
    """One line per invalid setting, naming its variable, without pydantic's prefixes."""
    lines = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(p) for p in error["loc"])
        message = str(error["msg"])
        for prefix in _LIBRARY_PREFIXES:
            message = message.removeprefix(prefix)
        if field:
            lines.append(f"VIOPAY_{field.upper()}: {message}")
        else:  # a rule over several settings: its message names them
            lines.append(message)
    return lines


def load_settings_or_exit() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        lines = setting_errors(exc)
        for line in lines[:-1]:
            sys.stderr.write(f"error: {line}\n")
        fail(lines[-1])
    if VERBOSE["on"]:
        describe(settings)
    return settings


def describe(settings: Settings) -> None:
    """Say where this process keeps its data (stderr: stdout belongs to --json)."""
    from viopay.migrate import describe_database

    key = (
        "VIOPAY_MASTER_KEY"
        if settings.master_key is not None
        else str(settings.resolved_master_key_file)
    )
    sys.stderr.write(
        f"data folder {settings.data_dir}; database {describe_database(settings)}; "
        f"master key {key}\n"
    )
    sys.stderr.flush()


def run_in_transaction(
    work: Callable[[AsyncSession, Runtime], Awaitable[T]], *, settings: Settings | None = None
) -> T:
    """Run one unit of work against the configured database, migrating first; a domain error
    is printed and exits 1."""
    try:
        return run_unit_of_work(settings or load_settings_or_exit(), work)
    except OperatorError as exc:
        fail(str(exc))
    except ViopayError as exc:
        fail(f"{exc.detail} ({exc.code})", code=1)


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
