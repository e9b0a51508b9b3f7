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

from viopay.crypto.hsm import HsmError
from viopay.errors import ViopayError
from viopay.masterkeys.service import MasterKeyRefused
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
        for error in exc.errors(include_url=False):
            field = ".".join(str(p) for p in error["loc"])
            name = f"VIOPAY_{field.upper()}" if field else "configuration"
            err.print(f"[red]error:[/red] {name}: {error['msg']}")
        raise typer.Exit(2) from None


def run_in_transaction(
    work: Callable[[AsyncSession, Runtime], Awaitable[T]], *, settings: Settings | None = None
) -> T:
    """Run one unit of work against the configured database, migrating first; a domain error
    is printed and exits 1."""
    try:
        return run_unit_of_work(settings or load_settings_or_exit(), work)
    except ViopayError as exc:
        err.print(f"[red]error:[/red] {exc.detail} ({exc.code})")
        raise typer.Exit(1) from None
    except (MasterKeyRefused, HsmError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def check_master_keys(settings: Settings) -> None:
    """Fail in one line, before serving, when the master keys do not fit the database (§6)."""
    from viopay.runtime import load_keyring

    try:
        _, source = load_keyring(settings)
    except (MasterKeyRefused, HsmError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    source.close()


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
