from __future__ import annotations

import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.audit import Actor
from viopay.auth.clients import ClientView, create_client, list_clients, revoke_client, show_client
from viopay.cli.common import JsonOption, emit, emit_list, run_in_transaction
from viopay.cli.merchant_config import config_app, emv_app
from viopay.ids import rfc3339, utcnow
from viopay.merchants import service
from viopay.merchants.models import Merchant, Role
from viopay.merchants.schemas import MerchantIn
from viopay.money import money

merchant_app = typer.Typer(
    help="Create, list and show merchants; show and change their config.", no_args_is_help=True
)
client_app = typer.Typer(
    help="API clients for POST /client/session: create, list, show, revoke.", no_args_is_help=True
)
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


def _merchant(merchant: Merchant) -> dict[str, object]:
    return {
        "merchant_id": merchant.merchant_id,
        "name": merchant.name,
        "currency": merchant.currency,
        "country": merchant.country,
        "timezone": merchant.timezone,
        "created_at": rfc3339(merchant.created_at),
    }


@merchant_app.command("list")
def list_merchants(as_json: bool = JsonOption) -> None:
    """Every merchant, oldest first."""
    merchants = run_in_transaction(lambda db, rt: service.list_merchants(db))
    emit_list(
        [_merchant(m) for m in merchants],
        as_json=as_json,
        title="Merchants",
        columns=["merchant_id", "name", "currency", "country", "timezone", "created_at"],
    )


@merchant_app.command("show")
def show_merchant(
    merchant_id: str = typer.Argument(..., help="mer_…"), as_json: bool = JsonOption
) -> None:
    """One merchant: its members, devices and what its charges add up to (as money)."""
    from viopay.devices.service import list_devices
    from viopay.payments.listing import ChargeFilter, totals

    async def work(db: AsyncSession, rt: object) -> dict[str, object]:
        merchant = await service.get_merchant(db, merchant_id)
        members = await service.members_of(db, merchant_id)
        devices = await list_devices(db, merchant_id=merchant_id)
        sums = await totals(db, ChargeFilter(merchant_id=merchant_id))
        return {
            **_merchant(merchant),
            "members": [{"subject": m.subject, "role": m.role.value} for m in members],
            "devices": len(devices),
            "charges": sums.count,
            "collected": [
                {"currency": t.currency, "amount": t.gross, "refunded": t.refunded}
                for t in sums.currencies
            ],
        }

    document = run_in_transaction(work)
    if not as_json:
        collected = document.pop("collected")
        assert isinstance(collected, list)
        document["members"] = ", ".join(
            f"{m['subject']} ({m['role']})"
            for m in document["members"]  # type: ignore[attr-defined]
        )
        document["collected"] = (
            ", ".join(
                f"{money(c['amount'], c['currency'])} (refunded {money(c['refunded'], c['currency'])})"
                for c in collected
            )
            or "—"
        )
    emit(document, as_json=as_json, title="Merchant")


def _client(client: ClientView) -> dict[str, object]:
    return {
        "client_id": client.client_id,
        "admin": client.admin,
        "revoked": client.revoked,
        "created_at": rfc3339(client.created_at),
        "memberships": [{"merchant_id": m, "role": r} for m, r in client.memberships],
    }


@client_app.command("list")
def list_(
    merchant: str | None = typer.Option(None, "--merchant", help="Only this merchant's clients."),
    as_json: bool = JsonOption,
) -> None:
    """Every API client (of one merchant with --merchant); never a secret."""
    clients = run_in_transaction(lambda db, rt: list_clients(db, merchant_id=merchant))
    rows = [_client(c) for c in clients]
    if not as_json:
        for row, c in zip(rows, clients, strict=True):
            row["merchants"] = ", ".join(f"{m} ({r})" for m, r in c.memberships)
    emit_list(
        rows,
        as_json=as_json,
        title="API clients",
        columns=["client_id", "merchants", "admin", "revoked", "created_at"],
    )


@client_app.command("show")
def show(client_id: str = typer.Argument(..., help="cli_…"), as_json: bool = JsonOption) -> None:
    """One API client (its secret cannot be read back)."""
    emit(
        _client(run_in_transaction(lambda db, rt: show_client(db, client_id))),
        as_json=as_json,
        title="API client",
    )


@client_app.command("revoke")
def revoke(client_id: str = typer.Argument(..., help="cli_…"), as_json: bool = JsonOption) -> None:
    """Revoke an API client: its credentials stop working at once."""
    done = run_in_transaction(
        lambda db, rt: revoke_client(db, client_id=client_id, actor=Actor.operator(), now=utcnow())
    )
    emit(_client(done), as_json=as_json, title="API client revoked")
