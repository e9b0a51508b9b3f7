"""Every table, imported in one place for Alembic and for tests."""

from viopay.activation.models import KeySet, KeySetKey
from viopay.activation.parameters_models import TerminalParameters
from viopay.audit import AuditEvent
from viopay.auth.models import ApiClient, SigningKey
from viopay.auth.users import User
from viopay.db import Base
from viopay.devices.models import Device, MerchantDeviceIdentityKey, PairingCode, Terminal
from viopay.merchants.models import Merchant, MerchantConfig, MerchantMember
from viopay.payments.models import Charge, IdempotencyRecord, Refund

metadata = Base.metadata

__all__ = [
    "ApiClient",
    "AuditEvent",
    "Charge",
    "Device",
    "IdempotencyRecord",
    "KeySet",
    "KeySetKey",
    "Merchant",
    "MerchantConfig",
    "MerchantDeviceIdentityKey",
    "MerchantMember",
    "PairingCode",
    "Refund",
    "SigningKey",
    "Terminal",
    "TerminalParameters",
    "User",
    "metadata",
]
