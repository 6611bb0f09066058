"""every client has an audience; simulator clients apart; camera facts may be unknown

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 07:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

AMAZON_HOSTS = ("amazon.com", "amazon.co.jp", "amazonalexa.com")
SIMULATOR_NAMES = ("camvoice simulator (Alexa)", "camvoice simulator (Google)")


def audience_of(uris: list[str]) -> str:
    """The same inference `clients add` makes; clients it cannot place become `other`."""
    from urllib.parse import urlsplit

    hosts = {urlsplit(u).hostname or "" for u in uris}

    def within(host: str, domains: tuple[str, ...]) -> bool:
        return any(host == d or host.endswith("." + d) for d in domains)

    if any(within(h, AMAZON_HOSTS) for h in hosts):
        return "alexa"
    if any(within(h, ("googleusercontent.com",)) for h in hosts):
        return "google"
    return "other"


def upgrade() -> None:
    clients = sa.table(
        "oauth_clients",
        sa.column("client_id", sa.String),
        sa.column("name", sa.String),
        sa.column("assistant", sa.String),
        sa.column("redirect_uris", sa.JSON),
        sa.column("simulator", sa.Boolean),
    )
    with op.batch_alter_table("oauth_clients", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("simulator", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    bind = op.get_bind()
    for client_id, uris in bind.execute(
        sa.select(clients.c.client_id, clients.c.redirect_uris).where(clients.c.assistant.is_(None))
    ).all():
        bind.execute(
            clients.update()
            .where(clients.c.client_id == client_id)
            .values(assistant=audience_of(list(uris or [])))
        )
    bind.execute(clients.update().where(clients.c.name.in_(SIMULATOR_NAMES)).values(simulator=True))
    with op.batch_alter_table("oauth_clients", schema=None) as batch_op:
        batch_op.alter_column("assistant", existing_type=sa.String(length=16), nullable=False)

    with op.batch_alter_table("cameras", schema=None) as batch_op:
        batch_op.alter_column("model", existing_type=sa.String(length=128), nullable=True)
        batch_op.alter_column("firmware", existing_type=sa.String(length=64), nullable=True)
        batch_op.add_column(sa.Column("width", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("height", sa.Integer(), nullable=True))
    cameras = sa.table(
        "cameras",
        sa.column("model", sa.String),
        sa.column("firmware", sa.String),
        sa.column("source", sa.String),
    )
    # The old defaults named no real camera: a real camera's unknown facts stay unknown.
    real = sa.or_(cameras.c.source.is_(None), cameras.c.source != "demo")
    bind.execute(
        cameras.update()
        .where(real, cameras.c.model == "camvoice virtual camera")
        .values(model=None)
    )
    bind.execute(cameras.update().where(real, cameras.c.firmware == "1.0.0").values(firmware=None))


def downgrade() -> None:
    with op.batch_alter_table("cameras", schema=None) as batch_op:
        batch_op.drop_column("height")
        batch_op.drop_column("width")
    with op.batch_alter_table("oauth_clients", schema=None) as batch_op:
        batch_op.alter_column("assistant", existing_type=sa.String(length=16), nullable=True)
        batch_op.drop_column("simulator")
