"""Attest (§3.5) and key delivery (§3.6): the rules between authentication and the wire."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from viopay.activation.attestation import Attested, IssuedToken, issue_token
from viopay.audit import Actor, record_event
from viopay.cache import Cache
from viopay.crypto.wrapping import KeyWrapper
from viopay.devices.models import Device, DeviceStatus, MerchantDeviceIdentityKey
from viopay.errors import InvalidRequest, InvalidState
from viopay.keysets.service import DeliveredKeySet, create_key_set
from viopay_device.protocol.transport import X25519_KEY_LENGTH

# Attest and every attestation-token endpoint need a claimed (or activated) device.
KEYED_STATUSES = frozenset({DeviceStatus.claimed, DeviceStatus.activated})


def require_keyed_status(device: Device) -> None:
    """409 invalid_state, naming the state, unless the device is claimed or activated."""
    if device.status not in KEYED_STATUSES:
        raise InvalidState(f"device is {device.status.value}; it must be claimed or activated")


async def attest(
    db: AsyncSession,
    cache: Cache,
    *,
    device: Device,
    identity_key: MerchantDeviceIdentityKey,
    now: datetime,
) -> IssuedToken:
    """Issue an attestation token to a device whose signed request verified."""
    issued = await issue_token(cache, device=device, identity_key=identity_key, now=now)
    record_event(
        db,
        type=ATTESTED,
        actor=Actor("device", device.device_id),
        subject_type="device",
        subject_id=device.device_id,
        merchant_id=device.merchant_id,
        now=now,
        data=attested_data(identity_key, issued),
    )
    return issued


ATTESTED = "device.attested"


def attested_data(identity_key: MerchantDeviceIdentityKey, issued: IssuedToken) -> dict[str, Any]:
    """The data of a ``device.attested`` event: the key that earned the token, its expiry."""
    return {"key_id": identity_key.key_id, "expires_at": issued.expires_at.isoformat()}


def decode_transport_key(value: object) -> bytes:
    """The ``transport_key`` member: base64 (padded) of 32 bytes, else 400 with ``errors``."""
    if not isinstance(value, str):
        raise _bad_transport_key("is required and must be a string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad_transport_key("must be base64 with padding") from None
    if base64.b64encode(raw).decode("ascii") != value:  # one text per key: padding, zero pad bits
        raise _bad_transport_key("must be base64 with padding")
    if len(raw) != X25519_KEY_LENGTH:
        raise _bad_transport_key("must be 32 bytes (an X25519 public key)")
    return raw


def _bad_transport_key(message: str) -> InvalidRequest:
    return InvalidRequest(
        "the body has invalid members", errors=[{"field": "transport_key", "message": message}]
    )


async def deliver_keys(
    db: AsyncSession, *, wrapper: KeyWrapper, auth: Attested, transport_key: object, now: datetime
) -> DeliveredKeySet:
    """A new key set for the attested device, its TMK wrapped for ``transport_key``."""
    public = decode_transport_key(transport_key)
    return await create_key_set(
        db,
        wrapper=wrapper,
        device=auth.device,
        identity_key_id=auth.identity_key.key_id,
        identity_secret=auth.identity_secret(),
        transport_key=public,
        now=now,
    )
