from __future__ import annotations

import re

import typer

from viopay.audit import Actor
from viopay.cli.common import JsonOption, emit, run_in_transaction
from viopay.devices import service
from viopay.ids import rfc3339, utcnow

app = typer.Typer(help="Provision devices and manage their identity keys.", no_args_is_help=True)


def _device_id(value: str) -> str:
    if not re.fullmatch(r"POS-[0-9A-F]{8}", value):
        raise typer.BadParameter(
            "must be POS- followed by 8 upper-case hex digits, e.g. POS-8F3A2C91"
        )
    return value


def _key_id(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[\x21-\x7E]{1,128}", value):
        raise typer.BadParameter("must be 1-128 printable ASCII characters without spaces")
    return value


DeviceIdArgument = typer.Argument(
    ..., callback=_device_id, help="The device id printed on the terminal: POS- and 8 hex digits."
)
KeyIdOption = typer.Option(
    None,
    "--key-id",
    callback=_key_id,
    help="Id of the new identity key (X-Key-Id); default device-id-key-YYYY-MM-<random>.",
)


@app.command()
def provision(
    device_id: str = DeviceIdArgument,
    key_id: str | None = KeyIdOption,
    as_json: bool = JsonOption,
) -> None:
    """Register a device and make its first identity key (the secret is shown once)."""
    key = run_in_transaction(
        lambda db, rt: service.provision_device(
            db,
            wrapper=rt.wrapper,
            device_id=device_id,
            key_id=key_id,
            actor=Actor.operator(),
            now=utcnow(),
        )
    )
    emit(
        {"device_id": key.device_id, "key_id": key.key_id, "identity_secret": key.identity_secret},
        as_json=as_json,
        title="Device provisioned",
        secret_field="identity_secret",
    )


@app.command("add-key")
def add_key(
    device_id: str = DeviceIdArgument,
    key_id: str | None = KeyIdOption,
    as_json: bool = JsonOption,
) -> None:
    """Add an identity key to a device (the secret is shown once)."""
    key = run_in_transaction(
        lambda db, rt: service.add_identity_key(
            db,
            wrapper=rt.wrapper,
            device_id=device_id,
            key_id=key_id,
            actor=Actor.operator(),
            now=utcnow(),
        )
    )
    emit(
        {"device_id": key.device_id, "key_id": key.key_id, "identity_secret": key.identity_secret},
        as_json=as_json,
        title="Identity key added",
        secret_field="identity_secret",
    )


@app.command("revoke-key")
def revoke_key(
    device_id: str = DeviceIdArgument,
    key_id: str = typer.Argument(..., help="The identity key to revoke (its X-Key-Id)."),
    as_json: bool = JsonOption,
) -> None:
    """Revoke an identity key: its attestation tokens stop working at once."""
    key = run_in_transaction(
        lambda db, rt: service.revoke_identity_key(
            db, device_id=device_id, key_id=key_id, actor=Actor.operator(), now=utcnow()
        )
    )
    assert key.revoked_at is not None
    emit(
        {"device_id": device_id, "key_id": key_id, "revoked_at": rfc3339(key.revoked_at)},
        as_json=as_json,
        title="Identity key revoked",
    )
