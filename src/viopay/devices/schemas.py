from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from viopay.devices.models import Device
from viopay.ids import rfc3339


class BootstrapOut(BaseModel):
    server_time: str
    min_supported_version: str
    latest_version: str
    upgrade_required: bool
    device_status: str
    poll_interval: int


class PairingCodeOut(BaseModel):
    pairing_code: str
    expires_at: str
    expires_in: int
    poll_interval: int


class MerchantRef(BaseModel):
    id: str
    name: str


class StatusOut(BaseModel):
    device_id: str
    status: str
    pairing_code_expires_at: str | None
    merchant: MerchantRef | None
    terminal_id: str | None
    poll_interval: int


class ClaimIn(BaseModel):
    """§3.4. ``pairing_code`` is read as any value so that the service answers what is wrong
    with it (400, not counted); the document says what it must be."""

    model_config = ConfigDict(json_schema_extra={"required": ["pairing_code"]})

    pairing_code: object = Field(
        default=None,
        json_schema_extra={
            "type": "string",
            "description": "six characters of the pairing alphabet; case, spaces and hyphens "
            "are ignored",
            "pattern": r"^[ -]*(?:[A-HJKMNP-Za-hjkmnp-z2-9][ -]*){6}$",
        },
    )
    label: str | None = Field(default=None, max_length=64)


class LabelIn(BaseModel):
    """``PATCH /merchant/devices/{device_id}``: the new label, or null (or blank) to clear it."""

    label: str | None = Field(max_length=64)

    @field_validator("label")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError("must be one line of text without control characters")
        return value


class ClaimOut(BaseModel):
    device_id: str
    status: str
    merchant_id: str
    terminal_id: str
    label: str | None
    claimed_at: str


class HealthOut(BaseModel):
    """From the terminal's last heartbeat (PROTOCOL §8); null until the first."""

    online: bool
    last_heartbeat_at: str | None
    battery_pct: int | None
    charging: bool | None
    network: str | None
    signal_dbm: int | None
    printer: str | None


class DeviceOut(BaseModel):
    """A device as the merchant and admin APIs show it (PROTOCOL §6)."""

    device_id: str
    status: str
    disabled: bool
    label: str | None
    terminal_id: str | None
    merchant_id: str | None
    app_version: str | None
    last_seen_at: str | None
    claimed_at: str | None
    activated_at: str | None
    health: HealthOut

    @classmethod
    def of(cls, device: Device) -> DeviceOut:
        def t(value: object) -> str | None:
            return rfc3339(value) if value is not None else None  # type: ignore[arg-type]

        return cls(
            device_id=device.device_id,
            status=device.status.value,
            disabled=device.disabled,
            label=device.label,
            terminal_id=device.terminal_id,
            merchant_id=device.merchant_id,
            app_version=device.app_version,
            last_seen_at=t(device.last_seen_at),
            claimed_at=t(device.claimed_at),
            activated_at=t(device.activated_at),
            health=HealthOut(
                online=bool(device.online),
                last_heartbeat_at=t(device.last_heartbeat_at),
                battery_pct=device.battery_pct,
                charging=device.charging,
                network=device.network,
                signal_dbm=device.signal_dbm,
                printer=device.printer,
            ),
        )


class ProvisionIn(BaseModel):
    device_id: str = Field(pattern=r"^POS-[0-9A-F]{8}$")
    key_id: str | None = Field(default=None, pattern=r"^[\x21-\x7E]{1,128}$")


class IdentityKeyIn(BaseModel):
    key_id: str | None = Field(default=None, pattern=r"^[\x21-\x7E]{1,128}$")


class IdentityKeyOut(BaseModel):
    device_id: str
    key_id: str
    identity_secret: str


class RevokedKeyOut(BaseModel):
    device_id: str
    key_id: str
    revoked_at: str
