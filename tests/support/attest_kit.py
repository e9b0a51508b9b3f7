"""Attest (PROTOCOL §2.2): signed attest headers of a provisioned device, and the request."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

import httpx

from support.helpers import UA, ProvisionedDevice, pos_headers
from viopay_device.protocol.signing import attest_string_to_sign, sign


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def attest_headers(
    device: ProvisionedDevice,
    *,
    key_id: str | None = None,
    secret: bytes | None = None,
    timestamp: str | None = None,
    nonce: str | None = None,
    ua: str = UA,
) -> dict[str, str]:
    key_id = key_id or device.key_id
    timestamp = timestamp or stamp(datetime.now(UTC))
    nonce = nonce or secrets.token_urlsafe(12)
    message = attest_string_to_sign(
        device_id=device.device_id, key_id=key_id, timestamp=timestamp, nonce=nonce
    )
    return pos_headers(device.device_id, ua=ua) | {
        "X-Key-Id": key_id,
        "X-Timestamp": timestamp,
        "X-Nonce": nonce,
        "X-Signature": sign(secret or device.secret, message),
    }


def attest(http: httpx.Client, device: ProvisionedDevice, **kwargs: Any) -> httpx.Response:
    return http.post("/pos/attest", headers=attest_headers(device, **kwargs))
