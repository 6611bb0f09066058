"""server-side sign-in sessions, accounts that can be disabled, views that name their session

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 09:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Sessions signed in before this revision lived in Flask's signed cookie: they are not in
    the new table, so their owners sign in again (nothing else could end them)."""
    op.create_table(
        "signin_sessions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("signin_sessions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_signin_sessions_account_id"), ["account_id"], unique=False
        )
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("stream_views", schema=None) as batch_op:
        batch_op.add_column(sa.Column("session_ref", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("stream_views", schema=None) as batch_op:
        batch_op.drop_column("session_ref")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("disabled_at")
    with op.batch_alter_table("signin_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_signin_sessions_account_id"))
    op.drop_table("signin_sessions")
