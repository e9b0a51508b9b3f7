"""``viopay keys``: the server's own keys — a new master key, the master key in an HSM, its online
rotation, what each master key wraps, and the operator's view of device keys (ids and check
values only: no stored key is ever printed)."""

from __future__ import annotations

import asyncio
import base64
import secrets
import sys
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from viopay.cli.common import (
    JsonOption,
    emit,
    err,
    fail,
    load_settings_or_exit,
    out,
    run_in_transaction,
)
from viopay.crypto.hsm import HsmError, HsmMasterKey, find_master_key
from viopay.crypto.keyring import MasterKey, SoftwareMasterKey, blob_prefix, key_check_value
from viopay.crypto.wrapping import MASTER_KEY_LENGTH, load_or_create_master_key_file
from viopay.ids import rfc3339, utcnow
from viopay.keyrotation import service as rotation
from viopay.masterkeys.models import MasterKeyRecord
from viopay.masterkeys.service import MasterKeyRefused, open_hsm
from viopay.settings import Settings

app = typer.Typer(
    help="The server's keys: master key (new, HSM, rotation, status) and device keys.",
    no_args_is_help=True,
)


@app.command("new-master")
def new_master(
    file: Path | None = typer.Option(
        None,
        "--file",
        help="Write the key to this new file (mode 0600) instead of printing it; "
        "point VIOPAY_MASTER_KEY_FILE at it.",
        dir_okay=False,
    ),
) -> None:
    """Make a master key: base64 of 32 random bytes, for VIOPAY_MASTER_KEY.

    Every server process and CLI command of one database needs the same key, and a database
    refuses any other (PROTOCOL §6): keep it in your secret store, not in the repository."""
    if file is None:
        key = base64.b64encode(secrets.token_bytes(MASTER_KEY_LENGTH)).decode()
        sys.stdout.write(key + "\n")
        return
    path = file.expanduser().absolute()
    if path.exists():
        fail(f"{path} exists: a master key is never overwritten (choose another --file)")
    try:
        load_or_create_master_key_file(path)
    except OSError as exc:
        fail(f"--file {path}: {exc.strerror}")
    sys.stdout.write(f"{path}\n")


