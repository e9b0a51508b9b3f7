from __future__ import annotations

import re

import typer

from viopay.audit import Actor
from viopay.cli.common import JsonOption, emit, emit_list, run_in_transaction
from viopay.devices import service
from viopay.devices.models import Device
from viopay.devices.schemas import DeviceOut
from viopay.ids import utcnow

app = typer.Typer(
    help="Provision, list and show devices; manage their identity keys.", no_args_is_help=True
)


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
    """Revoke an identity key: its attestation tokens stop working at once, and the pending key
    sets it earned retire; prints what it killed and what still stands."""
    from viopay.keysets import lifecycle
    from viopay.keysets.schemas import RevocationOut

    report = run_in_transaction(
        lambda db, rt: lifecycle.revoke_and_report(
            db, device_id=device_id, key_id=key_id, actor=Actor.operator(), now=utcnow()
        )
    )
    emit(
        RevocationOut.of(device_id, report).model_dump(),
        as_json=as_json,
        title="Identity key revoked",
    )


def _device(device: Device) -> dict[str, object]:
    document: dict[str, object] = DeviceOut.of(device).model_dump(mode="json")
    return document


@app.command("list")
def list_(
    merchant: str | None = typer.Option(None, "--merchant", help="Only this merchant's devices."),
    as_json: bool = JsonOption,
) -> None:
    """Every device (of one merchant with --merchant), newest claim first."""
    devices = run_in_transaction(lambda db, rt: service.list_devices(db, merchant_id=merchant))
    emit_list(
        [_device(d) for d in devices],
        as_json=as_json,
        title="Devices",
        columns=[
            "device_id",
            "label",
            "status",
            "disabled",
            "terminal_id",
            "merchant_id",
            "last_seen_at",
        ],
    )


@app.command("show")
def show(device_id: str = DeviceIdArgument, as_json: bool = JsonOption) -> None:
    """One device (the §6 device object)."""
    device = run_in_transaction(lambda db, rt: service.get_device(db, device_id))
    emit(_device(device), as_json=as_json, title="Device")
