"""stream views

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 02:36:17.975604
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stream_views",
        sa.Column("ticket_id", sa.String(length=32), nullable=False),
        sa.Column("camera_id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("audience", sa.String(length=16), nullable=False),
        sa.Column("protocol", sa.String(length=8), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("ticket_id"),
    )
    with op.batch_alter_table("stream_views", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stream_views_camera_id"), ["camera_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("stream_views", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stream_views_camera_id"))

    op.drop_table("stream_views")
