"""``viopay terminal-parameters``: the legacy terminal_parameters documents (PROTOCOL §3.9, §6)."""

from __future__ import annotations

from typing import Any

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.audit import Actor
from viopay.cli.common import JsonOption, emit, run_in_transaction
from viopay.cli.merchant_config import read_json_file
from viopay.ids import utcnow
from viopay.parameters import service as parameters
from viopay.runtime import Runtime

app = typer.Typer(help="Upload terminal_parameters documents.", no_args_is_help=True)


def _store(terminal_id: str | None, file: str, as_json: bool) -> None:
    document = read_json_file(file)
    if not isinstance(document, dict):
        raise typer.BadParameter(f"{file} must hold a JSON object")

    async def work(db: AsyncSession, _rt: Runtime) -> dict[str, Any]:
        blob = await parameters.set_parameters(
            db, terminal_id=terminal_id, document=document, actor=Actor.operator(), now=utcnow()
        )
        return {"terminal_id": terminal_id, "size": blob.size, "sha256": blob.sha256}

    emit(run_in_transaction(work), as_json=as_json, title="Terminal parameters stored")


@app.command("set")
def set_for_terminal(
    terminal_id: str = typer.Argument(..., help="A terminal id, e.g. TID-004812."),
    file: str = typer.Argument(..., help="The JSON document, or - for standard input."),
    as_json: bool = JsonOption,
) -> None:
    """Give one terminal its own document."""
    _store(terminal_id, file, as_json)


@app.command("set-default")
def set_default(
    file: str = typer.Argument(..., help="The JSON document, or - for standard input."),
    as_json: bool = JsonOption,
) -> None:
    """Set the operator default: what every terminal without its own document gets."""
    _store(None, file, as_json)
