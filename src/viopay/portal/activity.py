"""Activity for people: the audit trail (§6 events) as a merchant reads it — money as money,
times in the merchant's zone, people and terminals by name, and what a merchant can act on
first (key and attestation housekeeping behind a filter)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from viopay.audit import AuditEvent
from viopay.auth.users import User
from viopay.devices.models import Device
from viopay.money import money
from viopay.portal.rendering import humanize, when, when_full

# The device's own housekeeping: keys, attestation, parameters. Shown on request only.
TECHNICAL = frozenset(
    {
        "identity_key.added",
        "identity_key.revoked",
        "key_set.created",
        "key_set.activated",
        "key_set.superseded",
        "key_set.retired",
        "device.attested",
        "device.pairing_code_issued",
        "device.provisioned",
        "device.keys_rotated",
        "terminal_parameters.updated",
    }
)

_WHAT = {
    "charge.created": "Payment taken",
    "charge.refunded": "Payment refunded",
    "charge.canceled": "Payment canceled",
    "charge.reversed": "Payment reversed",
    "refund.created": "Refund made",
    "device.claimed": "Terminal claimed",
    "device.activated": "Terminal activated",
    "device.released": "Terminal released",
    "device.disabled": "Terminal disabled",
    "device.enabled": "Terminal enabled",
    "device.renamed": "Terminal renamed",
    "device.online": "Terminal online",
    "device.offline": "Terminal offline",
    "merchant_config.updated": "Settings changed",
    "merchant.created": "Account opened",
    "member.added": "Team member added",
}
_AMOUNTS = ("amount", "amount_refunded", "tip_amount", "tax_amount", "surcharge_amount")
_HIDDEN = ("terminal_id", "response_code", "recovered")  # said elsewhere, or not for people


@dataclass(frozen=True)
class Row:
    """One event as the Activity page shows it."""

    id: str
    type: str
    what: str
    when: str
    when_full: str
    by: str
    subject: str
    link: str | None
    details: list[tuple[str, str]] = field(default_factory=list)


async def names_for(db: AsyncSession, events: Iterable[AuditEvent]) -> dict[str, str]:
    """Readable names of the people and terminals the events name (ids → names)."""
    users, devices = set(), set()
    for e in events:
        for kind, ident in ((e.actor_type, e.actor_id), (e.subject_type, e.subject_id)):
            if ident and kind == "user":
                users.add(ident)
            if ident and kind == "device":
                devices.add(ident)
        if e.subject_type == "member" and e.subject_id:
            users.add(e.subject_id)
    names: dict[str, str] = {}
    if users:
        for user_id, email in await db.execute(
            select(User.user_id, User.email).where(User.user_id.in_(sorted(users)))
        ):
            names[user_id] = email
    if devices:
        for device_id, label, terminal_id in await db.execute(
            select(Device.device_id, Device.label, Device.terminal_id).where(
                Device.device_id.in_(sorted(devices))
            )
        ):
            names[device_id] = label or terminal_id or device_id
    return names


def _by(event: AuditEvent, names: dict[str, str]) -> str:
    ident = event.actor_id or ""
    if event.actor_type == "user":
        return names.get(ident, "A team member")
    if event.actor_type == "client":
        return f"API client {ident}"
    if event.actor_type == "device":
        return f"Terminal {names.get(ident, ident)}"
    if event.actor_type == "operator":
        return "Viopay support"
    return "Viopay (automatic)"


def _value(key: str, value: Any, *, currency: str, tz: str) -> str:
    if key in _AMOUNTS and isinstance(value, int):
        return money(value, currency)
    if key.endswith("_at") and isinstance(value, str):
        return when(value, tz)
    if key in ("status", "reason", "role") and isinstance(value, str):
        return humanize(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(humanize(str(v)) for v in value)
    if isinstance(value, dict):
        return ", ".join(humanize(str(k)) for k in value)
    return "—" if value is None else str(value)


def describe(event: AuditEvent, names: dict[str, str], *, currency: str, tz: str) -> Row:
    subject = names.get(event.subject_id, event.subject_id)
    link = None
    if event.subject_type == "charge":
        link = f"/portal/charges/{event.subject_id}"
    elif event.subject_type == "device":
        link = f"/portal/devices/{event.subject_id}"
    elif event.subject_type == "refund" and isinstance(event.data.get("charge_id"), str):
        link = f"/portal/charges/{event.data['charge_id']}"
    details = [
        (humanize(k), _value(k, v, currency=currency, tz=tz))
        for k, v in event.data.items()
        if k not in _HIDDEN
    ]
    return Row(
        id=event.event_id,
        type=event.type,
        what=_WHAT.get(event.type, humanize(event.type)),
        when=when(event.created_at, tz),
        when_full=when_full(event.created_at, tz),
        by=_by(event, names),
        subject=f"{humanize(event.subject_type)} {subject}",
        link=link,
        details=details,
    )
