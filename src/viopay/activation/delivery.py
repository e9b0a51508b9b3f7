"""Steps 7a, 7b and 8 (PROTOCOL §3.8–§3.10): config, terminal parameters and activation.

Each answer is an MSK envelope bound to its endpoint and device (§3.7). The key set is
resolved after the body is parsed and before its members are checked (§1 order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from pydantic import BaseModel, Field, StrictInt, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.audit import Actor, record_event
from viopay.bodies import check_json
from viopay.configuration.document import config_document_for, config_etag
from viopay.crypto.wrapping import KeyWrapper
from viopay.db import bookkeeping_only
from viopay.deps import field_errors
from viopay.devices.models import Device, DeviceStatus
from viopay.errors import DecryptionFailed, InvalidRequest, InvalidState, KeyCheckFailed, NotFound
from viopay.ids import rfc3339
from viopay.keysets import service as keysets
from viopay.keysets.models import KeySet, KeySetStatus
from viopay.parameters.service import ParametersBlob, chunk, chunk_count, parameters_for
from viopay_device.protocol import envelope as env
from viopay_device.protocol.errors import EnvelopeMalformed
from viopay_device.protocol.errors import EnvelopeNotOpened as CryptoDecryptionFailed

KCV_TYPES = ("TMK", "KEK", "MSK", "TPK", "TDK", "MAC")


class KeySetChoice(BaseModel):
    key_set_id: str | None = Field(default=None, max_length=64)


class ChunkRequest(KeySetChoice):
    chunk: StrictInt = Field(ge=0)


class ActivationRequest(BaseModel):
    key_set_id: str = Field(min_length=1, max_length=64)
    kcv: dict[str, str]
    config_version: StrictInt | None = None
    app_version: str | None = Field(default=None, max_length=64)


@dataclass(frozen=True)
class Sealed:
    """An envelope answer, with the tag the client may send back as If-None-Match, and what
    it was made from (the key set, and for a chunk its document)."""

    body: dict[str, Any] | None  # None: 304 Not Modified
    etag: str
    key_set: KeySet | None = field(default=None, repr=False)
    blob: ParametersBlob | None = field(default=None, repr=False)


PARAMETERS_PATH = "/pos/terminal-parameters"


def require_claimed(device: Device) -> None:
    if device.status is DeviceStatus.inactive or device.terminal_id is None:
        raise InvalidState(f"the device is {device.status.value}; claim it first")


async def resolve_key_set(
    db: AsyncSession, *, device: Device, key_set_id: str | None, now: datetime
) -> KeySet:
    """The named set if usable and the device's, else 404; by default the newest usable (409 if none)."""
    usable = await keysets.usable_key_sets(db, device=device, now=now)
    if key_set_id is None:
        if not usable:
            raise InvalidState("the device has no usable key set; download keys first")
        return usable[0]
    for key_set in usable:
        if key_set.key_set_id == key_set_id:
            return key_set
    raise NotFound("no such usable key set for this device")


async def _seal(
    db: AsyncSession,
    wrapper: KeyWrapper,
    *,
    key_set: KeySet,
    path: str,
    device: Device,
    plaintext: bytes,
    opened: int = 0,
) -> dict[str, Any]:
    """``plaintext`` sealed under the set's MSK, counted with the ``opened`` envelopes the
    request brought."""
    keys = await keysets.load_keys(db, wrapper=wrapper, key_set_id=key_set.key_set_id)
    aad = env.response_aad(method="POST", path=path, subject=device.device_id, nonce="")
    await keysets.count_envelopes(db, key_set_id=key_set.key_set_id, count=1 + opened)
    return env.seal(keys.msk, key_set.msk_key_id, plaintext, aad)


async def config_response(
    db: AsyncSession,
    wrapper: KeyWrapper,
    *,
    device: Device,
    body: KeySetChoice,
    if_none_match: str | None,
    now: datetime,
) -> Sealed:
    require_claimed(device)
    await bookkeeping_only(db)  # the envelope tally, last_seen, the default config (7a)
    key_set = await resolve_key_set(db, device=device, key_set_id=body.key_set_id, now=now)
    document = await config_document_for(
        db, device=device, hmac_key_id=key_set.hmac_key_id, now=now
    )
    etag = config_etag(document)
    if if_none_match is not None and etag in _tags(if_none_match):
        return Sealed(None, etag, key_set)
    plaintext = orjson.dumps(document)
    return Sealed(
        await _seal(
            db, wrapper, key_set=key_set, path="/pos/config", device=device, plaintext=plaintext
        ),
        etag,
        key_set,
    )


async def parameters_response(
    db: AsyncSession,
    wrapper: KeyWrapper,
    *,
    device: Device,
    body: ChunkRequest,
    if_none_match: str | None,
    now: datetime,
) -> Sealed:
    require_claimed(device)
    await bookkeeping_only(db)  # the envelope tally and last_seen: a chunk writes nothing else
    key_set = await resolve_key_set(db, device=device, key_set_id=body.key_set_id, now=now)
    assert device.terminal_id is not None
    blob = await parameters_for(db, device.terminal_id)
    etag = f'"{blob.sha256}"'
    if if_none_match is not None and etag in _tags(if_none_match):
        return Sealed(None, etag, key_set, blob)  # decided before the chunk index (§3.9)
    chunk(blob, body.chunk)  # the index is checked before anything is counted
    keys = await keysets.load_keys(db, wrapper=wrapper, key_set_id=key_set.key_set_id)
    await keysets.count_envelopes(db, key_set_id=key_set.key_set_id)
    sealed = seal_chunk(
        keys.msk, key_set.msk_key_id, device_id=device.device_id, blob=blob, index=body.chunk
    )
    return Sealed(sealed, etag, key_set, blob)


