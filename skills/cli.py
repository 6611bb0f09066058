"""`camvoice alexa ...`: helpers for the custom skill's interaction model."""

from __future__ import annotations

import json

import click

from camvoice.commands import Context, fail, pass_ctx, require_migrated


@click.group()
def alexa() -> None:
    """Alexa custom skill."""


@alexa.command("model")
@click.option("--owner", required=True, help="Owner's email.")
@pass_ctx
def model(ctx: Context, owner: str) -> None:
    """Print CAMERA_NAME slot values (names and nicknames) for an owner's cameras."""
    from camvoice.accounts import find_account

    require_migrated(ctx)
    with ctx.db.session() as session:
        account = find_account(session, owner)
        if account is None:
            fail(f"no account {owner}")
        cameras = ctx.services.registry.owned_cameras(session, account.id)  # type: ignore[union-attr]
        values = [
            {"id": c.id, "name": {"value": c.name.lower(),
                                  "synonyms": [n.lower() for n in c.nicknames or []]}}
            for c in cameras
        ]  # fmt: skip
    click.echo(json.dumps({"name": "CAMERA_NAME", "values": values}, indent=2, ensure_ascii=False))
