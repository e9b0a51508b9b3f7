"""Terminal-parameters chunks on a token this process verified already (PROTOCOL §3.9;
PostgreSQL).

An activation downloads the terminal parameters right after the config, in several 32 KiB
chunks, each with the same attestation token. Answered afresh, each chunk reads the device, the
token's identity key, the device's key sets and the parameters row, and writes the key set's
envelope tally: eight round trips through a session.

After a token request answered on a fresh read (the config or a chunk), this process remembers
what that read decided (:class:`TokenContext`), keyed by the token and the key set the body
named. The next chunk with that token is answered with one cache read (the token's record,
which must be the same bytes) and one autocommitted statement (:data:`COUNT_IF_UNCHANGED`) that
adds the envelope to the set's tally only if every row that decided the answer still reads the
same: the device (not disabled, same token generation, status and terminal), the identity key
(not revoked), the key set (same status, expiry, grace and MSK; for a default choice, still the
newest), and returns the parameters document now in force. Anything else takes the fresh path:
no context, a body or If-None-Match to decide, a check that fails on the context, a row that
changed, a ``last_seen_at`` due. So every refusal is decided on a fresh read in the §1 order,
and a change made by any process (disable, release, a revoked key, a new key set, a new
document) acts on the very next chunk.

The statement runs on the bookkeeping pool (:func:`viopay.db.bookkeeping_pool`): it writes only
the tally, as the fresh path's transaction does (:func:`viopay.db.bookkeeping_only`).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from viopay.activation.attestation import Attested, TokenHeaders, token_record
from viopay.activation.delivery import ChunkRequest, Sealed, seal_chunk
from viopay.db import NativePool
from viopay.devices.authn import LAST_SEEN_RESOLUTION
from viopay.devices.models import DeviceStatus
from viopay.keysets import service as keysets
from viopay.keysets.models import KeySet, KeySetStatus
from viopay.metrics import TOKEN_LOOKUPS
from viopay.parameters.models import DEFAULT_KEY
from viopay.parameters.service import ParametersBlob, builtin_blob, chunk_count
from viopay.runtime import Runtime

COUNT_IF_UNCHANGED = f"""
WITH counted AS (
    UPDATE key_sets AS s SET envelope_count = s.envelope_count + 1
    WHERE s.key_set_id = $1 AND s.device_id = $2 AND s.status = $3 AND s.expires_at = $4
      AND s.retires_at IS NOT DISTINCT FROM $5 AND s.msk_key_id = $6
      AND EXISTS (
        SELECT 1 FROM devices AS d
        WHERE d.device_id = $2 AND NOT d.disabled AND d.token_generation = $7
          AND d.status = $8 AND d.terminal_id = $9)
      AND EXISTS (
        SELECT 1 FROM merchant_device_identity_keys AS k
        WHERE k.device_id = $2 AND k.key_id = $10 AND k.revoked_at IS NULL)
      AND NOT ($11 AND EXISTS (
        SELECT 1 FROM key_sets AS n
        WHERE n.device_id = $2 AND n.status <> '{KeySetStatus.retired.value}'
          AND (n.created_at, n.key_set_id) > (s.created_at, s.key_set_id)))
    RETURNING s.key_set_id
)
SELECT
    EXISTS (SELECT 1 FROM counted) AS counted,
    p.sha256,
    p.size,
    CASE WHEN p.sha256 IS DISTINCT FROM $12 THEN p.gzip END AS gzip
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (
    SELECT sha256, size, gzip FROM terminal_parameters
    WHERE terminal_id IN ($9, '{DEFAULT_KEY}')
    ORDER BY terminal_id = $9 DESC
    LIMIT 1
) AS p ON true
"""  # noqa: S608 (built from constants only)


@dataclass(frozen=True)
class SetFields:
    """The columns of a key set that decide whether it is usable, and its MSK."""

    key_set_id: str
    status: KeySetStatus
    created_at: datetime
    expires_at: datetime
    retires_at: datetime | None
    msk_key_id: str

    @classmethod
    def of(cls, key_set: KeySet) -> SetFields:
        return cls(
            key_set_id=key_set.key_set_id,
            status=key_set.status,
            created_at=key_set.created_at,
            expires_at=key_set.expires_at,
            retires_at=key_set.retires_at,
            msk_key_id=key_set.msk_key_id,
        )


@dataclass
class TokenContext:
    """What a fresh read decided for a token and a key set choice."""

    token_record: bytes = field(repr=False)
    token_expires_at: float
    device_id: str
    key_id: str
    token_generation: int
    device_status: DeviceStatus
    terminal_id: str
    key_set: SetFields
    default_choice: bool
    last_seen_at: datetime | None
    blob: ParametersBlob | None = field(default=None, repr=False)  # None: not read yet


CONTEXTS_MAX = 4096  # (token, key set choice) pairs per process; the least recently used go first
_CONTEXTS: OrderedDict[tuple[str, str | None], TokenContext] = OrderedDict()


def _key(token: str, key_set_id: str | None) -> tuple[str, str | None]:
    return hashlib.sha256(token.encode("ascii")).hexdigest(), key_set_id


def remember(auth: Attested, sealed: Sealed, *, key_set_id: str | None, runtime: Runtime) -> None:
    """After a token request answered on a fresh read (PostgreSQL only): what it decided."""
    key_set, device = sealed.key_set, auth.device
    if runtime.bookkeeping is None or key_set is None or device.terminal_id is None:
        return
    record = orjson.loads(auth.token_record)
    _CONTEXTS[_key(auth.token, key_set_id)] = TokenContext(
        token_record=auth.token_record,
        token_expires_at=float(record["expires_at"]),
        device_id=device.device_id,
        key_id=auth.identity_key.key_id,
        token_generation=device.token_generation,
        device_status=device.status,
        terminal_id=device.terminal_id,
        key_set=SetFields.of(key_set),
        default_choice=key_set_id is None,
        last_seen_at=device.last_seen_at,
        blob=sealed.blob,
    )
    while len(_CONTEXTS) > CONTEXTS_MAX:
        _CONTEXTS.popitem(last=False)


async def remembered_chunk(
    runtime: Runtime, headers: TokenHeaders, body: ChunkRequest, *, now: datetime
) -> Sealed | None:
    """The chunk answered on the token's remembered context, its envelope counted; None (the
    context forgotten) when the fresh path must answer."""
    pool = runtime.bookkeeping
    key = _key(headers.token, body.key_set_id)
    context = _CONTEXTS.get(key)
    if pool is None or context is None:
        return None
    _CONTEXTS.move_to_end(key)
    keys = keysets.cached_keys(context.key_set.key_set_id)
    if (
        keys is None
        or headers.device_id != context.device_id
        or now.timestamp() >= context.token_expires_at
        or not keysets.is_usable(context.key_set, now=now)
        or context.last_seen_at is None
        or now - context.last_seen_at >= LAST_SEEN_RESOLUTION  # the fresh path writes it
        or (context.blob is not None and body.chunk >= chunk_count(context.blob))
        or await token_record(runtime.cache, headers.token) != context.token_record
    ):
        _forget(key, "changed")
        return None
    blob = await _count_if_unchanged(pool, context)
    if blob is None or body.chunk >= chunk_count(blob):
        # A changed row (nothing counted), or a new document too short for the index (counted:
        # the tally errs on the safe side by one); the fresh path decides.
        _forget(key, "changed")
        return None
    context.blob = blob
    TOKEN_LOOKUPS.labels("remembered").inc()
    sealed = seal_chunk(
        keys.msk,
        context.key_set.msk_key_id,
        device_id=context.device_id,
        blob=blob,
        index=body.chunk,
    )
    return Sealed(sealed, f'"{blob.sha256}"')


def _forget(key: tuple[str, str | None], source: str) -> None:
    _CONTEXTS.pop(key, None)
    TOKEN_LOOKUPS.labels(source).inc()


async def _count_if_unchanged(pool: NativePool, context: TokenContext) -> ParametersBlob | None:
    """:data:`COUNT_IF_UNCHANGED`: the document in force, or None when nothing was counted."""
    ks = context.key_set
    known = context.blob.sha256 if context.blob is not None else None
    async with pool.connection() as conn:
        row = await conn.fetchrow(
            COUNT_IF_UNCHANGED,
            ks.key_set_id,
            context.device_id,
            ks.status.value,
            ks.expires_at,
            ks.retires_at,
            ks.msk_key_id,
            context.token_generation,
            context.device_status.value,
            context.terminal_id,
            context.key_id,
            context.default_choice,
            known,
        )
    if row is None or not row["counted"]:
        return None
    if row["sha256"] is None:
        return await builtin_blob()
    if row["gzip"] is None:
        assert context.blob is not None  # same SHA-256 as the one this context holds
        return context.blob
    return ParametersBlob(gzip_bytes=bytes(row["gzip"]), size=row["size"], sha256=row["sha256"])
