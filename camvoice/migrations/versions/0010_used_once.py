"""single-use keys: each signed Lambda forward accepted once, by every instance

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 09:20:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "used_once",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_used_once_expires_at", "used_once", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_used_once_expires_at", table_name="used_once")
    op.drop_table("used_once")
