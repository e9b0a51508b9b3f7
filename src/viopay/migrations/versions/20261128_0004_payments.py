"""charges, refunds and idempotency records (PROTOCOL §4)

Revision ID: 20261128_0004
Revises: 20261128_0003
Create Date: 2026-11-28 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import viopay.db

revision = "20261128_0004"
down_revision = "20261128_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "charges",
        sa.Column("charge_id", sa.String(length=40), nullable=False),
        sa.Column("terminal_id", sa.String(length=16), nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("device_id", sa.String(length=12), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "approved",
                "declined",
                "partially_refunded",
                "refunded",
                "canceled",
                "reversed",
                name="chargestatus",
                native_enum=False,
                create_constraint=True,
                length=24,
            ),
            nullable=False,
        ),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("tip_amount", sa.Integer(), nullable=False),
        sa.Column("tax_amount", sa.Integer(), nullable=False),
        sa.Column("surcharge_amount", sa.Integer(), nullable=False),
        sa.Column("amount_refunded", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("reference", sa.String(length=64), nullable=True),
        sa.Column(
            "entry_mode",
            sa.Enum(
                "chip",
                "contactless",
                "swipe",
                "manual",
                name="entrymode",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("card_brand", sa.String(length=16), nullable=False),
        sa.Column("card_bin", sa.String(length=6), nullable=False),
        sa.Column("card_last4", sa.String(length=4), nullable=False),
        sa.Column("card_expiry", sa.String(length=4), nullable=False),
        sa.Column("authorization_code", sa.String(length=6), nullable=True),
        sa.Column("response_code", sa.String(length=2), nullable=False),
        sa.Column("decline_reason", sa.String(length=64), nullable=True),
        sa.Column("emv_response", sa.Text(), nullable=True),
        sa.Column("processor_reference", sa.String(length=64), nullable=True),
        sa.Column("request_nonce", sa.String(length=128), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("created_at", viopay.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", viopay.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "amount >= 1 AND amount <= 99999999", name=op.f("ck_charges_amount_range")
        ),
        sa.CheckConstraint(
            "amount_refunded >= 0 AND amount_refunded <= amount",
            name=op.f("ck_charges_refunded_within_amount"),
        ),
        sa.CheckConstraint(
            "surcharge_amount >= 0", name=op.f("ck_charges_surcharge_amount_nonnegative")
        ),
        sa.CheckConstraint("tax_amount >= 0", name=op.f("ck_charges_tax_amount_nonnegative")),
        sa.CheckConstraint(
            "tip_amount + tax_amount + surcharge_amount <= amount",
            name=op.f("ck_charges_parts_within_amount"),
        ),
        sa.CheckConstraint("tip_amount >= 0", name=op.f("ck_charges_tip_amount_nonnegative")),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.device_id"], name=op.f("fk_charges_device_id_devices")
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.merchant_id"],
            name=op.f("fk_charges_merchant_id_merchants"),
        ),
        sa.ForeignKeyConstraint(
            ["terminal_id"],
            ["terminals.terminal_id"],
            name=op.f("fk_charges_terminal_id_terminals"),
        ),
        sa.PrimaryKeyConstraint("charge_id", name=op.f("pk_charges")),
        sa.UniqueConstraint(
            "terminal_id", "request_nonce", name=op.f("uq_charges_terminal_id_request_nonce")
        ),
    )
    with op.batch_alter_table("charges", schema=None) as batch_op:
        batch_op.create_index(
            "ix_charges_merchant_created", ["merchant_id", "created_at", "charge_id"], unique=False
        )
        batch_op.create_index(
            "ix_charges_terminal_idempotency_key", ["terminal_id", "idempotency_key"], unique=False
        )

    op.create_table(
        "idempotency_records",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("terminal_id", sa.String(length=16), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=True),
        sa.Column(
            "state",
            sa.Enum(
                "in_progress",
                "done",
                "spent_by_reverse",
                name="idempotencystate",
                native_enum=False,
                create_constraint=True,
                length=24,
            ),
            nullable=False,
        ),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("charge_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", viopay.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", viopay.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["terminal_id"],
            ["terminals.terminal_id"],
            name=op.f("fk_idempotency_records_terminal_id_terminals"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_records")),
        sa.UniqueConstraint(
            "terminal_id",
            "idempotency_key",
            name=op.f("uq_idempotency_records_terminal_id_idempotency_key"),
        ),
    )
    op.create_table(
        "refunds",
        sa.Column("refund_id", sa.String(length=40), nullable=False),
        sa.Column("charge_id", sa.String(length=40), nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("terminal_id", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("processor_reference", sa.String(length=64), nullable=True),
        sa.Column("request_nonce", sa.String(length=128), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("created_at", viopay.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "amount >= 1 AND amount <= 99999999", name=op.f("ck_refunds_amount_range")
        ),
        sa.ForeignKeyConstraint(
            ["charge_id"], ["charges.charge_id"], name=op.f("fk_refunds_charge_id_charges")
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.merchant_id"],
            name=op.f("fk_refunds_merchant_id_merchants"),
        ),
        sa.ForeignKeyConstraint(
            ["terminal_id"],
            ["terminals.terminal_id"],
            name=op.f("fk_refunds_terminal_id_terminals"),
        ),
        sa.PrimaryKeyConstraint("refund_id", name=op.f("pk_refunds")),
        sa.UniqueConstraint(
            "terminal_id", "request_nonce", name=op.f("uq_refunds_terminal_id_request_nonce")
        ),
    )
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.create_index(
            "ix_refunds_charge_created", ["charge_id", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_index("ix_refunds_charge_created")

    op.drop_table("refunds")
    op.drop_table("idempotency_records")
    with op.batch_alter_table("charges", schema=None) as batch_op:
        batch_op.drop_index("ix_charges_terminal_idempotency_key")
        batch_op.drop_index("ix_charges_merchant_created")

    op.drop_table("charges")
