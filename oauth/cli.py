"""`camvoice clients ...`: operators register Alexa and Google as OAuth clients."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from camvoice.commands import Context, emit, fail, pass_ctx, require_migrated

if TYPE_CHECKING:  # the models are imported by the command that needs them: `--help` is quick
    from oauth.models import OAuthClient

LOOPBACK = ("127.0.0.1", "localhost", "::1")
AUDIENCES = ("alexa", "google", "other")


def check_redirect_uri(uri: str) -> str:
    """https (or http on loopback, for development), absolute, no fragment (RFC 6749 3.1.2)."""
    parts = urlsplit(uri)
    if parts.fragment or not parts.netloc:
        fail(f"redirect URI must be absolute and have no fragment: {uri}")
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in LOOPBACK):
        fail(f"redirect URI must use https: {uri}")
    return uri


def guess_assistant(uris: list[str]) -> str:
    """Which assistant a client is, from where Amazon and Google send owners back; `other`
    (refused by both adapters) when the redirect hosts are neither's."""
    hosts = {urlsplit(u).hostname or "" for u in uris}
    if any(within(h, ("amazon.com", "amazon.co.jp", "amazonalexa.com")) for h in hosts):
        return "alexa"
    if any(within(h, ("googleusercontent.com",)) for h in hosts):
        return "google"
    return "other"


def within(host: str, domains: tuple[str, ...]) -> bool:
    """`host` is one of `domains` or a subdomain of one (evilamazon.com is neither)."""
    return any(host == d or host.endswith("." + d) for d in domains)


def shown(client: OAuthClient, links: int = 0) -> dict[str, Any]:
    return {
        "client_id": client.client_id,
        "name": client.name,
        "assistant": client.assistant,
        "public": client.public,
        "redirect_uris": client.redirect_uris,
        "active_links": links,
        "created_at": client.created_at,
    }


def secret_text(data: dict[str, Any]) -> str:
    lines = [f"client_id:     {data['client_id']}"]
    if data.get("client_secret"):
        lines.append(f"client_secret: {data['client_secret']}")
        lines.append("(the secret is shown once; it is stored only as a hash)")
    return "\n".join(lines)


@click.group()
def clients() -> None:
    """OAuth clients (Amazon Alexa, Google Home)."""


@clients.command("add")
@click.option("--name", required=True)
@click.option("--redirect-uri", "redirect_uris", multiple=True, required=True)
@click.option("--public", is_flag=True, help="No secret; PKCE (S256) required.")
@click.option(
    "--assistant",
    type=click.Choice(AUDIENCES),
    help="Whose tokens these are; by default inferred from the redirect URIs' hosts. Tokens of "
    "an `other` client are refused by the Alexa and Google endpoints.",
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def clients_add(
    ctx: Context,
    name: str,
    redirect_uris: tuple[str, ...],
    public: bool,
    assistant: str | None,
    as_json: bool,
) -> None:
    """Register a client; prints client_id and client_secret once."""
    from oauth.models import OAuthClient, digest

    require_migrated(ctx)
    uris = list(dict.fromkeys(check_redirect_uri(u) for u in redirect_uris))
    secret = None if public else secrets.token_urlsafe(32)
    audience = assistant or guess_assistant(uris)
    if audience == "other" and not assistant:
        click.echo(
            "note: the redirect URIs are neither Amazon's nor Google's, so this client's tokens "
            "are refused by the Alexa and Google endpoints (set --assistant to choose)",
            err=True,
        )
    client = OAuthClient(
        # Hex, not URL-safe base64: an id starting with "-" reads as an option in shells.
        client_id=secrets.token_hex(16),
        name=name,
        assistant=audience,
        secret_hash=digest(secret) if secret else None,
        redirect_uris=uris,
        public=public,
    )
    with ctx.db.session() as session:
        session.add(client)
    emit({**shown(client), "client_secret": secret}, as_json, secret_text)


@clients.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def clients_list(ctx: Context, as_json: bool) -> None:
    """List clients (never their secrets)."""
    from sqlalchemy import func, select

    from oauth.models import Grant, OAuthClient

    require_migrated(ctx)
    with ctx.db.session() as session:
        links = dict(
            session.execute(
                select(Grant.client_id, func.count())
                .where(Grant.revoked_at.is_(None))
                .group_by(Grant.client_id)
            ).all()
        )
        rows = [
            shown(c, links.get(c.client_id, 0))
            for c in session.scalars(
                select(OAuthClient)
                .where(OAuthClient.simulator.is_(False))  # the console's own, not an operator's
                .order_by(OAuthClient.created_at)
            )
        ]
    emit(
        rows,
        as_json,
        lambda d: "\n".join(
            f"{r['client_id']}\t{r['name']}\t{r['assistant']}\t{r['active_links']} links" for r in d
        ),
    )


@clients.command("remove")
@click.argument("client_id")
@pass_ctx
def clients_remove(ctx: Context, client_id: str) -> None:
    """Remove a client and, with it, every link and token it holds."""
    from oauth.models import OAuthClient

    require_migrated(ctx)
    with ctx.db.session() as session:
        client = session.get(OAuthClient, client_id)
        if client is None:
            fail(f"no client {client_id}")
        session.delete(client)
    click.echo(f"removed client {client_id}")


@clients.command("rotate-secret")
@click.argument("client_id")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def clients_rotate(ctx: Context, client_id: str, as_json: bool) -> None:
    """Replace a client's secret; the old one stops working at once."""
    from oauth.models import OAuthClient, digest

    require_migrated(ctx)
    secret = secrets.token_urlsafe(32)
    with ctx.db.session() as session:
        client = session.get(OAuthClient, client_id)
        if client is None:
            fail(f"no client {client_id}")
        if client.public:
            fail(f"client {client_id} is public and has no secret")
        client.secret_hash = digest(secret)
    emit({"client_id": client_id, "client_secret": secret}, as_json, secret_text)
