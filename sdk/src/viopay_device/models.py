"""Frozen dataclasses for the server's answers (PROTOCOL.md §3, §4).

Each ``from_json`` takes the decoded (and, where sealed, decrypted) JSON object and raises
:class:`~viopay_device.errors.ProtocolError` when a member the protocol promises is missing or
of the wrong type. Unknown members are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from viopay_device._json import Fields as _Fields
from viopay_device.errors import ProtocolError

__all__ = [
    "Activation",
    "Attestation",
    "Bootstrap",
    "CardSummary",
    "Charge",
    "Config",
    "DeviceStatus",
    "MerchantRef",
    "PairingCode",
    "Refund",
    "Reversal",
    "TerminalParameters",
]


@dataclass(frozen=True)
class Bootstrap:
    """§3.1: server time and version policy."""

    server_time: datetime
    min_supported_version: str
    latest_version: str
    upgrade_required: bool
    device_status: str
    poll_interval: int

    @classmethod
    def from_json(cls, obj: object) -> Bootstrap:
        f = _Fields(obj, "bootstrap")
        return cls(
            server_time=f.time("server_time"),
            min_supported_version=f.text("min_supported_version"),
            latest_version=f.text("latest_version"),
            upgrade_required=f.flag("upgrade_required"),
            device_status=f.text("device_status"),
            poll_interval=f.integer("poll_interval", 5),
        )


@dataclass(frozen=True)
class PairingCode:
    """§3.2: the six characters to show to the merchant."""

    pairing_code: str
    expires_at: datetime
    expires_in: int
    poll_interval: int

    @classmethod
    def from_json(cls, obj: object) -> PairingCode:
        f = _Fields(obj, "pairing code")
        return cls(
            pairing_code=f.text("pairing_code"),
            expires_at=f.time("expires_at"),
            expires_in=f.integer("expires_in"),
            poll_interval=f.integer("poll_interval", 5),
        )


@dataclass(frozen=True)
class MerchantRef:
    id: str
    name: str


@dataclass(frozen=True)
class DeviceStatus:
    """§3.3: where the device stands in its lifecycle."""

    device_id: str
    status: str
    pairing_code_expires_at: datetime | None
    merchant: MerchantRef | None
    terminal_id: str | None
    poll_interval: int

    @property
    def claimed(self) -> bool:
        """True once a merchant has claimed the device (``claimed`` or ``activated``)."""
        return self.status in ("claimed", "activated")

    @classmethod
    def from_json(cls, obj: object) -> DeviceStatus:
        f = _Fields(obj, "status")
        merchant = f.opt_mapping("merchant")
        ref = None
        if merchant is not None:
            m = _Fields(merchant, "status.merchant")
            ref = MerchantRef(id=m.text("id"), name=m.text("name"))
        return cls(
            device_id=f.text("device_id"),
            status=f.text("status"),
            pairing_code_expires_at=f.opt_time("pairing_code_expires_at"),
            merchant=ref,
            terminal_id=f.opt_text("terminal_id"),
            poll_interval=f.integer("poll_interval", 5),
        )


@dataclass(frozen=True)
class Attestation:
    """§3.5: an attestation token (hidden from repr) and its lifetime."""

    token: str = field(repr=False)
    token_type: str
    expires_in: int
    expires_at: datetime
    device_status: str

    @classmethod
    def from_json(cls, obj: object) -> Attestation:
        f = _Fields(obj, "attestation")
        token = f.text("attestation_token")
        if not token.startswith("att_"):
            raise ProtocolError("attestation: token without the att_ prefix")
        return cls(
            token=token,
            token_type=f.text("token_type"),
            expires_in=f.integer("expires_in"),
            expires_at=f.time("expires_at"),
            device_status=f.text("device_status"),
        )


@dataclass(frozen=True)
class Config:
    """§3.8: the core config document (whole, in ``document``) and the members the SDK uses."""

    config_version: int
    terminal_id: str
    hmac_key_id: str
    document: Mapping[str, Any] = field(repr=False)
    etag: str | None = None

    @classmethod
    def from_json(cls, obj: object, *, etag: str | None) -> Config:
        f = _Fields(obj, "config")
        terminal = _Fields(f.mapping("terminal"), "config.terminal")
        security = _Fields(f.mapping("security"), "config.security")
        assert isinstance(obj, Mapping)  # checked by _Fields
        return cls(
            config_version=f.integer("config_version"),
            terminal_id=terminal.text("terminal_id"),
            hmac_key_id=security.text("hmac_key_id"),
            document=obj,
            etag=etag,
        )


@dataclass(frozen=True)
class TerminalParameters:
    """§3.9: the reassembled, verified and decompressed terminal_parameters document."""

    sha256: str
    size: int
    chunk_count: int
    document: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Activation:
    """§3.10: the activation answer."""

    status: str
    device_id: str
    terminal_id: str
    merchant_id: str
    key_set_id: str
    hmac_key_id: str
    activated_at: datetime

    @classmethod
    def from_json(cls, obj: object) -> Activation:
        f = _Fields(obj, "activation")
        return cls(
            status=f.text("status"),
            device_id=f.text("device_id"),
            terminal_id=f.text("terminal_id"),
            merchant_id=f.text("merchant_id"),
            key_set_id=f.text("key_set_id"),
            hmac_key_id=f.text("hmac_key_id"),
            activated_at=f.time("activated_at"),
        )


@dataclass(frozen=True)
class CardSummary:
    """The masked card a charge keeps: brand, BIN, last four and expiry."""

    brand: str
    bin: str
    last4: str
    expiry: str


@dataclass(frozen=True)
class Charge:
    """§4.1: a charge as it stands. ``replayed`` is set on an idempotent replay (200)."""

    id: str
    status: str
    amount: int
    currency: str
    amount_refunded: int
    tip_amount: int
    tax_amount: int
    surcharge_amount: int
    reference: str | None
    entry_mode: str
    card: CardSummary
    authorization_code: str | None
    response_code: str | None
    decline_reason: str | None
    emv_response: str | None
    terminal_id: str
    merchant_id: str
    created_at: datetime
    rotate_keys: bool = False
    replayed: bool = False

    @property
    def approved(self) -> bool:
        return self.status == "approved"

    @classmethod
    def from_json(cls, obj: object, *, replayed: bool = False) -> Charge:
        f = _Fields(obj, "charge")
        c = _Fields(f.mapping("card"), "charge.card")
        return cls(
            id=f.text("id"),
            status=f.text("status"),
            amount=f.integer("amount"),
            currency=f.text("currency"),
            amount_refunded=f.integer("amount_refunded", 0),
            tip_amount=f.integer("tip_amount", 0),
            tax_amount=f.integer("tax_amount", 0),
            surcharge_amount=f.integer("surcharge_amount", 0),
            reference=f.opt_text("reference"),
            entry_mode=f.text("entry_mode"),
            card=CardSummary(
                brand=c.text("brand"),
                bin=c.text("bin"),
                last4=c.text("last4"),
                expiry=c.text("expiry"),
            ),
            authorization_code=f.opt_text("authorization_code"),
            response_code=f.opt_text("response_code"),
            decline_reason=f.opt_text("decline_reason"),
            emv_response=f.opt_text("emv_response"),
            terminal_id=f.text("terminal_id"),
            merchant_id=f.text("merchant_id"),
            created_at=f.time("created_at"),
            rotate_keys=f.flag("rotate_keys", False),
            replayed=replayed,
        )


@dataclass(frozen=True)
class Refund:
    """§4.2: a refund and the charge after it."""

    id: str
    charge_id: str
    amount: int
    reason: str | None
    status: str
    created_at: datetime
    charge: Charge | None
    rotate_keys: bool = False
    replayed: bool = False

    @classmethod
    def from_json(cls, obj: object, *, replayed: bool = False) -> Refund:
        f = _Fields(obj, "refund")
        charge = f.opt_mapping("charge")
        return cls(
            id=f.text("id"),
            charge_id=f.text("charge_id"),
            amount=f.integer("amount"),
            reason=f.opt_text("reason"),
            status=f.text("status"),
            created_at=f.time("created_at"),
            charge=None if charge is None else Charge.from_json(charge),
            rotate_keys=f.flag("rotate_keys", False),
            replayed=replayed,
        )


@dataclass(frozen=True)
class Reversal:
    """§4.4 reverse-by-key: the charge the key created, as it stands, or None if there was none
    (the key is then spent: a late charge with it is refused)."""

    charge: Charge | None
    rotate_keys: bool = False

    @classmethod
    def from_json(cls, obj: object) -> Reversal:
        f = _Fields(obj, "reversal")
        if f.opt_text("object") == "reversal":
            if f.opt_mapping("charge") is not None:
                raise ProtocolError("reversal: expected charge null")
            return cls(charge=None, rotate_keys=f.flag("rotate_keys", False))
        charge = Charge.from_json(obj)
        return cls(charge=charge, rotate_keys=charge.rotate_keys)


@dataclass(frozen=True)
class Heartbeat:
    """§8: the heartbeat's answer: what the terminal should hold and when to beat again."""

    server_time: datetime
    config_version: int
    parameters_sha256: str
    next_heartbeat_s: int
    rotate_keys: bool = False

    @classmethod
    def from_json(cls, obj: object) -> Heartbeat:
        f = _Fields(obj, "heartbeat")
        return cls(
            server_time=f.time("server_time"),
            config_version=f.integer("config_version"),
            parameters_sha256=f.text("parameters_sha256"),
            next_heartbeat_s=f.integer("next_heartbeat_s"),
            rotate_keys=f.flag("rotate_keys", False),
        )
