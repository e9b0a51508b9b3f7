"""payment intents (crash recovery, PROTOCOL §4.7) and the sandbox processor's ledger

Revision ID: 20261202_0006
Revises: 20261128_0005
Create Date: 2026-12-02 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import viopay.db

revision = "20261202_0006"
down_revision = "20261128_0005"
branch_labels = None
depends_on = None


def _enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def upgrade() -> None:
    op.create_table(
        "payment_intents",
        sa.Column("intent_id", sa.String(length=40), nullable=False),
        sa.Column(
            "kind", _enum("intentkind", "charge", "refund", "cancel", "reverse"), nullable=False
        ),
        sa.Column("state", _enum("intentstate", "pending", "done", "abandoned"), nullable=False),
        sa.Column("reference", sa.String(length=64), nullable=False),
        sa.Column("terminal_id", sa.String(length=128), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("charge_id", sa.String(length=40), nullable=False),
        sa.Column("refund_id", sa.String(length=40), nullable=True),
        sa.Column("amount", sa.Integer(), nullable=True),
        sa.Column("idempotency_record_id", sa.Integer(), nullable=True),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("outcome", sa.JSON(), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", viopay.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", viopay.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", viopay.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("intent_id", name=op.f("pk_payment_intents")),
        sa.UniqueConstraint("reference", name=op.f("uq_payment_intents_reference")),
    )
    op.create_index("ix_payment_intents_state_created", "payment_intents", ["state", "created_at"])
    op.create_index("ix_payment_intents_charge", "payment_intents", ["charge_id", "state"])
    op.create_table(
        "sandbox_ledger",
        sa.Column("reference", sa.String(length=64), nullable=False),
        sa.Column("operation", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=True),
        sa.Column("amount", sa.Integer(), nullable=True),
        sa.Column("approved", sa.Boolean(), nullable=False),
        sa.Column("response_code", sa.String(length=2), nullable=True),
        sa.Column("authorization_code", sa.String(length=6), nullable=True),
        sa.Column("decline_reason", sa.String(length=64), nullable=True),
        sa.Column("emv_response", sa.Text(), nullable=True),
        sa.Column("undone_by", sa.String(length=64), nullable=True),
        sa.Column("created_at", viopay.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("reference", name=op.f("pk_sandbox_ledger")),
    )


def downgrade() -> None:
    op.drop_table("sandbox_ledger")
    op.drop_index("ix_payment_intents_charge", table_name="payment_intents")
    op.drop_index("ix_payment_intents_state_created", table_name="payment_intents")
    op.drop_table("payment_intents")
