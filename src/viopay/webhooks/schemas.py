"""Wire shapes of PROTOCOL §7, and the event document a delivery carries (the §6 event)."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, Field, field_validator

from viopay.audit import AuditEvent
from viopay.ids import rfc3339
from viopay.webhooks.models import WebhookDelivery, WebhookEndpoint

# Every event type a merchant sees on /merchant/events (and so may subscribe to).
EVENT_TYPES = frozenset(
    {
        "charge.created",
        "charge.refunded",
        "charge.canceled",
        "charge.reversed",
        "refund.created",
        "device.provisioned",
        "device.pairing_code_issued",
        "device.claimed",
        "device.attested",
        "device.activated",
        "device.keys_rotated",
        "device.disabled",
        "device.enabled",
        "device.released",
        "device.renamed",
        "device.online",
        "device.offline",
        "identity_key.added",
        "identity_key.revoked",
        "key_set.created",
        "key_set.activated",
        "key_set.superseded",
        "key_set.retired",
        "member.added",
        "merchant.created",
        "merchant_config.updated",
        "terminal_parameters.updated",
        "webhook_endpoint.created",
        "webhook_endpoint.deleted",
        "webhook_endpoint.secret_rotated",
        "webhook_endpoint.disabled",
        "webhook_endpoint.enabled",
    }
)


def event_document(event: AuditEvent) -> dict[str, Any]:
    """The §6 event object, as ``GET /merchant/events`` shows it."""
    return {
        "id": event.event_id,
        "type": event.type,
        "actor": {"type": event.actor_type, "id": event.actor_id},
        "subject": {"type": event.subject_type, "id": event.subject_id},
        "data": event.data,
        "created_at": rfc3339(event.created_at),
    }


def event_body(event: AuditEvent) -> bytes:
    """The exact bytes POSTed (and signed): the same on every attempt."""
    return orjson.dumps(event_document(event))


class EndpointIn(BaseModel):
    url: str = Field(min_length=1, max_length=2048)
    event_types: list[str] | None = Field(default=None, min_length=1, max_length=len(EVENT_TYPES))
    description: str | None = Field(default=None, max_length=500)

    @field_validator("event_types")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        unknown = sorted(set(value) - EVENT_TYPES)
        if unknown:
            raise ValueError(f"unknown event types: {', '.join(unknown)[:200]}")
        return sorted(set(value))

    @field_validator("description")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError("must be one line of text without control characters")
        return value


class EndpointOut(BaseModel):
    id: str
    url: str
    event_types: list[str] | None
    description: str | None
    status: str
    created_at: str

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> EndpointOut:
        return cls(
            id=endpoint.endpoint_id,
            url=endpoint.url,
            event_types=endpoint.event_types,
            description=endpoint.description,
            status=endpoint.status.value,
            created_at=rfc3339(endpoint.created_at),
        )


class EndpointCreated(EndpointOut):
    secret: str


class EndpointList(BaseModel):
    data: list[EndpointOut]
    next_cursor: str | None


class SecretOut(BaseModel):
    secret: str


class DeliveryOut(BaseModel):
    id: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: str | None
    created_at: str

    @classmethod
    def of(cls, delivery: WebhookDelivery) -> DeliveryOut:
        return cls(
            id=delivery.delivery_id,
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            status=delivery.status.value,
            attempts=delivery.attempts,
            last_status_code=delivery.last_status_code,
            last_error=delivery.last_error,
            next_attempt_at=(
                rfc3339(delivery.next_attempt_at) if delivery.next_attempt_at else None
            ),
            created_at=rfc3339(delivery.created_at),
        )


class DeliveryList(BaseModel):
    data: list[DeliveryOut]
    next_cursor: str | None
