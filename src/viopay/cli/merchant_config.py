"""``viopay merchant config`` and ``viopay merchant emv``: a merchant's config and EMV overrides."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
import typer
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.audit import Actor
from viopay.cli.common import JsonOption, err, out, run_in_transaction
from viopay.configuration.emv import effective_emv
from viopay.configuration.schemas import EmvOverrides
from viopay.deps import validate
from viopay.errors import InvalidRequest
from viopay.ids import utcnow
from viopay.merchants import config, service
from viopay.merchants.config import MerchantConfigIn
from viopay.runtime import Runtime

config_app = typer.Typer(
    help="Show or change a merchant's config (tip, tax, surcharge, branding).", no_args_is_help=True
)
emv_app = typer.Typer(
    help="Show or override the EMV section of a merchant's terminals.", no_args_is_help=True
)

MerchantArgument = typer.Argument(..., help="The merchant id (mer_…).")
FileOption = typer.Option(..., "--file", "-f", help="A JSON file, or - for standard input.")


def read_json_file(path: str) -> Any:
    """The JSON document in ``path`` (``-``: standard input); a bad file is a usage error."""
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        return orjson.loads(raw)
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError:
        raise typer.BadParameter(f"{path} is not valid JSON") from None


def show_document(document: dict[str, Any], *, as_json: bool, title: str) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(document).decode() + "\n")
        return
    out.rule(title)
    out.print_json(orjson.dumps(document).decode())


def _validated(model: type[Any], data: Any) -> Any:
    try:
        return validate(model, data)
    except InvalidRequest as exc:
        err.print(f"[red]error:[/red] {exc.detail}")
        for error in exc.extra.get("errors", []):
            err.print(f"  {error['field']}: {error['message']}")
        raise typer.Exit(2) from None


@config_app.command("show")
def show_config(merchant_id: str = MerchantArgument, as_json: bool = JsonOption) -> None:
    """Print the merchant config: {"config_version","tip","tax","surcharge","branding"}."""

    async def work(db: AsyncSession, _rt: Runtime) -> dict[str, Any]:
        merchant = await service.get_merchant(db, merchant_id)
        return config.config_view(await config.get_config(db, merchant=merchant, now=utcnow()))

    show_document(run_in_transaction(work), as_json=as_json, title="Merchant config")


@config_app.command("set")
def set_config(
    merchant_id: str = MerchantArgument, file: str = FileOption, as_json: bool = JsonOption
) -> None:
    """Replace any of tip, tax, surcharge and branding with the objects in a JSON file."""
    changes: MerchantConfigIn = _validated(MerchantConfigIn, read_json_file(file))

    async def work(db: AsyncSession, _rt: Runtime) -> dict[str, Any]:
        merchant = await service.get_merchant(db, merchant_id)
        updated = await config.update_config(
            db, merchant=merchant, changes=changes, actor=Actor.operator(), now=utcnow()
        )
        return config.config_view(updated)

    show_document(run_in_transaction(work), as_json=as_json, title="Merchant config")


@emv_app.command("show")
def show_emv(merchant_id: str = MerchantArgument, as_json: bool = JsonOption) -> None:
    """Print the emv section the merchant's terminals get (defaults with overrides)."""

    async def work(db: AsyncSession, _rt: Runtime) -> dict[str, Any]:
        merchant = await service.get_merchant(db, merchant_id)
        merchant_config = await config.get_config(db, merchant=merchant, now=utcnow())
        return effective_emv(merchant, merchant_config.emv_overrides).model_dump(mode="json")

    show_document(run_in_transaction(work), as_json=as_json, title="EMV section")


@emv_app.command("set")
def set_emv(
    merchant_id: str = MerchantArgument, file: str = FileOption, as_json: bool = JsonOption
) -> None:
    """Replace the merchant's EMV overrides with a JSON file ({} restores the defaults)."""
    overrides: EmvOverrides = _validated(EmvOverrides, read_json_file(file))

    async def work(db: AsyncSession, _rt: Runtime) -> dict[str, Any]:
        merchant = await service.get_merchant(db, merchant_id)
        section = effective_emv(merchant, overrides.stored())
        await config.set_emv_overrides(
            db,
            merchant=merchant,
            overrides=overrides.stored(),
            actor=Actor.operator(),
            now=utcnow(),
        )
        return section.model_dump(mode="json")

    show_document(run_in_transaction(work), as_json=as_json, title="EMV section")
