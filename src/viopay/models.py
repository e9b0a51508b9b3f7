"""Every table, imported in one place for Alembic and for tests."""

from viopay.audit import AuditEvent
from viopay.auth.models import ApiClient, SigningKey
from viopay.auth.users import User
from viopay.db import Base
from viopay.devices.models import Device, MerchantDeviceIdentityKey, PairingCode, Terminal
from viopay.fleet.models import TimerLease
from viopay.keysets.models import KeySet, KeySetKey
from viopay.masterkey import MasterKeyCheck
from viopay.merchants.models import Merchant, MerchantConfig, MerchantMember
from viopay.parameters.models import TerminalParameters
from viopay.payments.models import Charge, IdempotencyRecord, Refund
from viopay.webhooks.models import WebhookDelivery, WebhookEndpoint

metadata = Base.metadata

__all__ = [
    "ApiClient",
    "AuditEvent",
    "Charge",
    "Device",
    "IdempotencyRecord",
    "KeySet",
    "KeySetKey",
    "MasterKeyCheck",
    "Merchant",
    "MerchantConfig",
    "MerchantDeviceIdentityKey",
    "MerchantMember",
    "PairingCode",
    "Refund",
    "SigningKey",
    "Terminal",
    "TerminalParameters",
    "TimerLease",
    "User",
    "WebhookDelivery",
    "WebhookEndpoint",
    "metadata",
]
