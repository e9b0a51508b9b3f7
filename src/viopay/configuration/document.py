"""The config document of ``POST /pos/config`` (PROTOCOL §3.8) and its ETag."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from viopay.configuration.emv import effective_emv
from viopay.configuration.schemas import ConfigDocument
from viopay.crypto.canonical import canonical_json
from viopay.devices.models import Device
from viopay.errors import InvalidState
from viopay.merchants.config import merchant_and_config
from viopay.merchants.models import Merchant, MerchantConfig

CLOCK_SKEW_SECONDS = 300  # the X-Timestamp window (§2.2)
PIN_TIMEOUT_SECONDS = 30


def build_config_document(
    *,
    merchant: Merchant,
    merchant_config: MerchantConfig,
    device: Device,
    terminal_id: str,
    hmac_key_id: str,
    emv_overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The §3.8 document, every member present, validated against the published schema.

    ``emv_overrides`` defaults to the ones stored on ``merchant_config``.
    """
    overrides = merchant_config.emv_overrides if emv_overrides is None else emv_overrides
    document = ConfigDocument.model_validate(
        {
            "config_version": merchant_config.config_version,
            "terminal": {
                "terminal_id": terminal_id,
                "device_id": device.device_id,
                "label": device.label,
                "merchant_id": merchant.merchant_id,
                "merchant_name": merchant.name,
                "currency": merchant.currency,
                "country": merchant.country,
                "timezone": merchant.timezone,
            },
            "emv": effective_emv(merchant, overrides),
            "security": {
                "hmac_key_id": hmac_key_id,
                "clock_skew_seconds": CLOCK_SKEW_SECONDS,
                "pin_timeout_seconds": PIN_TIMEOUT_SECONDS,
                "offline": {"allowed": False, "max_amount": 0, "max_count": 0},
            },
            "branding": merchant_config.branding,
            "merchant": {
                "tip": merchant_config.tip,
                "tax": merchant_config.tax,
                "surcharge": merchant_config.surcharge,
            },
        }
    )
    return document.model_dump(mode="json")


async def config_document_for(
    db: AsyncSession, *, device: Device, hmac_key_id: str, now: datetime
) -> dict[str, Any]:
    """The document for a claimed device: loads its merchant and config, then builds it."""
    if device.merchant_id is None or device.terminal_id is None:
        raise InvalidState(f"the device is {device.status.value}, not claimed")
    merchant, config = await merchant_and_config(db, device.merchant_id, now=now)
    return build_config_document(
        merchant=merchant,
        merchant_config=config,
        device=device,
        terminal_id=device.terminal_id,
        hmac_key_id=hmac_key_id,
    )


def config_etag(document: Mapping[str, Any]) -> str:
    """A strong ETag: the quoted SHA-256 (hex) of the document's canonical JSON (RFC 8785).

    It changes whenever the document would: a new ``config_version``, another key set (so
    another ``hmac_key_id``), new EMV overrides, or a renamed terminal.
    """
    return '"' + hashlib.sha256(canonical_json(dict(document))).hexdigest() + '"'
