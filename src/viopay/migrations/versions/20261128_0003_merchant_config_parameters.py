"""merchant config and terminal parameters (PROTOCOL §3.8, §3.9, §6)

Revision ID: 20261128_0003
Revises: 20261128_0002
Create Date: 2026-11-28 04:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import viopay.db

revision = "20261128_0003"
down_revision = "20261128_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "merchant_configs",
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("config_version", sa.Integer(), nullable=False),
        sa.Column("tip", sa.JSON(), nullable=False),
        sa.Column("tax", sa.JSON(), nullable=False),
        sa.Column("surcharge", sa.JSON(), nullable=False),
        sa.Column("branding", sa.JSON(), nullable=False),
        sa.Column("emv_overrides", sa.JSON(), nullable=False),
        sa.Column("updated_at", viopay.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "config_version >= 1", name=op.f("ck_merchant_configs_config_version_positive")
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.merchant_id"],
            name=op.f("fk_merchant_configs_merchant_id_merchants"),
        ),
        sa.PrimaryKeyConstraint("merchant_id", name=op.f("pk_merchant_configs")),
    )
    op.create_table(
        "terminal_parameters",
        sa.Column("terminal_id", sa.String(length=32), nullable=False),
        sa.Column("gzip", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("updated_at", viopay.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("size = length(gzip)", name=op.f("ck_terminal_parameters_size_matches")),
        sa.PrimaryKeyConstraint("terminal_id", name=op.f("pk_terminal_parameters")),
    )
    # Merchants made before this revision get their config the first time it is read
    # (viopay.merchants.config.get_config), with the defaults of §6.


def downgrade() -> None:
    op.drop_table("terminal_parameters")
    op.drop_table("merchant_configs")