@app.command("init-hsm")
def init_hsm(
    label: str | None = typer.Option(
        None, "--label", help="Label of the new key (default: VIOPAY_HSM_KEY_LABEL)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Make the master key on the HSM token: AES-256, sensitive, never extractable."""
    settings = load_settings_or_exit()
    if settings.hsm_module is None:
        fail("set VIOPAY_HSM_MODULE, VIOPAY_HSM_TOKEN and VIOPAY_HSM_PIN")
    label = label or settings.hsm_key_label
    try:
        pool = open_hsm(settings)
    except HsmError as exc:
        fail(str(exc))
    try:
        if pool.find_ids(label=label):
            fail(f"token {settings.hsm_token!r} already has a key labelled {label!r}", code=1)
        key = HsmMasterKey(pool, pool.generate(label))
        document = {
            "token": settings.hsm_token,
            "label": label,
            "key_id": key.key_id,
            "kcv": key_check_value(key),
        }
    finally:
        pool.close()
    emit(document, as_json=as_json, title="HSM master key made")


def _record(row: MasterKeyRecord, blobs: int) -> dict[str, Any]:
    return {
        "key_id": row.key_id,
        "kind": row.kind,
        "kcv": row.kcv,
        "location": row.location,
        "state": row.state.value,
        "created_at": rfc3339(row.created_at),
        "activated_at": rfc3339(row.activated_at) if row.activated_at else None,
        "retiring_at": rfc3339(row.retiring_at) if row.retiring_at else None,
        "destroyed_at": rfc3339(row.destroyed_at) if row.destroyed_at else None,
        "blobs": blobs,
    }


async def _status(runtime: Any) -> list[dict[str, Any]]:
    from sqlalchemy import func, select

    rows: list[MasterKeyRecord] = []
    counts: dict[str, int] = {}
    async with runtime.sessions() as db:
        rows = list(
            (await db.scalars(select(MasterKeyRecord).order_by(MasterKeyRecord.created_at))).all()
        )
        for row in rows:
            prefix = blob_prefix(row.key_id)
            total = 0
            for target in rotation.TARGETS:
                column = getattr(target.model, target.column)
                total += int(
                    await db.scalar(
                        select(func.count())
                        .select_from(target.model)
                        .where(func.substr(column, 1, len(prefix)) == prefix)
                    )
                    or 0
                )
            counts[row.key_id] = total
    return [_record(row, counts[row.key_id]) for row in rows]


@app.command()
def status(as_json: bool = JsonOption) -> None:
    """Every master key the database knows: id, KCV, where it lives, state, blobs it wraps."""
    document = {"master_keys": _with_runtime(load_settings_or_exit(), _status)}
    if as_json:
        emit(document, as_json=True, title="")
        return
    from rich.table import Table

    columns = ("key_id", "kind", "kcv", "state", "blobs", "location", "created_at")
    table = Table(title="Master keys")
    for column in columns:
        table.add_column(column)
    for row in document["master_keys"]:
        table.add_row(*(str(row[c]) for c in columns))
    err.print(table)


def _with_runtime(settings: Settings, work: Any) -> Any:
    from viopay.runtime import OperatorError, build_runtime, prepare_database

    try:
        prepare_database(settings, create=False)
    except OperatorError as exc:
        fail(str(exc))

    async def go() -> Any:
        runtime = build_runtime(settings)
        try:
            return await work(runtime)
        finally:
            await runtime.close()

    try:
        return asyncio.run(go())
    except (MasterKeyRefused, HsmError, rotation.RotationError) as exc:
        fail(str(exc))


def _new_key(
    runtime: Any, settings: Settings, *, to_file: Path | None, to_hsm: bool, label: str | None
) -> tuple[MasterKey, str]:
    if to_file is not None:
        path = to_file.resolve()
        return SoftwareMasterKey(load_or_create_master_key_file(path)), str(path)
    pool = runtime.key_source.pool
    if pool is None:
        fail("--to-hsm needs VIOPAY_HSM_MODULE, VIOPAY_HSM_TOKEN and VIOPAY_HSM_PIN")
    label = label or f"{settings.hsm_key_label}-{utcnow():%Y%m%d%H%M%S}"
    if pool.find_ids(label=label):
        return find_master_key(pool, label), label
    return HsmMasterKey(pool, pool.generate(label)), label


@app.command("rotate-master")
def rotate_master(
    to_file: Path | None = typer.Option(
        None, "--to-file", help="New master key file (made if missing, mode 0600)."
    ),
    to_hsm: bool = typer.Option(False, "--to-hsm", help="Make the new master key on the HSM."),
    label: str | None = typer.Option(
        None, "--label", help="Label of the new HSM key (default: VIOPAY_HSM_KEY_LABEL-<time>)."
    ),
    batch_size: int = typer.Option(100, min=1, max=10_000, help="Keys re-wrapped per batch."),
    pace: float = typer.Option(
        0.0, min=0, max=60, help="Seconds between batches (spares a busy database)."
    ),
    settle: float | None = typer.Option(
        None,
        min=0,
        help="Seconds to let every server pick up the new key before re-wrapping "
        "(default: twice VIOPAY_MASTER_KEY_REFRESH_SECONDS, plus one).",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Rotate the master key online: new key, every stored key re-wrapped in batches while the
    servers serve, old key destroyed after the last re-wrap. Run it again to resume."""
    settings = load_settings_or_exit()
    wait = settle if settle is not None else 2 * settings.master_key_refresh_seconds + 1

    async def work(runtime: Any) -> dict[str, Any]:
        keyring = runtime.keyring
        async with runtime.sessions() as db:
            state = await rotation.rotation_state(db)
        if state.retiring:
            err.print(
                f"resuming the rotation to {state.active.key_id} (KCV {state.active.kcv}) "
                f"from {', '.join(r.key_id for r in state.retiring)}"
            )
        else:
            if (to_file is None) == (not to_hsm):
                fail("say where the new key goes: --to-file PATH or --to-hsm")
            new_key, location = _new_key(
                runtime, settings, to_file=to_file, to_hsm=to_hsm, label=label
            )
            state = await rotation.begin(
                runtime.sessions, keyring, new_key, location=location, now=utcnow()
            )
            err.print(
                f"new master key {rotation.describe(new_key)} at {location}; "
                f"waiting {wait:g} s for every server to load it"
            )
            await asyncio.sleep(wait)
        keyring.activate(state.active.key_id)
        rewrapped = 0
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=as_json,
        ) as bar:
            tasks: dict[str, Any] = {}

            def on_total(name: str, total: int) -> None:
                tasks[name] = bar.add_task(f"re-wrap {name}", total=total)

            def on_advance(name: str, count: int) -> None:
                bar.advance(tasks[name], count)

            for _ in range(5):
                tasks.clear()
                rewrapped += await rotation.rewrap_all(
                    runtime.sessions,
                    keyring,
                    rotation.Progress(on_total, on_advance),
                    batch_size=batch_size,
                    pace=pace,
                )
                if not any(
                    (await rotation.remaining(runtime.sessions, keyring.active.key_id)).values()
                ):
                    break
        destroyed = await rotation.finish(
            runtime.sessions, keyring, runtime.key_source, state, now=utcnow()
        )
        for line in destroyed:
            err.print(f"destroyed master key {line}")
        return {
            "key_id": state.active.key_id,
            "kcv": state.active.kcv,
            "location": state.active.location,
            "rewrapped": rewrapped,
            "destroyed": [r.key_id for r in state.retiring],
        }

    document = _with_runtime(settings, work)
    emit(document, as_json=as_json, title="Master key rotated")
    if not as_json:
        err.print(
            f"[yellow]Point the configuration at the new key ({document['location']}) before "
            "the next restart.[/yellow]"
        )


# --- the operator's key lifecycle (ids, KCVs, states and ages; never a key) -------------------


def _table(title: str, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row[c]) for c in columns))
    out.print(table)


@app.command("identity-keys")
def identity_keys(
    device_id: str = typer.Argument(..., help="POS-XXXXXXXX"), as_json: bool = JsonOption
) -> None:
    """A device's identity keys: key id, KCV, state (live/revoked), age."""
    from viopay.keysets import lifecycle
    from viopay.keysets.schemas import IdentityKeyViewOut

    views = run_in_transaction(
        lambda db, rt: lifecycle.list_identity_keys(
            db, wrapper=rt.wrapper, device_id=device_id, now=utcnow()
        )
    )
    rows = [IdentityKeyViewOut.of(v).model_dump() for v in views]
    if as_json:
        emit({"device_id": device_id, "data": rows}, as_json=True, title="")
        return
    _table(
        f"Identity keys of {device_id}",
        rows,
        ("key_id", "kcv", "state", "age_seconds", "created_at", "revoked_at"),
    )


@app.command("key-sets")
def key_sets(
    terminal_id: str = typer.Argument(..., help="The terminal id."), as_json: bool = JsonOption
) -> None:
    """A terminal's key sets, newest first: id, state, KCVs, envelopes, age."""
    from viopay.keysets import lifecycle
    from viopay.keysets.schemas import KeySetViewOut

    views = run_in_transaction(
        lambda db, rt: lifecycle.list_key_sets(db, terminal_id=terminal_id, now=utcnow())
    )
    rows = [KeySetViewOut.of(v).model_dump() for v in views]
    if as_json:
        emit({"terminal_id": terminal_id, "data": rows}, as_json=True, title="")
        return
    for row in rows:
        row["kcvs"] = " ".join(f"{t}:{k}" for t, k in row["kcv"].items())
    _table(
        f"Key sets of {terminal_id}",
        rows,
        ("key_set_id", "state", "kcvs", "envelope_count", "age_seconds", "rotate_requested_at"),
    )


@app.command("rotate-key-set")
def rotate_key_set(
    terminal_id: str = typer.Argument(..., help="The terminal id."), as_json: bool = JsonOption
) -> None:
    """Force a key-set rotation: the terminal's next charge answer carries rotate_keys, and its
    current set retires after the rotation grace once the terminal has rotated."""
    from viopay.audit import Actor
    from viopay.keysets import lifecycle

    key_set = run_in_transaction(
        lambda db, rt: lifecycle.force_rotation(
            db, terminal_id=terminal_id, actor=Actor.operator(), now=utcnow()
        )
    )
    assert key_set.rotate_requested_at is not None
    emit(
        {
            "terminal_id": terminal_id,
            "key_set_id": key_set.key_set_id,
            "rotate_requested_at": rfc3339(key_set.rotate_requested_at),
        },
        as_json=as_json,
        title="Key-set rotation requested",
    )
