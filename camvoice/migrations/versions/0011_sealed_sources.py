"""cameras keep their source credentials sealed, apart from the source

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 09:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """A nullable column. Sealing needs the key, which a migration does not have: `camvoice db
    upgrade` seals existing rows' credentials right after migrating (camvoice.sealing)."""
    with op.batch_alter_table("cameras", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_secret", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cameras", schema=None) as batch_op:
        batch_op.drop_column("source_secret")
