"""Sign-in throttling (issue 15, section 6): guessing from one address stops that address, not the
owner; one account has a budget for all addresses together (NIST SP 800-63B 5.2.2: at most 100
failures); attempts refused while throttled count for nothing.

Client addresses come from X-Forwarded-For through one trusted proxy hop, as behind a load
balancer. The limits are small here so that each test makes a few dozen attempts.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from camvoice.db import Database
from camvoice.settings import Settings
from service.app import create_app
from tests.conftest import LiveServer
from tests.oauth_support import PASSWORD, csrf_of, make_owner

OWNER = "owner@example.com"
PAIR, ADDRESS, ACCOUNT = 3, 5, 8  # failures per (account, address), per address, per account


@pytest.fixture
def live(settings: Settings, db: Database) -> Iterator[LiveServer]:
    make_owner(db, OWNER)
    make_owner(db, "neighbour@example.com")
    limits = {
        "proxy_hops": 1,
        "login_max_failures_account_address": PAIR,
        "login_max_failures_ip": ADDRESS,
        "login_max_failures_account": ACCOUNT,
    }
    with LiveServer(create_app(settings.model_copy(update=limits), db)) as server:
        yield server


class Client:
    """A browser at one client address, with the sign-in form's CSRF token."""

    def __init__(self, live: LiveServer, address: str) -> None:
        self.live = live
        self.http = requests.Session()
        self.http.headers["X-Forwarded-For"] = address
        self.token = csrf_of(self.http.get(live.url + "/oauth/login", timeout=10).text)

    def sign_in(self, password: str, email: str = OWNER) -> int:
        """303 signed in, 401 wrong password, 429 throttled."""
        answer = self.http.post(
            self.live.url + "/oauth/login",
            data={"csrf_token": self.token, "email": email, "password": password, "next": ""},
            timeout=10,
            allow_redirects=False,
        )
        if answer.status_code == 429:
            assert 0 < int(answer.headers["Retry-After"]) <= 900
        return answer.status_code


def test_guessing_from_one_address_does_not_lock_the_owner_out(live: LiveServer) -> None:
    guesser = Client(live, "203.0.113.7")
    assert [guesser.sign_in("wrong password") for _ in range(PAIR)] == [401] * PAIR
    assert guesser.sign_in("wrong password") == 429
    assert guesser.sign_in(PASSWORD) == 429  # that address waits, even with the password
    assert Client(live, "198.51.100.2").sign_in(PASSWORD) == 303  # the owner, elsewhere


def test_attempts_made_while_throttled_count_for_nothing(live: LiveServer) -> None:
    guesser = Client(live, "203.0.113.7")
    assert [guesser.sign_in("wrong password") for _ in range(PAIR)] == [401] * PAIR
    assert {guesser.sign_in("wrong password") for _ in range(ACCOUNT + ADDRESS)} == {429}
    # The account's budget holds only the 3 counted failures: another address gets its 3 too,
    # and the owner still signs in.
    other = Client(live, "203.0.113.8")
    assert [other.sign_in("wrong password") for _ in range(PAIR)] == [401] * PAIR
    assert Client(live, "198.51.100.2").sign_in(PASSWORD) == 303
    # The address budget holds only its 3 too: 2 more failures (on another account), not 0.
    spare = ADDRESS - PAIR
    statuses = [guesser.sign_in("wrong", "neighbour@example.com") for _ in range(spare + 1)]
    assert statuses == [401] * spare + [429]


def test_the_account_budget_stops_guessing_spread_over_addresses(live: LiveServer) -> None:
    statuses = []
    for n in range(4):  # four addresses, each under its own limit
        client = Client(live, f"203.0.113.{10 + n}")
        statuses += [client.sign_in("wrong password") for _ in range(PAIR)]
    assert statuses == [401] * ACCOUNT + [429] * (4 * PAIR - ACCOUNT)
    assert Client(live, "203.0.113.99").sign_in("wrong password") == 429
    # One address may still sign in to another account: only this account's budget is spent.
    assert Client(live, "203.0.113.10").sign_in(PASSWORD, "neighbour@example.com") == 303
