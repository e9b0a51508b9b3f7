"""master key checks: the check value of each master key the database is written with (§6)

Revision ID: 20261202_0011
Revises: 20261202_0007
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import viopay.db

revision = "20261202_0011"
down_revision = "20261202_0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "master_key_checks",
        sa.Column("check_value", sa.String(length=64), nullable=False),
        sa.Column("created_at", viopay.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("check_value", name=op.f("pk_master_key_checks")),
    )


def downgrade() -> None:
    op.drop_table("master_key_checks")
