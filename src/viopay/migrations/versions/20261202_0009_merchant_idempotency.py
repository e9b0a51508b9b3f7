"""merchant-scoped Idempotency-Keys (PROTOCOL §6 merchant refunds and cancels); users can be
disabled (``viopay user disable``)

A key of the merchant API is scoped to the merchant, not to a terminal: ``merchant_id`` is set
and ``terminal_id`` is null; a terminal's key keeps ``terminal_id`` and a null ``merchant_id``.

Revision ID: 20261202_0009
Revises: 20261202_0008
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import viopay.db

revision = "20261202_0009"
down_revision = "20261202_0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "users", sa.Column("disabled_at", viopay.db.UTCDateTime(timezone=True), nullable=True)
    )
    with op.batch_alter_table("idempotency_records") as batch:
        batch.add_column(sa.Column("merchant_id", sa.String(length=40), nullable=True))
        batch.alter_column("terminal_id", existing_type=sa.String(length=16), nullable=True)
        batch.create_foreign_key(
            op.f("fk_idempotency_records_merchant_id_merchants"),
            "merchants",
            ["merchant_id"],
            ["merchant_id"],
        )
        batch.create_unique_constraint(
            op.f("uq_idempotency_records_merchant_id_idempotency_key"),
            ["merchant_id", "idempotency_key"],
        )
        batch.create_check_constraint(
            op.f("ck_idempotency_records_one_scope"),
            "(terminal_id IS NULL) <> (merchant_id IS NULL)",
        )


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("disabled_at")
    op.execute("DELETE FROM idempotency_records WHERE terminal_id IS NULL")
    with op.batch_alter_table("idempotency_records") as batch:
        batch.drop_constraint(op.f("ck_idempotency_records_one_scope"), type_="check")
        batch.drop_constraint(
            op.f("uq_idempotency_records_merchant_id_idempotency_key"), type_="unique"
        )
        batch.drop_constraint(
            op.f("fk_idempotency_records_merchant_id_merchants"), type_="foreignkey"
        )
        batch.alter_column("terminal_id", existing_type=sa.String(length=16), nullable=False)
        batch.drop_column("merchant_id")
