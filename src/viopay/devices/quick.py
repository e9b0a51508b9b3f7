"""Device requests answered from one read (PostgreSQL): bootstrap (PROTOCOL §3.1), pairing
codes (§3.2), status polls (§3.3) and attest (§3.5). The embedded default answers them afresh.

Afresh, each is a SQLAlchemy transaction of 2-4 statements between a BEGIN and a COMMIT: the
device with the identity key the signature names, then what the request reads or writes. Here
the endpoint, authenticated at mount by its headers only (:mod:`viopay.devices.authn`), reads
what it needs in one asyncpg statement and runs the fresh path's own checks, in the same §1
order: the timestamp, signature and nonce (:func:`check_device_signature`), then the route's
(the device's state: 409; the status poll's rate limit and the pairing codes' hourly limit:
429; attest's body: 400, 415). A request that would write something the statement cannot (a
signed request's ``last_seen_at`` or app version due), or that what was read refuses (no such
device, disabled, no such key, a revoked key; a drawn code value another device's row holds),
goes to the fresh transaction before any nonce or limit is spent, so those refusals are decided
there.

- **Bootstrap** (every terminal, when it starts): :data:`QUICK_BOOTSTRAP` reads the device and
  writes its app version and due ``last_seen_at`` (nothing when nothing is due, nothing to a
  disabled device), on the bookkeeping pool (:func:`viopay.db.bookkeeping_pool`): as the fresh
  transaction's, that write is bookkeeping (:func:`viopay.db.bookkeeping_only`).
- **Status polls** (every 5 s from every terminal waiting to be claimed): :data:`QUICK_STATUS`
  reads the device, the key, the merchant and the pairing code in one snapshot, so a code a
  claim spent is seen with the device it claimed (the fresh path's second look at the device is
  not needed).
- **Pairing codes**: :data:`QUICK_SIGNED` reads the device, the key and whether the drawn value
  is held; :data:`ISSUE_CODE` writes the code and its event in one autocommitted statement, only
  if the device is still inactive and enabled (else 409 or 403, as afresh).
- **Attest**: :data:`QUICK_SIGNED`, then the token (Redis) and :func:`record_device_event`: the
  ``device.attested`` event and its webhook deliveries in one autocommitted statement
  (:data:`viopay.webhooks.outbox.DELIVERIES_OF_EVENTS`, the outbox's fan-out in SQL).

Reads and writes with an event run on the main pool (``runtime.native``), the bootstrap's on the
bookkeeping pool. ``viopay_device_reads{route,source}`` counts what was decided on the read
(``quick``) and what was sent to the fresh transaction (``read``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from asyncpg import Record

from viopay.db import unsaved
from viopay.devices import service
from viopay.devices.authn import (
    LAST_SEEN_RESOLUTION,
    ActivationHeaders,
    check_device_signature,
    seen_changes,
)
from viopay.devices.models import Device, DeviceStatus, MerchantDeviceIdentityKey, PairingCode
from viopay.devices.service import check_status_rate, code_expiry, status_answer
from viopay.errors import DeviceDisabled, DeviceNotFound
from viopay.ids import new_id
from viopay.metrics import DEVICE_READS
from viopay.runtime import Runtime
from viopay.webhooks import outbox

QUICK_STATUS = """
SELECT d.status, d.disabled, d.merchant_id, d.terminal_id, d.last_seen_at, d.app_version,
    k.key_id, k.secret_wrapped, k.revoked_at,
    m.name AS merchant_name,
    c.code_digest, c.expires_at AS code_expires_at, c.used_at AS code_used_at
