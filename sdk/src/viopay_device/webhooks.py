"""Verifying a Viopay webhook on the merchant's server (PROTOCOL §7, Standard Webhooks)::

    from viopay_device import WebhookVerificationError, verify_webhook

    event = verify_webhook(secret, body=request_body_bytes, headers=request_headers)
    # event["id"] is the webhook-id: de-duplicate on it (delivery is at least once)

Interoperates with the ``standardwebhooks`` libraries; needs only ``cryptography``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from viopay_device.errors import WebhookVerificationError
from viopay_device.protocol.webhooks import verify_webhook_signature

DEFAULT_TOLERANCE = 300  # seconds a webhook-timestamp may differ from our clock


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"missing {name} header")


def verify_webhook(
    secret: str,
    *,
    body: bytes | str,
    headers: Mapping[str, str],
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> dict[str, Any]:
    """The event, once its signature (any of the ``webhook-signature`` list) matches ``secret``
    and its timestamp is within ``tolerance`` seconds; :class:`WebhookVerificationError`
    otherwise. ``body`` must be the exact bytes received."""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    webhook_id = _header(headers, "webhook-id")
    stamp_text = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    if not stamp_text.isdigit() or len(stamp_text) > 12:
        raise WebhookVerificationError("invalid webhook-timestamp header")
    stamp = int(stamp_text)
    if abs((time.time() if now is None else now) - stamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance")
    try:
        matched = verify_webhook_signature(
            secret, webhook_id=webhook_id, timestamp=stamp, body=raw, header=signatures
        )
    except ValueError:
        raise WebhookVerificationError("the secret is not a whsec_ webhook secret") from None
    if not matched:
        raise WebhookVerificationError("no matching signature")
    try:
        event: dict[str, Any] = json.loads(raw)
    except ValueError:
        raise WebhookVerificationError("the body is not JSON") from None
    return event
