from __future__ import annotations

import typer
from pydantic import ValidationError

from viopay.audit import Actor
from viopay.auth.clients import create_client
from viopay.cli.common import JsonOption, emit, run_in_transaction
from viopay.cli.merchant_config import config_app, emv_app
from viopay.ids import utcnow
from viopay.merchants import service
from viopay.merchants.models import Role
from viopay.merchants.schemas import MerchantIn

merchant_app = typer.Typer(
    help="Create merchants; show and change their config.", no_args_is_help=True
)
client_app = typer.Typer(help="Create API clients for POST /client/session.", no_args_is_help=True)
merchant_app.add_typer(config_app, name="config")
merchant_app.add_typer(emv_app, name="emv")


@merchant_app.command("create")
def create_merchant(
    name: str = typer.Option(..., "--name", help="The merchant's name, as terminals show it."),
    currency: str = typer.Option("USD", "--currency", help="ISO 4217, upper case."),
    country: str = typer.Option("US", "--country", help="ISO 3166 alpha-2, upper case."),
    timezone: str = typer.Option("UTC", "--timezone", help="IANA time zone."),
    as_json: bool = JsonOption,
) -> None:
    """Create a merchant; its terminals take its currency."""
    try:
        valid = MerchantIn(name=name, currency=currency, country=country, timezone=timezone)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise typer.BadParameter(f"--{first['loc'][0]}: {first['msg']}") from None
    merchant = run_in_transaction(
        lambda db, rt: service.create_merchant(
            db,
            name=valid.name,
            currency=valid.currency,
            country=valid.country,
            timezone=valid.timezone,
            actor=Actor.operator(),
            now=utcnow(),
        )
    )
    emit(
        {
            "merchant_id": merchant.merchant_id,
            "name": merchant.name,
            "currency": merchant.currency,
            "country": merchant.country,
            "timezone": merchant.timezone,
        },
        as_json=as_json,
        title="Merchant created",
    )


@client_app.command("create")
def create(
    merchant: str | None = typer.Option(
        None, "--merchant", help="Merchant the client is a member of."
    ),
    role: Role | None = typer.Option(None, "--role", help="owner, admin or staff."),
    admin: bool = typer.Option(
        False, "--admin", help="An operator client (realm role viopay-admin)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Create an API client (the secret is shown once)."""
    if admin == bool(merchant or role) or (merchant is None) != (role is None):
        raise typer.BadParameter("give either --merchant M --role R, or --admin")
    client = run_in_transaction(
        lambda db, rt: create_client(
            db,
            wrapper=rt.wrapper,
            merchant_id=merchant,
            role=role,
            admin=admin,
            actor=Actor.operator(),
            now=utcnow(),
        )
    )
    emit(
        {
            "client_id": client.client_id,
            "client_secret": client.client_secret,
            "merchant_id": client.merchant_id,
            "role": client.role.value if client.role else None,
            "admin": client.admin,
        },
        as_json=as_json,
        title="API client created",
        secret_field="client_secret",
    )
