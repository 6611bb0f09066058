"""accounts count changes to their cameras (registry_version), the key of cached discovery

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 18:45:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Every existing account starts at 0: no process has cached an answer under this column
    yet, so any starting value is as good as another."""
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("registry_version", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("registry_version")
