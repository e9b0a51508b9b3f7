"""Which master keys this process holds, the check against the database (PROTOCOL §6), and the
stored derived keys.

The configured key (VIOPAY_HSM_KEY_LABEL on VIOPAY_HSM_TOKEN, else VIOPAY_MASTER_KEY, else the
key file) is the one a first start registers as active. Afterwards the ``master_keys`` table
decides: a process loads every key that is not destroyed (a key file from its path, an HSM key
by its CKA_ID on the configured token), wraps under the active one, and refuses to start when
its configured key is unknown to the database or was destroyed by a rotation.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from viopay.crypto.hsm import HsmMasterKey, SessionPool, find_master_key, parse_key_id
from viopay.crypto.keyring import Keyring, MasterKey, SoftwareMasterKey, key_check_value
from viopay.crypto.wrapping import decode_master_key, load_or_create_master_key_file
from viopay.masterkeys.models import DerivedKey, MasterKeyRecord, MasterKeyState
from viopay.settings import Settings
from viopay_device.protocol.errors import EnvelopeNotOpened

#: Every purpose of ``KeyWrapper.derive`` in the server; each is a stored random key.
DERIVED_PURPOSES = ("api-client-secret", "pairing-code", "portal-cookie", "idempotency-fingerprint")
ENV_LOCATION = "VIOPAY_MASTER_KEY"
log = structlog.get_logger("viopay.masterkeys")


class MasterKeyRefused(RuntimeError):
    """This process cannot use the master keys the database was written with; the message says
    which setting to fix."""


@dataclass
class KeySource:
    """The key this process was configured with, and the HSM sessions if any."""

    configured: MasterKey
    location: str
    setting: str
    pool: SessionPool | None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def open_hsm(settings: Settings) -> SessionPool:
    assert settings.hsm_module is not None
    assert settings.hsm_token is not None and settings.hsm_pin is not None
    return SessionPool(
        module=str(settings.hsm_module),
        token_label=settings.hsm_token,
        pin=settings.hsm_pin.get_secret_value(),
    )


def open_key_source(settings: Settings) -> KeySource:
    """The configured key: the HSM key labelled VIOPAY_HSM_KEY_LABEL when VIOPAY_HSM_MODULE is
    set, unless VIOPAY_MASTER_KEY or VIOPAY_MASTER_KEY_FILE is set too (then that key, with the
    HSM reachable: the two configurations of a rotation between a key file and the HSM)."""
    pool = open_hsm(settings) if settings.hsm_module is not None else None
    try:
        if pool is not None and settings.master_key is None and settings.master_key_file is None:
            key = find_master_key(pool, settings.hsm_key_label)
            return KeySource(key, settings.hsm_key_label, "VIOPAY_HSM_KEY_LABEL", pool)
        if settings.master_key is not None:
            raw = decode_master_key(settings.master_key.get_secret_value())
            return KeySource(SoftwareMasterKey(raw), ENV_LOCATION, "VIOPAY_MASTER_KEY", pool)
        path = settings.resolved_master_key_file.resolve()
        raw = load_or_create_master_key_file(path)
        return KeySource(SoftwareMasterKey(raw), str(path), "VIOPAY_MASTER_KEY_FILE", pool)
    except BaseException:
        if pool is not None:
            pool.close()
        raise


def build_keyring(source: KeySource) -> Keyring:
    pool = source.pool

    def resolve(key_id: str) -> MasterKey | None:
        # A blob sealed under an HSM key this process has not loaded yet (a rotation started by
        # another process): the token is shared, so look it up there.
        cka_id = parse_key_id(key_id)
        if pool is None or cka_id is None or cka_id not in pool.find_ids():
            return None
        return HsmMasterKey(pool, cka_id)

    return Keyring(source.configured, resolve=resolve)


def load_master_key(row: MasterKeyRecord, source: KeySource) -> MasterKey | None:
    """The key of ``row`` if this process can reach it (and it is the one recorded)."""
    if row.key_id == source.configured.key_id:
        return source.configured
    key: MasterKey | None = None
    if row.kind == "hsm":
        cka_id = parse_key_id(row.key_id)
        if source.pool is not None and cka_id is not None and cka_id in source.pool.find_ids():
            key = HsmMasterKey(source.pool, cka_id)
    elif row.location != ENV_LOCATION:
        path = Path(row.location)
        try:
            raw = decode_master_key(path.read_text(encoding="ascii"))
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        key = SoftwareMasterKey(raw)
    if key is None or key.key_id != row.key_id:
        return None
    return key


def new_record(
    key: MasterKey, *, location: str, state: MasterKeyState, now: datetime
) -> MasterKeyRecord:
    return MasterKeyRecord(
        key_id=key.key_id,
        kind=key.kind,
        kcv=key_check_value(key),
        location=location,
        state=state,
        created_at=now,
        activated_at=now if state is MasterKeyState.active else None,
        retiring_at=None,
        destroyed_at=None,
    )


async def sync_keyring(
    db: AsyncSession, keyring: Keyring, source: KeySource, *, now: datetime, first: bool
) -> list[MasterKeyRecord]:
    """Bring ``keyring`` in line with ``master_keys``. ``first`` (start-up): register the
    configured key on an empty table, and refuse a configured key the database does not know."""
    rows = list((await db.scalars(select(MasterKeyRecord))).all())
    if not rows and first:
        await _opens_what_is_stored(db, keyring, source)
        record = new_record(
            source.configured, location=source.location, state=MasterKeyState.active, now=now
        )
        try:
            async with db.begin_nested():
                db.add(record)
        except IntegrityError:
            pass
        rows = list((await db.scalars(select(MasterKeyRecord))).all())
    by_id = {row.key_id: row for row in rows}
    active = [row for row in rows if row.state is MasterKeyState.active]
    if first:
        mine = by_id.get(source.configured.key_id)
        written_with = ", ".join(f"{r.key_id} (KCV {r.kcv}, {r.location})" for r in active)
        if mine is None:
            raise MasterKeyRefused(
                f"{source.setting} is not the master key this database was written with (it "
                f"holds {source.configured.key_id}, KCV {key_check_value(source.configured)}; "
                f"the database's: {written_with or 'another'}): fix {source.setting}"
            )
        if mine.state is MasterKeyState.destroyed:
            raise MasterKeyRefused(
                f"{source.setting} holds master key {mine.key_id}, destroyed by a rotation at "
                f"{mine.destroyed_at}; set it to the active key: {written_with}"
            )
    for row in rows:
        if row.state is not MasterKeyState.destroyed and row.key_id not in keyring.key_ids:
            key = load_master_key(row, source)
            if key is not None:
                keyring.add(key)
    if len(active) == 1:
        try:
            keyring.activate(active[0].key_id)
        except LookupError:
            raise MasterKeyRefused(
                f"the active master key {active[0].key_id} ({active[0].kind} at "
                f"{active[0].location}) is not reachable from this process: set "
                f"{source.setting} to it"
            ) from None
    keyring.drop(r.key_id for r in rows if r.state is MasterKeyState.destroyed)
    return rows


async def _opens_what_is_stored(db: AsyncSession, keyring: Keyring, source: KeySource) -> None:
    """A database without ``master_keys`` rows (new, or written before them) is registered under
    the configured key only if that key opens a key already stored there (if any)."""
    from sqlalchemy import text

    for table, column in (
        ("merchant_device_identity_keys", "secret_wrapped"),
        ("signing_keys", "private_wrapped"),
        ("derived_keys", "key_wrapped"),
    ):
        blob = await db.scalar(text(f"SELECT {column} FROM {table} LIMIT 1"))  # noqa: S608
        if blob is None:
            continue
        context = await _context_of(db, table, blob)
        try:
            keyring.unwrap(bytes(blob), context=context)
        except EnvelopeNotOpened:
            raise MasterKeyRefused(
                f"{source.setting} is not the master key this database was written with (it "
                f"does not open the keys stored there): fix {source.setting}"
            ) from None
        return


async def _context_of(db: AsyncSession, table: str, blob: bytes) -> str:
    from sqlalchemy import text

    if table == "signing_keys":
        return "signing-key"
    if table == "derived_keys":
        purpose = await db.scalar(
            text("SELECT purpose FROM derived_keys WHERE key_wrapped = :b"), {"b": blob}
        )
        return derived_context(str(purpose))
    row = (
        await db.execute(
            text(
                "SELECT device_id, key_id FROM merchant_device_identity_keys "
                "WHERE secret_wrapped = :b"
            ),
            {"b": blob},
        )
    ).first()
    assert row is not None
    return f"identity-key:{row[0]}:{row[1]}"


def derived_context(purpose: str) -> str:
    return f"derived-key:{purpose}"


async def load_derived_keys(db: AsyncSession, keyring: Keyring, *, now: datetime) -> None:
    """Load (making any missing one) the stored key of every purpose into ``keyring``.

    A new derived key under a software master key starts as the value ``derive`` had before
    derived keys were stored (HKDF of that master key), so digests kept in the database (API
    clients' secrets) keep verifying; under an HSM key it is random."""
    for purpose in DERIVED_PURPOSES:
        row = await db.get(DerivedKey, purpose)
        if row is None:
            active = keyring.active
            seed = (
                active.legacy_derive(purpose)
                if isinstance(active, SoftwareMasterKey)
                else os.urandom(32)
            )
            try:
                async with db.begin_nested():
                    db.add(
                        DerivedKey(
                            purpose=purpose,
                            key_wrapped=keyring.wrap(seed, context=derived_context(purpose)),
                            created_at=now,
                        )
                    )
            except IntegrityError:
                pass
            row = await db.get(DerivedKey, purpose, populate_existing=True)
            assert row is not None
        try:
            key = keyring.unwrap(row.key_wrapped, context=derived_context(purpose))
        except EnvelopeNotOpened:
            raise MasterKeyRefused(
                f"derived key {purpose!r} does not open under the master keys this process holds"
            ) from None
        keyring.set_derived(purpose, key)


def prepare_keyring(settings: Settings, keyring: Keyring, source: KeySource) -> None:
    """Start-up: check the configured key against the database and load every key this process
    needs. Runs on a thread of its own (with its own engine), so it works from sync and async
    callers alike."""
    from viopay.db import create_engine, session_factory
    from viopay.ids import utcnow

    async def go() -> None:
        engine = create_engine(settings)
        try:
            async with session_factory(engine)() as db, db.begin():
                await sync_keyring(db, keyring, source, now=utcnow(), first=True)
                await load_derived_keys(db, keyring, now=utcnow())
        finally:
            await engine.dispose()

    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(go())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="viopay-keyring")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


async def refresh_forever(
    sessions: async_sessionmaker[AsyncSession],
    keyring: Keyring,
    source: KeySource,
    *,
    interval: float,
) -> None:
    """A server's loop: re-read ``master_keys`` every ``interval`` seconds, so a rotation started
    by the CLI reaches every process (new key loaded and made active, destroyed key dropped).
    A database that does not answer keeps the last state."""
    from viopay.ids import utcnow

    while True:
        await asyncio.sleep(interval)
        try:
            async with sessions() as db, db.begin():
                await sync_keyring(db, keyring, source, now=utcnow(), first=False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("master_keys_refresh_failed", error=type(exc).__name__)