FROM devices AS d
LEFT JOIN merchant_device_identity_keys AS k ON k.device_id = d.device_id AND k.key_id = $2
LEFT JOIN merchants AS m ON m.merchant_id = d.merchant_id
LEFT JOIN pairing_codes AS c ON c.device_id = d.device_id
WHERE d.device_id = $1
"""


QUICK_BOOTSTRAP = """
WITH d AS (
    SELECT status, disabled FROM devices WHERE device_id = $1
), touched AS (
    UPDATE devices SET app_version = $2,
        last_seen_at = CASE WHEN last_seen_at IS NULL OR last_seen_at <= $4
            THEN $3 ELSE last_seen_at END
    WHERE device_id = $1 AND NOT disabled
        AND (app_version IS DISTINCT FROM $2 OR last_seen_at IS NULL OR last_seen_at <= $4)
)
SELECT status, disabled FROM d
"""


async def quick_bootstrap(
    runtime: Runtime, parsed: ActivationHeaders, *, now: datetime
) -> DeviceStatus | None:
    """The device's status, its ``app_version`` and due ``last_seen_at`` written (as
    :func:`viopay.devices.authn.touch` writes them); None (nothing written) when the fresh path
    must answer: no such device, or a disabled one."""
    pool = runtime.bookkeeping
    if pool is None:
        return None
    async with pool.connection() as conn:
        row = await conn.fetchrow(
            QUICK_BOOTSTRAP,
            parsed.pos.device_id,
            parsed.pos.version,
            now,
            now - LAST_SEEN_RESOLUTION,
        )
    if row is None or row["disabled"]:
        DEVICE_READS.labels("bootstrap", "read").inc()
        return None
    DEVICE_READS.labels("bootstrap", "quick").inc()
    return DeviceStatus(row["status"])


def _afresh(row: Record | None, parsed: ActivationHeaders, *, now: datetime) -> bool:
    """Whether the fresh path must answer a signed request on ``row`` (the device and the key
    the signature names): no such device, disabled, no such key or revoked, a write due."""
    signature = parsed.signature
    return (
        row is None
        or row["disabled"]
        or (signature is not None and (row["key_id"] is None or row["revoked_at"] is not None))
        or bool(
            seen_changes(
                last_seen_at=row["last_seen_at"],
                app_version=row["app_version"],
                version=parsed.pos.version,
                now=now,
            )
        )
    )


async def _check_signature(
    runtime: Runtime, parsed: ActivationHeaders, row: Record, *, now: datetime
) -> None:
    """The §2.2 signature and its nonce, as the fresh path checks them, with the key read."""
    device_id, signature = parsed.pos.device_id, parsed.signature
    if signature is None:
        return
    key = unsaved(
        MerchantDeviceIdentityKey,
        device_id=device_id,
        key_id=row["key_id"],
        secret_wrapped=bytes(row["secret_wrapped"]),
        revoked_at=None,
    )
    await check_device_signature(
        runtime.cache,
        wrapper=runtime.wrapper,
        device=unsaved(Device, device_id=device_id),
        key=key,
        signed=signature,
        now=now,
    )


async def quick_status(
    runtime: Runtime, parsed: ActivationHeaders, *, now: datetime
) -> bytes | None:
    """The §3.3 answer from one statement; None (nothing spent) when the fresh path must
    answer. Raises what the signature, nonce and rate checks raise."""
    row = await _signed_read(runtime, parsed, QUICK_STATUS, route="status", now=now)
    if row is None:
        return None
    device_id = parsed.pos.device_id
    await check_status_rate(runtime.cache, device_id=device_id, now=now)
    status = DeviceStatus(row["status"])
    code = None
    if status is DeviceStatus.inactive and row["code_expires_at"] is not None:
        code = unsaved(
            PairingCode,
            code_digest=row["code_digest"],
            expires_at=row["code_expires_at"],
            used_at=row["code_used_at"],
        )
    return status_answer(
        device_id=device_id,
        status=status,
        terminal_id=row["terminal_id"],
        merchant=(row["merchant_id"], row["merchant_name"]) if row["merchant_id"] else None,
        code_expires_at=code_expiry(code, now=now),
    )


QUICK_SIGNED = """
SELECT d.status, d.disabled, d.last_seen_at, d.app_version, d.merchant_id, d.token_generation,
    k.key_id, k.secret_wrapped, k.revoked_at,
    EXISTS (SELECT 1 FROM pairing_codes AS h WHERE h.code_digest = $3) AS taken
FROM devices AS d
LEFT JOIN merchant_device_identity_keys AS k ON k.device_id = d.device_id AND k.key_id = $2
WHERE d.device_id = $1
"""
ISSUE_CODE = """
WITH device AS (
    SELECT status, disabled FROM devices WHERE device_id = $1
), code AS (
    INSERT INTO pairing_codes (device_id, code_digest, issued_at, expires_at, used_at)
    SELECT $1::varchar, $2::varchar, $3::timestamptz, $4::timestamptz, NULL
    FROM device WHERE status = 'inactive' AND NOT disabled
    ON CONFLICT (device_id) DO UPDATE SET code_digest = EXCLUDED.code_digest,
        issued_at = EXCLUDED.issued_at, expires_at = EXCLUDED.expires_at, used_at = NULL
    RETURNING device_id
), event AS (
    INSERT INTO audit_events (event_id, merchant_id, type, actor_type, actor_id, subject_type,
        subject_id, data, created_at)
    SELECT $5::varchar, $6::varchar, $7::varchar, $8::varchar, $1, $9::varchar, $1, $10::json,
        $3 FROM code
)
SELECT status, disabled, EXISTS (SELECT 1 FROM code) AS issued FROM device
"""


async def _signed_read(
    runtime: Runtime,
    parsed: ActivationHeaders,
    statement: str,
    *args: object,
    route: str,
    now: datetime,
) -> Record | None:
    """``statement``'s row (its parameters: the device id, the key id the signature names, then
    ``args``), its signature and nonce checked (what those raise is raised); None (nothing
    spent) when the fresh path must answer: what :func:`_afresh` sends there, and a row whose
    ``taken`` says a drawn code's value is held. Counted in ``viopay_device_reads``."""
    pool = runtime.native
    if pool is None:
        return None
    signature = parsed.signature
    key_id = signature.key_id if signature is not None else None
    async with pool.connection() as conn:
        row = await conn.fetchrow(statement, parsed.pos.device_id, key_id, *args)
    if _afresh(row, parsed, now=now) or (row is not None and row.get("taken")):
        DEVICE_READS.labels(route, "read").inc()
        return None
    assert row is not None
    DEVICE_READS.labels(route, "quick").inc()  # decided on this read, the checks' refusals too
    await _check_signature(runtime, parsed, row, now=now)
    return row


