"""Webhook signatures (PROTOCOL §7; Standard Webhooks): ``v1,`` + base64 of HMAC-SHA256 under
the 32 bytes after ``whsec_``, over ``webhook-id "." webhook-timestamp "." body``. The server
signs with them; merchants verify with :func:`viopay_device.verify_webhook`."""

from __future__ import annotations

import base64
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

SECRET_PREFIX = "whsec_"


def secret_bytes(secret: str) -> bytes:
    """The key of a ``whsec_…`` secret (base64 of 32 bytes); ValueError otherwise."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    if len(key) != 32:
        raise ValueError("a webhook secret holds 32 bytes")
    return key


def webhook_signature(secret: str, *, webhook_id: str, timestamp: int, body: bytes) -> str:
    mac = crypto_hmac.HMAC(secret_bytes(secret), hashes.SHA256())
    mac.update(f"{webhook_id}.{timestamp}.".encode() + body)
    return "v1," + base64.b64encode(mac.finalize()).decode("ascii")


def verify_webhook_signature(
    secret: str, *, webhook_id: str, timestamp: int, body: bytes, header: str
) -> bool:
    """True when any of the space-separated signatures in ``header`` matches (constant time)."""
    expected = webhook_signature(secret, webhook_id=webhook_id, timestamp=timestamp, body=body)
    return any(hmac.compare_digest(expected, candidate) for candidate in header.split(" "))
