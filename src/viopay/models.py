"""Every table, imported in one place for Alembic and for tests."""

from viopay.auth.models import ApiClient, SigningKey
from viopay.db import Base
from viopay.devices.models import Device, MerchantDeviceIdentityKey, PairingCode, Terminal
from viopay.merchants.models import AuditEvent, Merchant, MerchantMember

metadata = Base.metadata

__all__ = [
    "ApiClient",
    "AuditEvent",
    "Device",
    "Merchant",
    "MerchantDeviceIdentityKey",
    "MerchantMember",
    "PairingCode",
    "SigningKey",
    "Terminal",
    "metadata",
]
