"""`camvoice clients ...` as an operator runs it, checked against the live token endpoint."""

from __future__ import annotations

import json

import requests

from tests.conftest import LiveServer, run_cli
from tests.oauth_support import ALEXA_URIS, GOOGLE_URIS, Client, get_code, make_owner


def redeem(live: LiveServer, client: Client, code: str) -> requests.Response:
    return requests.post(
        live.url + "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": client.redirect_uri,
        },
        auth=(client.client_id, client.secret or ""),
        timeout=10,
    )


def test_add_list_rotate_remove(live: LiveServer, db, cli_env: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    make_owner(db, "owner@example.com")
    args = ["clients", "add", "--name", "Amazon Alexa", "--json"]
    for uri in ALEXA_URIS:
        args += ["--redirect-uri", uri]
    added = json.loads(run_cli(*args, env=cli_env).stdout)
    assert added["assistant"] == "alexa"
    assert added["redirect_uris"] == ALEXA_URIS
    client = Client(added["client_id"], added["client_secret"], ALEXA_URIS[0])

    listed = run_cli("clients", "list", "--json", env=cli_env).stdout
    assert client.secret not in listed
    assert json.loads(listed)[0]["client_id"] == client.client_id

    assert redeem(live, client, get_code(live, client, "owner@example.com")).status_code == 200
    listed = json.loads(run_cli("clients", "list", "--json", env=cli_env).stdout)
    assert listed[0]["active_links"] == 1

    rotated = json.loads(
        run_cli("clients", "rotate-secret", client.client_id, "--json", env=cli_env).stdout
    )
    old = redeem(live, client, get_code(live, client, "owner@example.com"))
    assert (old.status_code, old.json()["error"]) == (401, "invalid_client")
    client.secret = rotated["client_secret"]
    assert redeem(live, client, get_code(live, client, "owner@example.com")).status_code == 200

    run_cli("clients", "remove", client.client_id, env=cli_env)
    gone = redeem(live, client, "any-code")
    assert gone.json()["error"] == "invalid_client"


def test_google_guess_and_bad_uris_exit_2(cli_env: dict[str, str]) -> None:
    added = json.loads(
        run_cli(
            "clients",
            "add",
            "--name",
            "Google",
            "--redirect-uri",
            GOOGLE_URIS[0],
            "--json",
            env=cli_env,
        ).stdout
    )
    assert added["assistant"] == "google"
    # Hosts of neither assistant: audience `other`, said on stderr; --assistant chooses.
    other = run_cli("clients", "add", "--name", "Dash", "--redirect-uri",
                    "https://dash.example.com/cb", "--json", env=cli_env)  # fmt: skip
    assert json.loads(other.stdout)["assistant"] == "other"
    assert "refused by the Alexa and Google endpoints" in other.stderr
    lookalike = run_cli("clients", "add", "--name", "Lookalike", "--redirect-uri",
                        "https://evilamazon.com/cb", "--json", env=cli_env)  # fmt: skip
    assert json.loads(lookalike.stdout)["assistant"] == "other"
    chosen = run_cli("clients", "add", "--name", "Alexa EU", "--redirect-uri",
                     "https://eu.example.com/cb", "--assistant", "alexa", "--json", env=cli_env)  # fmt: skip
    assert json.loads(chosen.stdout)["assistant"] == "alexa"
    for uri in ("http://example.com/cb", "https://example.com/cb#frag", "not a url"):
        bad = run_cli(
            "clients", "add", "--name", "X", "--redirect-uri", uri, env=cli_env, check=False
        )
        assert bad.returncode == 2 and bad.stderr.startswith("error: redirect URI")
    missing = run_cli("clients", "rotate-secret", "nope", env=cli_env, check=False)
    assert (missing.returncode, missing.stderr.strip()) == (2, "error: no client nope")
