"""homegraph stops

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 02:55:33.706064
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "homegraph_stops",
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account_id"),
    )


def downgrade() -> None:
    op.drop_table("homegraph_stops")
