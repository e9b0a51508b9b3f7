"""Webhook endpoints and their deliveries (the outbox): one delivery per (event, endpoint)."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, Enum, ForeignKey, Index, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from viopay.db import Base


class EndpointStatus(enum.StrEnum):
    enabled = "enabled"
    disabled = "disabled"
    deleted = "deleted"


class DeliveryStatus(enum.StrEnum):
    pending = "pending"
    succeeded = "succeeded"
    failed = "failed"


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        Index("ix_webhook_endpoints_merchant_created", "merchant_id", "created_at", "endpoint_id"),
    )

    endpoint_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.merchant_id"))
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    description: Mapped[str | None] = mapped_column(String(500))
    status: Mapped[EndpointStatus] = mapped_column(
        Enum(EndpointStatus, native_enum=False, length=16)
    )
    # Wrapped under the master key (context names the endpoint); never stored in the clear.
    secret_wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    previous_secret_wrapped: Mapped[bytes | None] = mapped_column(LargeBinary)
    previous_secret_until: Mapped[datetime | None]
    # The first failed attempt since the last success: 3 days of failures disable the endpoint.
    failing_since: Mapped[datetime | None]
    created_at: Mapped[datetime]
    deleted_at: Mapped[datetime | None]


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "endpoint_id"),
        Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at", "delivery_id"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_manual", "manual_at"),
    )

    delivery_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.endpoint_id"))
    merchant_id: Mapped[str] = mapped_column(String(40))
    event_id: Mapped[str] = mapped_column(ForeignKey("audit_events.event_id"))
    event_type: Mapped[str] = mapped_column(String(64))
    status: Mapped[DeliveryStatus] = mapped_column(
        Enum(DeliveryStatus, native_enum=False, length=16)
    )
    attempts: Mapped[int] = mapped_column(default=0)
    # Scheduled attempts made so far (manual retries are not on the schedule).
    schedule_step: Mapped[int] = mapped_column(default=0)
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(String(32))
    next_attempt_at: Mapped[datetime | None]
    # A manual retry asked for (POST …/retry): one attempt now, the schedule kept.
    manual_at: Mapped[datetime | None]
    # Who is attempting it now, and until when: no delivery is attempted by two at once, and
    # one whose process died is taken again once the lease ends.
    lease_owner: Mapped[str | None] = mapped_column(String(80))
    lease_until: Mapped[datetime | None]
    created_at: Mapped[datetime]
