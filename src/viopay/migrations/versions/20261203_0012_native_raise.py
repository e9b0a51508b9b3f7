"""PostgreSQL: ``viopay_raise(message)``, which aborts the statement that calls it

The charge's outcome is one autocommitted statement on PostgreSQL
(:mod:`viopay.payments.native`). When its last part finds that the approval cannot be stored
(the key was spent by a reverse-by-key meanwhile), it calls this function, so the whole
statement, and every row it wrote, is undone, as a rollback of a transaction would. SQLite has
no such statement and needs nothing.

Revision ID: 20261203_0012
Revises: 20261202_0009
Create Date: 2026-12-03 08:00:00
"""

from __future__ import annotations

from alembic import op

revision = "20261203_0012"
down_revision = "20261202_0009"
branch_labels = None
depends_on = None

# SQLSTATE class VP (user-defined): viopay.payments.native maps VP001 to its KeySpent.
CREATE = """
CREATE OR REPLACE FUNCTION viopay_raise(message text) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'VP001', MESSAGE = message;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS viopay_raise(text)")
