"""What the authorization server no longer needs: expired codes and tokens (camvoice/purge.py).

Kept: a refresh token that can still be used (neither superseded nor revoked), and for
REUSE_WATCH after it was superseded or revoked, so that presenting a rotated-out refresh token
is still recognised as reuse and revokes its grant. Grants (the links) are kept: they are few,
and the console and HomeGraph read when a link was made.
"""

from __future__ import annotations

from datetime import timedelta

from camvoice.purge import Purger
from oauth.models import AuthorizationCode, Token

# Codes and access tokens go an hour after they expire: after expiry nothing accepts them (a
# code replayed after its expiry is refused before replay detection), and the hour covers
# clocks that differ between instances.
EXPIRED_GRACE = timedelta(hours=1)
REUSE_WATCH = timedelta(days=30)


def add_rules(purger: Purger) -> None:
    """Add the OAuth tables' rules to the process's purger."""
    purger.add("oauth_codes", AuthorizationCode.code_hash,
               lambda now: AuthorizationCode.expires_at < now - EXPIRED_GRACE)  # fmt: skip
    purger.add("oauth_tokens.access", Token.id, lambda now: (
        (Token.kind == "access") & (Token.expires_at < now - EXPIRED_GRACE)))  # fmt: skip
    purger.add("oauth_tokens.refresh", Token.id, lambda now: (
        (Token.kind == "refresh")
        & ((Token.superseded_at < now - REUSE_WATCH) | (Token.revoked_at < now - REUSE_WATCH))
    ))  # fmt: skip
