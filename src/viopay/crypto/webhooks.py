"""Webhook signatures (PROTOCOL §7): the protocol's pure functions, shared with the SDK's
:func:`viopay_device.verify_webhook`."""

from viopay_device.protocol.webhooks import (
    SECRET_PREFIX,
    secret_bytes,
    verify_webhook_signature,
    webhook_signature,
)

__all__ = ["SECRET_PREFIX", "secret_bytes", "verify_webhook_signature", "webhook_signature"]
