"""master keys (id, check value, location, state), stored derived keys, and a key set's
operator-requested rotation (issue 12)

Revision ID: 20261202_0008
Revises: 20261202_0011
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import viopay.db

revision = "20261202_0008"
down_revision = "20261202_0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # master_keys supersedes master_key_checks (20261202_0011): a check value per master key
    # plus its id, location and state, which an online rotation needs.
    op.drop_table("master_key_checks")
    op.create_table(
        "master_keys",
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("kcv", sa.String(length=6), nullable=False),
        sa.Column("location", sa.String(length=1024), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "active",
                "retiring",
                "destroyed",
                name="masterkeystate",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("created_at", viopay.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("activated_at", viopay.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("retiring_at", viopay.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("destroyed_at", viopay.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_master_keys")),
    )
    op.create_table(
        "derived_keys",
        sa.Column("purpose", sa.String(length=64), nullable=False),
        sa.Column("key_wrapped", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", viopay.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("purpose", name=op.f("pk_derived_keys")),
    )
    with op.batch_alter_table("key_sets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("rotate_requested_at", viopay.db.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    op.create_table(
        "master_key_checks",
        sa.Column("check_value", sa.String(length=64), nullable=False),
        sa.Column("created_at", viopay.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("check_value", name=op.f("pk_master_key_checks")),
    )
    with op.batch_alter_table("key_sets", schema=None) as batch_op:
        batch_op.drop_column("rotate_requested_at")
    op.drop_table("derived_keys")
    op.drop_table("master_keys")
