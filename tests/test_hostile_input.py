"""Issue 15, part 1: inputs that answered 500 get their protocol's error, on SQLite and PostgreSQL.

Each test sends one of the inputs an attacker found and checks the protocol's own error shape:
Google's 400 protocolError, Alexa's ErrorResponse INVALID_DIRECTIVE, OAuth's error JSON, a 4xx
with a message for the media and console paths.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.hostile_support import (
    SKILL_ID,
    World,
    alexa_error,
    as_json,
    build_world,
    deep_json,
    forged_ticket,
    google_protocol_error,
    oauth_error,
    ticket_of,
    ticket_paths,
)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    yield from build_world(request.param, request, tmp_path_factory.mktemp("hostile"))


def fulfill(world: World, *inputs: Any, body: bytes | None = None) -> requests.Response:
    data = body if body is not None else as_json({"requestId": "r1", "inputs": list(inputs)})
    return requests.post(world.url + "/google/fulfillment", data=data, timeout=30,
                         headers={"Authorization": f"Bearer {world.google_token}",
                                  "Content-Type": "application/json"})  # fmt: skip


def directive(world: World, header: dict[str, Any], payload: Any = None) -> dict[str, Any]:
    head = {"namespace": "Alexa", "name": "ReportState", "payloadVersion": "3",
            "messageId": str(uuid.uuid4()), **header}  # fmt: skip
    endpoint = {"scope": {"type": "BearerToken", "token": world.alexa_token},
                "endpointId": world.cameras["Front Door"]}  # fmt: skip
    return {"directive": {"header": head, "endpoint": endpoint, "payload": payload or {}}}


def custom_envelope(request: dict[str, Any]) -> dict[str, Any]:
    system = {"application": {"applicationId": SKILL_ID}, "user": {"userId": "u"},
              "device": {"deviceId": "d", "supportedInterfaces": {}}}  # fmt: skip
    return {"version": "1.0", "context": {"System": system},
            "session": {"new": True, "sessionId": "s", "application": system["application"],
                        "user": system["user"]},
            "request": {"requestId": "r", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                      time.gmtime()),
                        "locale": "en-US", **request}}  # fmt: skip


@pytest.mark.parametrize("intent", [[], {}, ["action.devices.SYNC"], 7, None, True])
def test_google_non_string_intent_is_protocol_error(world: World, intent: Any) -> None:
    google_protocol_error(fulfill(world, {"intent": intent}))


def test_deeply_nested_json_gets_each_protocols_error(world: World) -> None:
    deep = deep_json(3000)
    google_protocol_error(fulfill(world, body=deep))
    wrapped = b'{"requestId":"r1","inputs":[{"intent":"action.devices.QUERY","payload":' + deep
    google_protocol_error(fulfill(world, body=wrapped + b"}]}"))
    assert alexa_error(world.signed(deep)) == ("Alexa", "INVALID_DIRECTIVE")
    custom = requests.post(world.url + "/alexa/custom", data=deep, timeout=30)
    assert custom.status_code == 400 and custom.json()["error"] == "bad_request"
    media = requests.post(world.url + "/media/auth", data=deep, timeout=30,
                          headers={"Content-Type": "application/json"})  # fmt: skip
    assert media.status_code == 400


def test_nesting_below_the_recursion_limit_is_refused_too(world: World) -> None:
    """Deep enough to parse, deep enough to break whatever walks it later (echoes, the SDK)."""
    deep = json.loads(deep_json(200))
    header_echo = directive(world, {"correlationToken": deep})
    assert alexa_error(world.signed(as_json(header_echo))) == ("Alexa", "INVALID_DIRECTIVE")
    envelope = custom_envelope({"type": "LaunchRequest", "extra": deep})
    custom = requests.post(world.url + "/alexa/custom", json=envelope, timeout=30)
    assert custom.status_code == 400


def test_ticket_of_nested_brackets_is_refused(world: World) -> None:
    token = forged_ticket(b"[" * 1100)
    for path in ticket_paths(world, token):
        response = requests.get(world.url + path, timeout=30)
        assert response.status_code == 403, (path, response.status_code)
        assert response.json()["message"] == "stream ticket refused: tampered"
    body = {"action": "read", "path": f"cam/{world.cameras['Front Door']}", "password": token}
    assert requests.post(world.url + "/media/auth", json=body, timeout=30).status_code == 401


def test_huge_forwarder_timestamp_is_unauthorized(world: World) -> None:
    body = as_json(directive(world, {}))
    response = world.signed(body, timestamp="9" * 400)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/revoke", "/oauth/introspect"])
def test_basic_auth_that_is_not_utf8_is_invalid_client(world: World, path: str) -> None:
    response = requests.post(world.url + path, timeout=30,
                             data={"grant_type": "refresh_token", "refresh_token": "x",
                                   "token": "x"},
                             headers={"Authorization": "Basic //46/w=="})  # fmt: skip
    oauth_error(response, "invalid_client", 401)


def test_alexa_header_of_the_wrong_type_is_invalid_directive(world: World) -> None:
    for header in ({"namespace": ["Alexa"]}, {"name": ["ReportState"]}, {"name": {"a": 1}},
                   {"namespace": 3}, {"payloadVersion": ["3"]}):  # fmt: skip
        answer = world.signed(as_json(directive(world, header)))
        assert alexa_error(answer) == ("Alexa", "INVALID_DIRECTIVE"), header


def test_segment_of_a_camera_whose_relay_never_ran_is_not_found(world: World) -> None:
    token = ticket_of(world.hls_url)
    camera = world.cameras["Front Door"]
    response = requests.get(f"{world.url}/streams/{camera}/{token}/seg_00001.ts", timeout=30)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


# --- text the database cannot hold (PostgreSQL refuses NUL; VARCHAR bounds) -----------------


def sign_in(world: World, email: str) -> requests.Response:
    session = requests.Session()
    page = session.get(world.url + "/oauth/login", timeout=30)
    from tests.oauth_support import csrf_of

    return session.post(world.url + "/oauth/login", timeout=30, allow_redirects=False,
                        data={"csrf_token": csrf_of(page.text), "email": email,
                              "password": "wrong password"})  # fmt: skip


def test_sign_in_with_a_very_long_email_is_refused_not_failed(world: World) -> None:
    response = sign_in(world, "a" * 250 + "@example.com")
    assert response.status_code == 401
    assert "text/html" in response.headers["Content-Type"]


def test_sign_in_email_with_nul_is_bad_request(world: World) -> None:
    response = sign_in(world, "demo\x00@camvoice.example")
    assert response.status_code == 400
    assert "text/html" in response.headers["Content-Type"]


def test_google_device_id_with_nul_is_protocol_error(world: World) -> None:
    query = {"intent": "action.devices.QUERY", "payload": {"devices": [{"id": "cam\x00"}]}}
    google_protocol_error(fulfill(world, query))


def test_alexa_endpoint_id_with_nul_is_invalid_directive(world: World) -> None:
    message = directive(world, {})
    message["directive"]["endpoint"]["endpointId"] = "cam\x00"
    assert alexa_error(world.signed(as_json(message))) == ("Alexa", "INVALID_DIRECTIVE")


def test_console_paths_with_nul_are_bad_request(world: World) -> None:
    live = world.console.get(world.url + "/console/cameras/%00/live", timeout=30)
    assert live.status_code == 400
    unlink = world.console.post(world.url + "/console/links/%00/unlink", timeout=30,
                                data={"csrf_token": world.csrf}, allow_redirects=False)  # fmt: skip
    assert unlink.status_code == 400
    fix = world.console.post(world.url + f"/console/cameras/{world.cameras['Garage']}/fix",
                             data={"csrf_token": world.csrf, "fix": "encryption",
                                   "confirm": "yes", "code": "AB\x00CDE"},
                             timeout=30, allow_redirects=False)  # fmt: skip
    assert fix.status_code == 400


def test_oauth_form_with_nul_is_oauth_error(world: World) -> None:
    response = requests.post(world.url + "/oauth/token", timeout=30,
                             data={"grant_type": "authorization_code", "code": "x",
                                   "client_id": "c\x00", "client_secret": "s"})  # fmt: skip
    oauth_error(response, "invalid_request", 400)
    authorize = requests.get(world.url + "/oauth/authorize", timeout=30,
                             params={"client_id": "c\x00", "response_type": "code"})  # fmt: skip
    assert authorize.status_code == 400


# --- found by the fuzz suite (tests/test_fuzz.py) ---------------------------------------------


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/revoke", "/oauth/introspect"])
def test_basic_auth_with_nothing_after_it_is_invalid_client(world: World, path: str) -> None:
    response = requests.post(world.url + path, timeout=30, headers={"Authorization": "Basic "},
                             data={"grant_type": "refresh_token", "refresh_token": "x",
                                   "token": "x"})  # fmt: skip
    oauth_error(response, "invalid_client", 401)


@pytest.mark.parametrize("params", [{"response_type": "códe"}, {"response_type": 'co"de'},
                                    {"response_type": "x", "redirect_uri": "https://a/\\"}])  # fmt: skip
def test_authorize_parameters_authlib_cannot_quote_are_invalid_request(
    world: World, params: dict[str, str]
) -> None:
    query = {"client_id": world.google.client_id, "scope": "cameras", **params}
    response = world.console.get(world.url + "/oauth/authorize", params=query, timeout=30)
    assert response.status_code == 400
    assert "invalid_request" in response.text


@pytest.mark.parametrize(
    "request_part",
    [None, {"type": "IntentRequest"}, {"type": "IntentRequest", "intent": {}},
     {"type": "LaunchRequest", "timestamp": "not a time"}, {"type": "NoSuchRequest"}],
)  # fmt: skip
def test_custom_skill_envelopes_the_sdk_cannot_handle_are_bad_requests(
    world: World, request_part: Any
) -> None:
    envelope = custom_envelope({"type": "LaunchRequest"})
    envelope["request"] = None if request_part is None else {**envelope["request"], **request_part}
    response = requests.post(world.url + "/alexa/custom", json=envelope, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "bad_request"


def test_custom_skill_without_user_is_a_bad_request(world: World) -> None:
    envelope = custom_envelope({"type": "LaunchRequest"})
    del envelope["context"]["System"]["user"]
    response = requests.post(world.url + "/alexa/custom", json=envelope, timeout=30)
    assert response.status_code == 400


def test_custom_skill_unknown_intent_gets_the_fallback_prompt(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    envelope = custom_envelope({"type": "IntentRequest",
                                "intent": {"name": "OrderPizzaIntent", "slots": {}}})  # fmt: skip
    with caplog.at_level("WARNING"):
        response = requests.post(world.url + "/alexa/custom", json=envelope, timeout=30)
    assert response.status_code == 200
    assert "went wrong" not in response.json()["response"]["outputSpeech"]["ssml"]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