async def quick_pairing_code(
    runtime: Runtime, parsed: ActivationHeaders, *, now: datetime
) -> tuple[str, datetime] | None:
    """A new pairing code, issued by one statement with its audit event (the device's previous
    code dies); None (nothing spent) when the fresh path must answer: what :func:`_afresh` sends
    there, and a drawn code whose value another device's row holds (the fresh path frees a dead
    one's or draws again). Raises what the signature, nonce, state and rate checks raise."""
    code = service.new_pairing_code()
    digest = service.code_digest(runtime.wrapper, code)
    row = await _signed_read(runtime, parsed, QUICK_SIGNED, digest, route="pairing-code", now=now)
    if row is None:
        return None
    write = runtime.native
    assert write is not None
    device_id = parsed.pos.device_id
    service.check_pairable(DeviceStatus(row["status"]))
    expires_at = now + service.PAIRING_CODE_TTL
    event = service.pairing_code_event(device_id, expires_at)
    async with service.pairing_reservation(runtime.cache, device_id=device_id, now=now):
        async with write.connection() as conn:
            written = await conn.fetchrow(
                ISSUE_CODE,
                device_id,
                digest,
                now,
                expires_at,
                new_id("evt_"),
                event["merchant_id"],
                event["type"],
                event["actor"].type,
                event["subject_type"],
                orjson.dumps(event["data"]).decode(),
            )
        if written is None:  # deleted meanwhile (nothing issued: the slot is given back)
            raise DeviceNotFound()
        if not written["issued"]:  # disabled or claimed since the read: refused as afresh
            if written["disabled"]:
                raise DeviceDisabled()
            service.check_pairable(DeviceStatus(written["status"]))
            raise AssertionError("an inactive, enabled device's code was not written")
    return code, expires_at


@dataclass(frozen=True)
class QuickAttest:
    """A device whose attest verified on one read: what the rest of attest needs of it."""

    device: Device
    identity_key: MerchantDeviceIdentityKey


async def quick_attest(
    runtime: Runtime, parsed: ActivationHeaders, *, now: datetime
) -> QuickAttest | None:
    """The device and key of an attest verified on one read (signature and nonce checked);
    None (nothing spent) when the fresh path must answer."""
    row = await _signed_read(runtime, parsed, QUICK_SIGNED, None, route="attest", now=now)
    if row is None:
        return None
    device_id = parsed.pos.device_id
    device = unsaved(
        Device,
        device_id=device_id,
        status=DeviceStatus(row["status"]),
        merchant_id=row["merchant_id"],
        token_generation=row["token_generation"],
    )
    key = unsaved(MerchantDeviceIdentityKey, device_id=device_id, key_id=row["key_id"])
    return QuickAttest(device=device, identity_key=key)


async def record_device_event(
    runtime: Runtime,
    *,
    type: str,
    device_id: str,
    merchant_id: str | None,
    data: dict[str, Any],
    now: datetime,
) -> None:
    """A device's audit event and its webhook deliveries, in one autocommitted statement on the
    main pool (the transactional outbox's rows, :mod:`viopay.webhooks.outbox`, as a session's
    flush writes them); the webhook workers are woken when a delivery was made."""
    pool = runtime.native
    assert pool is not None
    async with pool.connection() as conn:
        deliveries = await conn.fetchval(
            DEVICE_EVENT,
            new_id("evt_"),
            merchant_id,
            type,
            device_id,
            orjson.dumps(data).decode(),
            now,
        )
    if deliveries:
        outbox.wake()


DEVICE_EVENT = f"""
WITH events AS (
    INSERT INTO audit_events (event_id, merchant_id, type, actor_type, actor_id, subject_type,
        subject_id, data, created_at)
    VALUES ($1, $2, $3, 'device', $4, 'device', $4, $5::json, $6)
    RETURNING event_id, type, merchant_id, created_at
), deliveries AS ({outbox.DELIVERIES_OF_EVENTS})
SELECT count(*) FROM deliveries
"""  # noqa: S608 (built from constants only)