def seal_chunk(
    msk: bytes, msk_key_id: str, *, device_id: str, blob: ParametersBlob, index: int
) -> dict[str, Any]:
    """Chunk ``index`` of ``blob`` in its MSK envelope, with its ``chunk`` member (§3.9)."""
    data = chunk(blob, index)
    count = chunk_count(blob)
    aad = env.response_aad(method="POST", path=PARAMETERS_PATH, subject=device_id, nonce="")
    aad = env.chunk_aad(aad, index=index, count=count, sha256_hex=blob.sha256)
    sealed = env.seal(msk, msk_key_id, data, aad)
    sealed["chunk"] = {"index": index, "count": count, "size": blob.size, "sha256": blob.sha256}
    return sealed


def _tags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


# --- activation ---------------------------------------------------------------------------------


@dataclass
class OpenedActivation:
    """The activation envelope opened: its key set, the device's sets and the device row as
    locked in this transaction, and the plaintext."""

    key_set: KeySet
    locked: tuple[Device, list[KeySet]]
    document: dict[str, Any]


async def open_activation(
    db: AsyncSession, wrapper: KeyWrapper, *, device: Device, raw: Any
) -> OpenedActivation:
    """Parse and decrypt the activation envelope (400); its kid must name a set of this device.
    The envelope is counted with the answer's (:func:`activate`): a refusal rolls both back."""
    try:
        envelope = env.parse_envelope(raw)
    except EnvelopeMalformed:
        raise InvalidRequest("the body is not a valid envelope") from None
    except CryptoDecryptionFailed:
        raise DecryptionFailed() from None
    # The device first, then its sets: this transaction writes a set (the activation, the
    # tally), and every writer of a device's sets locks them in that order.
    locked = await keysets.lock_device_sets(db, device.device_id)
    key_set = next((s for s in locked[1] if s.msk_key_id == envelope.kid), None)
    if key_set is None:
        raise DecryptionFailed()
    keys = await keysets.load_keys(db, wrapper=wrapper, key_set_id=key_set.key_set_id)
    aad = env.request_aad(method="POST", path="/pos/activate", subject=device.device_id)
    try:
        plaintext = env.open_envelope(keys.msk, envelope, aad)
        document = orjson.loads(plaintext)
    except (CryptoDecryptionFailed, orjson.JSONDecodeError):
        raise DecryptionFailed() from None
    if not isinstance(document, dict):
        raise InvalidRequest("the activation plaintext must be a JSON object")
    check_json(document)
    return OpenedActivation(key_set, locked, document)


def _members(document: dict[str, Any], key_set: KeySet) -> ActivationRequest:
    try:
        request = ActivationRequest.model_validate(document)
    except ValidationError as exc:
        raise InvalidRequest(
            "the activation has invalid members", errors=field_errors(exc)
        ) from None
    missing = [t for t in KCV_TYPES if not isinstance(request.kcv.get(t), str)]
    if missing:
        raise InvalidRequest(
            "every KCV is required",
            errors=[{"field": f"kcv.{t}", "message": "required"} for t in missing],
        )
    if request.key_set_id != key_set.key_set_id:
        raise InvalidRequest(
            "key_set_id must name the set of the envelope's kid",
            errors=[{"field": "key_set_id", "message": "does not match the envelope's key set"}],
        )
    return request


async def activate(
    db: AsyncSession,
    wrapper: KeyWrapper,
    *,
    device: Device,
    opened: OpenedActivation,
    grace: timedelta,
    now: datetime,
) -> dict[str, Any]:
    """Check the KCVs and switch the device to this key set (§3.10); a repeat answers the same."""
    key_set, document = opened.key_set, opened.document
    require_claimed(device)
    if key_set.status is not KeySetStatus.active and (
        key_set.status is not KeySetStatus.pending or not keysets.is_usable(key_set, now=now)
    ):
        state = "expired" if key_set.status is KeySetStatus.pending else "superseded"
        raise InvalidState(f"key set is {state}")
    request = _members(document, key_set)
    keys = await keysets.load_keys(db, wrapper=wrapper, key_set_id=key_set.key_set_id)
    if any(request.kcv[t].upper() != keys.kcvs[t] for t in KCV_TYPES):
        raise KeyCheckFailed()
    if key_set.status is not KeySetStatus.active:
        await keysets.activate_key_set(
            db, key_set=key_set, now=now, grace=grace, locked=opened.locked
        )
        first = device.status is not DeviceStatus.activated
        device.status = DeviceStatus.activated
        if first:
            device.activated_at = now
        record_event(
            db,
            type="device.activated" if first else "device.keys_rotated",
            actor=Actor("device", device.device_id),
            subject_type="device",
            subject_id=device.device_id,
            merchant_id=device.merchant_id,
            now=now,
            data={
                "key_set_id": key_set.key_set_id,
                "config_version": request.config_version,
                "app_version": request.app_version,
            },
        )
        await db.flush()
    assert key_set.activated_at is not None
    answer = {
        "status": "activated",
        "device_id": device.device_id,
        "terminal_id": device.terminal_id,
        "merchant_id": device.merchant_id,
        "key_set_id": key_set.key_set_id,
        "hmac_key_id": key_set.hmac_key_id,
        "activated_at": rfc3339(key_set.activated_at),
    }
    return await _seal(
        db,
        wrapper,
        key_set=key_set,
        path="/pos/activate",
        device=device,
        plaintext=orjson.dumps(answer),
        opened=1,  # the activation envelope, counted with the answer
    )
