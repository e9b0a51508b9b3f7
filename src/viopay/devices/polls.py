"""``GET /pos/status`` in one statement (PROTOCOL §3.3; PostgreSQL).

A terminal that shows its pairing code polls its status every ``poll_interval`` (5 s) until a
merchant claims it, and every terminal of a rollout does so at once. Answered afresh, a poll is
a transaction through a session: the device with the identity key the signature names, the
pairing code, the merchant, between a BEGIN and a COMMIT.

Here one autocommitted statement (:data:`QUICK_STATUS`) reads all four, in one snapshot: a code
that a claim spent is seen with the device that claim changed, so the fresh path's second look
at the device is not needed. Then the signature, the nonce and the rate limit are checked as
the fresh path checks them, with the same functions and in the same order. A poll that would
write (its device's ``last_seen_at`` due, a new app version) or that what was read refuses (no
such device, disabled, no such key, a revoked key) goes to the fresh path before anything is
spent, so every refusal but the signature's, the nonce's and the rate limit's is decided there,
in the §1 order; those three read nothing more and answer as the fresh path would on the same
rows.

The statement runs on the bookkeeping pool (:func:`viopay.db.bookkeeping_pool`): it writes
nothing.
"""

from __future__ import annotations

from datetime import datetime

from viopay.db import unsaved
from viopay.devices.authn import ActivationHeaders, check_device_signature, seen_changes
from viopay.devices.models import Device, DeviceStatus, MerchantDeviceIdentityKey, PairingCode
from viopay.devices.service import check_status_rate, code_expiry, status_answer
from viopay.metrics import STATUS_READS
from viopay.runtime import Runtime

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


async def quick_status(
    runtime: Runtime, parsed: ActivationHeaders, *, now: datetime
) -> bytes | None:
    """The §3.3 answer from one statement; None (nothing spent) when the fresh path must
    answer. Raises what the signature, nonce and rate checks raise."""
    pool = runtime.bookkeeping
    if pool is None:
        return None
    device_id, signature = parsed.pos.device_id, parsed.signature
    async with pool.connection() as conn:
        row = await conn.fetchrow(
            QUICK_STATUS, device_id, signature.key_id if signature is not None else None
        )
    if (
        row is None
        or row["disabled"]
        or (signature is not None and (row["key_id"] is None or row["revoked_at"] is not None))
        or seen_changes(
            last_seen_at=row["last_seen_at"],
            app_version=row["app_version"],
            version=parsed.pos.version,
            now=now,
        )
    ):
        STATUS_READS.labels("read").inc()
        return None
    STATUS_READS.labels("quick").inc()  # decided on this read, refusals by the checks included
    if signature is not None:
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
