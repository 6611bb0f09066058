"""ezviz links

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 18:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ezviz_links",
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("app_key", sa.String(length=64), nullable=False),
        sa.Column("app_secret", sa.Text(), nullable=False),
        sa.Column("access_token", sa.Text(), nullable=True),
        sa.Column("token_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("area_domain", sa.String(length=255), nullable=True),
        sa.Column("next_sync_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_sync_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("account_id"),
    )
    op.create_index("ix_ezviz_links_next_sync_at", "ezviz_links", ["next_sync_at"])


def downgrade() -> None:
    op.drop_index("ix_ezviz_links_next_sync_at", table_name="ezviz_links")
    op.drop_table("ezviz_links")
