"""webhook endpoints and deliveries (PROTOCOL §7), terminal health and the timer lease (§8)

Revision ID: 20261202_0007
Revises: 20261202_0006
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import viopay.db

revision = "20261202_0007"
down_revision = "20261202_0006"
branch_labels = None
depends_on = None


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def _at(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, viopay.db.UTCDateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("endpoint_id", sa.String(length=40), nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("event_types", sa.JSON(), nullable=True),
        sa.Column("description", sa.String(length=500), nullable=True),
        sa.Column(
            "status", _enum("endpointstatus", "enabled", "disabled", "deleted"), nullable=False
        ),
        sa.Column("secret_wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("previous_secret_wrapped", sa.LargeBinary(), nullable=True),
        _at("previous_secret_until"),
        _at("failing_since"),
        _at("created_at", nullable=False),
        _at("deleted_at"),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.merchant_id"],
            name=op.f("fk_webhook_endpoints_merchant_id_merchants"),
        ),
        sa.PrimaryKeyConstraint("endpoint_id", name=op.f("pk_webhook_endpoints")),
    )
    op.create_index(
        "ix_webhook_endpoints_merchant_created",
        "webhook_endpoints",
        ["merchant_id", "created_at", "endpoint_id"],
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("delivery_id", sa.String(length=40), nullable=False),
        sa.Column("endpoint_id", sa.String(length=40), nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column(
            "status", _enum("deliverystatus", "pending", "succeeded", "failed"), nullable=False
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("schedule_step", sa.Integer(), nullable=False),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=32), nullable=True),
        _at("next_attempt_at"),
        _at("manual_at"),
        sa.Column("lease_owner", sa.String(length=80), nullable=True),
        _at("lease_until"),
        _at("created_at", nullable=False),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.endpoint_id"],
            name=op.f("fk_webhook_deliveries_endpoint_id_webhook_endpoints"),
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["audit_events.event_id"],
            name=op.f("fk_webhook_deliveries_event_id_audit_events"),
        ),
        sa.PrimaryKeyConstraint("delivery_id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint("event_id", "endpoint_id", name=op.f("uq_webhook_deliveries_event_id")),
    )
    op.create_index(
        "ix_webhook_deliveries_endpoint_created",
        "webhook_deliveries",
        ["endpoint_id", "created_at", "delivery_id"],
    )
    op.create_index(
        "ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"]
    )
    op.create_index("ix_webhook_deliveries_manual", "webhook_deliveries", ["manual_at"])

    with op.batch_alter_table("devices") as batch:
        batch.add_column(
            sa.Column("online", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(_at("last_heartbeat_at"))
        batch.add_column(sa.Column("battery_pct", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("charging", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("network", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("signal_dbm", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("printer", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("pending_offline", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("uptime_s", sa.Integer(), nullable=True))
    op.create_index("ix_devices_online_heartbeat", "devices", ["online", "last_heartbeat_at"])
    leases = op.create_table(
        "timer_leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=80), nullable=True),
        _at("until"),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_timer_leases")),
    )
    op.bulk_insert(leases, [{"name": "fleet", "owner": None, "until": None}])


def downgrade() -> None:
    op.drop_table("timer_leases")
    op.drop_index("ix_devices_online_heartbeat", table_name="devices")
    with op.batch_alter_table("devices") as batch:
        for column in (
            "uptime_s",
            "pending_offline",
            "printer",
            "signal_dbm",
            "network",
            "charging",
            "battery_pct",
            "last_heartbeat_at",
            "online",
        ):
            batch.drop_column(column)
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
