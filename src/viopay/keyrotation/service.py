"""Online master-key rotation (``viopay keys rotate-master``): a new master key, every stored key re-wrapped under it in small
batches while the servers keep serving, the old key destroyed only when no blob names it.

Steps, each recorded in ``master_keys`` so an interrupted rotation resumes where it stopped:

1. **begin**: the new key is recorded ``active`` and the old one ``retiring`` (one transaction).
   Servers re-read ``master_keys`` every VIOPAY_MASTER_KEY_REFRESH_SECONDS: the CLI waits for
   that (``settle``) before re-wrapping, so by then every server opens blobs under both keys and
   seals new ones under the new key only.
2. **re-wrap**: each table holding wrapped keys is scanned for blobs that do not name the active
   key (blobs name their master key: ``viopay.crypto.keyring``), a batch at a time, each batch
   one short transaction (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so a server's request that
   holds a row only delays it to a later batch). A key is unwrapped and re-wrapped under the
   same context; the raw key never changes, so caches of unwrapped keys stay right.
3. **destroy**: when a final count finds no blob under a retiring key, that key is destroyed
   (HSM: C_DestroyObject; key file: overwritten and removed) and recorded ``destroyed``.

Running the command again after an interruption (crash, Ctrl-C, kill) finds the ``retiring``
row and continues at step 2; re-wrapping is idempotent.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import LargeBinary, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from viopay.auth.issuer import SIGNING_KEY_CONTEXT
from viopay.auth.models import SigningKey
from viopay.crypto.hsm import parse_key_id
from viopay.crypto.keyring import Keyring, MasterKey, blob_prefix, key_check_value
from viopay.devices.models import MerchantDeviceIdentityKey
from viopay.devices.service import identity_key_context
from viopay.keysets.models import KeySetKey
from viopay.keysets.service import key_context
from viopay.masterkeys.models import DerivedKey, MasterKeyRecord, MasterKeyState
from viopay.masterkeys.service import ENV_LOCATION, KeySource, derived_context, new_record
from viopay.webhooks.models import WebhookEndpoint
from viopay.webhooks.service import secret_context


@dataclass(frozen=True)
class Target:
    """A table of wrapped keys: its model, the blob's column and the blob's context."""

    name: str
    model: Any
    column: str
    context: Callable[[Any], str]


TARGETS: tuple[Target, ...] = (
    Target(
        "identity keys",
        MerchantDeviceIdentityKey,
        "secret_wrapped",
        lambda row: identity_key_context(row.device_id, row.key_id),
    ),
    Target("key-set keys", KeySetKey, "key_wrapped", lambda row: key_context(row.key_id)),
    Target("signing keys", SigningKey, "private_wrapped", lambda _row: SIGNING_KEY_CONTEXT),
    Target("derived keys", DerivedKey, "key_wrapped", lambda row: derived_context(row.purpose)),
    Target(
        "webhook secrets",
        WebhookEndpoint,
        "secret_wrapped",
        lambda row: secret_context(row.endpoint_id),
    ),
    Target(
        "previous webhook secrets",
        WebhookEndpoint,
        "previous_secret_wrapped",
        lambda row: secret_context(row.endpoint_id),
    ),
)


class RotationError(RuntimeError):
    """The rotation cannot go on; the message says why (nothing was destroyed)."""


@dataclass
class RotationState:
    active: MasterKeyRecord
    retiring: list[MasterKeyRecord]


async def rotation_state(db: AsyncSession) -> RotationState:
    rows = list((await db.scalars(select(MasterKeyRecord))).all())
    active = [r for r in rows if r.state is MasterKeyState.active]
    if len(active) != 1:
        raise RotationError(f"{len(active)} active master keys in master_keys; expected one")
    return RotationState(active[0], [r for r in rows if r.state is MasterKeyState.retiring])


async def begin(
    sessions: async_sessionmaker[AsyncSession],
    keyring: Keyring,
    new_key: MasterKey,
    *,
    location: str,
    now: datetime,
) -> RotationState:
    """Record ``new_key`` active and the current key retiring; a rotation already under way is
    returned as it is (resume)."""
    async with sessions() as db, db.begin():
        state = await rotation_state(db)
        if state.retiring:
            return state
        if await db.get(MasterKeyRecord, new_key.key_id) is not None:
            raise RotationError(f"master key {new_key.key_id} was already used; make a new one")
        old = state.active
        old.state = MasterKeyState.retiring
        old.retiring_at = now
        record = new_record(new_key, location=location, state=MasterKeyState.active, now=now)
        db.add(record)
        await db.flush()
        keyring.add(new_key)
        keyring.activate(new_key.key_id)
        return RotationState(record, [old])


def _not_under(target: Target, prefix: bytes) -> Any:
    column = getattr(target.model, target.column)
    return func.substr(column, 1, len(prefix)) != literal(prefix, LargeBinary)


async def remaining(sessions: async_sessionmaker[AsyncSession], key_id: str) -> dict[str, int]:
    """How many blobs of each table are not yet under master key ``key_id``."""
    prefix = blob_prefix(key_id)
    counts: dict[str, int] = {}
    async with sessions() as db:
        for target in TARGETS:
            counts[target.name] = int(
                await db.scalar(
                    select(func.count()).select_from(target.model).where(_not_under(target, prefix))
                )
                or 0
            )
    return counts


async def rewrap_batch(
    sessions: async_sessionmaker[AsyncSession],
    keyring: Keyring,
    target: Target,
    *,
    batch_size: int,
) -> int:
    """Re-wrap up to ``batch_size`` blobs of ``target`` under the active key; how many."""
    prefix = blob_prefix(keyring.active.key_id)
    async with sessions() as db, db.begin():
        rows = (
            await db.scalars(
                select(target.model)
                .where(_not_under(target, prefix))
                .limit(batch_size)
                .with_for_update(skip_locked=True)
            )
        ).all()
        for row in rows:
            blob = getattr(row, target.column)
            setattr(row, target.column, keyring.rewrap(blob, context=target.context(row)))
        return len(rows)


def destroy_key_material(record: MasterKeyRecord, source: KeySource) -> str:
    """Destroy the old key itself; what was done, in words."""
    if record.kind == "hsm":
        cka_id = parse_key_id(record.key_id)
        if source.pool is None or cka_id is None:
            raise RotationError(
                f"master key {record.key_id} is on an HSM this process does not reach"
            )
        if cka_id in source.pool.find_ids():
            source.pool.destroy(cka_id)
        return f"HSM object {record.location!r} destroyed"
    if record.location == ENV_LOCATION:
        return "held by VIOPAY_MASTER_KEY only: remove it from the configuration"
    path = Path(record.location)
    if path.exists():
        size = path.stat().st_size
        with path.open("r+b") as handle:
            handle.write(os.urandom(size))
            handle.flush()
            os.fsync(handle.fileno())
        path.unlink()
    return f"key file {path} overwritten and removed"


async def finish(
    sessions: async_sessionmaker[AsyncSession],
    keyring: Keyring,
    source: KeySource,
    state: RotationState,
    *,
    now: datetime,
) -> list[str]:
    """Destroy every retiring key once no blob names it; RotationError if some still do."""
    left = await remaining(sessions, state.active.key_id)
    if any(left.values()):
        raise RotationError(f"blobs not yet re-wrapped: {left}; run the rotation again")
    done: list[str] = []
    for old in state.retiring:
        async with sessions() as db, db.begin():
            record = await db.get(MasterKeyRecord, old.key_id, with_for_update=True)
            assert record is not None
            what = destroy_key_material(record, source)
            record.state = MasterKeyState.destroyed
            record.destroyed_at = now
        keyring.drop([old.key_id])
        done.append(f"{old.key_id} (KCV {old.kcv}): {what}")
    return done


@dataclass
class Progress:
    """What a caller shows: per table, blobs re-wrapped so far out of those to do."""

    on_total: Callable[[str, int], None]
    on_advance: Callable[[str, int], None]


async def rewrap_all(
    sessions: async_sessionmaker[AsyncSession],
    keyring: Keyring,
    progress: Progress,
    *,
    batch_size: int,
    pace: float,
) -> int:
    """Re-wrap every blob not under the active key, batch after batch; how many."""
    left = await remaining(sessions, keyring.active.key_id)
    for target in TARGETS:
        progress.on_total(target.name, left[target.name])
    total = 0
    for target in TARGETS:
        while True:
            count = await rewrap_batch(sessions, keyring, target, batch_size=batch_size)
            if count == 0:
                break
            total += count
            progress.on_advance(target.name, count)
            if pace:
                await asyncio.sleep(pace)
    return total


def describe(key: MasterKey) -> str:
    return f"{key.key_id} ({key.kind}, KCV {key_check_value(key)})"
