"""A fake Login with Amazon token endpoint and Alexa event gateway on 127.0.0.1.

They speak Amazon's documented wire format and check what they receive: LWA the form fields
and client credentials; the gateway the bearer token and each event's required fields.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from tests.fake_http import JsonServer

CLIENT_ID = "amzn1.application-oa2-client.test"
CLIENT_SECRET = "amzn-client-secret-for-tests"
TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$")
CAUSES = {"APP_INTERACTION", "PHYSICAL_INTERACTION", "PERIODIC_POLL", "RULE_TRIGGER",
          "VOICE_INTERACTION"}  # fmt: skip


class FakeAmazon:
    def __init__(self) -> None:
        self.codes: set[str] = set()
        self.refresh_tokens: set[str] = set()
        self.access_tokens: set[str] = set()
        self.events: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.gateway_reply: tuple[int, str] | None = None  # force an error status and code
        # Answers the coming gateway calls get, one each, before the normal ones: (status,
        # response headers), e.g. (429, {"Retry-After": "30"}).
        self.gateway_faults: list[tuple[int, dict[str, str]]] = []
        # Called before the gateway answers: a test holds a delivery in flight with it.
        self.gateway_hold: Callable[[], None] = lambda: None
        self.lwa_calls: list[dict[str, str]] = []
        self.http = JsonServer(self.route)
        self.url = self.http.url

    def route(self, path: str, headers: Any, raw: bytes) -> tuple[Any, ...]:
        if path == "/auth/o2/token":
            return self.lwa(raw)
        if path == "/v3/events":
            return self.gateway(headers.get("Authorization", ""), raw)
        return 404, {}

    def new_code(self) -> str:
        code = "ANcode" + secrets.token_hex(8)
        self.codes.add(code)
        return code

    def lwa(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        self.lwa_calls.append(form)
        if (form.get("client_id"), form.get("client_secret")) != (CLIENT_ID, CLIENT_SECRET):
            return 401, {"error": "invalid_client"}
        grant = form.get("grant_type")
        if grant == "authorization_code" and form.get("code") in self.codes:
            self.codes.discard(form["code"])  # single use
        elif grant == "refresh_token" and form.get("refresh_token") in self.refresh_tokens:
            pass
        else:
            return 400, {"error": "invalid_grant", "error_description": "bad code or token"}
        access, refresh = "Atza|" + secrets.token_hex(12), "Atzr|" + secrets.token_hex(12)
        self.access_tokens.add(access)
        self.refresh_tokens.add(refresh)
        return 200, {"access_token": access, "refresh_token": refresh, "token_type": "bearer",
                     "expires_in": 3600}  # fmt: skip

    def expire_all_access_tokens(self) -> None:
        self.access_tokens.clear()

    def gateway(self, authorization: str, raw: bytes) -> tuple[Any, ...]:
        self.gateway_hold()  # server side: the caller waits, as on a slow gateway
        if self.gateway_faults:
            status, headers = self.gateway_faults.pop(0)
            code = "THROTTLING_EXCEPTION" if status == 429 else "INTERNAL_SERVICE_EXCEPTION"
            return status, {"payload": {"code": code, "description": "forced"}}, headers
        token = authorization.removeprefix("Bearer ")
        if token not in self.access_tokens:
            return 401, {"header": {}, "payload": {"code": "INVALID_ACCESS_TOKEN_EXCEPTION",
                                                   "description": "token invalid"}}  # fmt: skip
        if self.gateway_reply:
            status, code = self.gateway_reply
            return status, {"payload": {"code": code, "description": "forced by the test"}}
        message = json.loads(raw)
        problem = self.check(message, token)
        if problem:
            self.problems.append(problem)
            return 400, {"payload": {"code": "INVALID_REQUEST_EXCEPTION", "description": problem}}
        self.events.append(message)
        return 202, None

    def check(self, message: dict[str, Any], token: str) -> str | None:
        """The fields Amazon requires of each proactive event."""
        event = message.get("event", {})
        header = event.get("header", {})
        if header.get("payloadVersion") != "3" or not re.fullmatch(
            r"[A-Za-z0-9-]{1,127}", header.get("messageId", "")
        ):
            return "bad header"
        name = (header.get("namespace"), header.get("name"))
        payload = event.get("payload", {})
        if name in {("Alexa.Discovery", "AddOrUpdateReport"), ("Alexa.Discovery", "DeleteReport")}:
            if payload.get("scope") != {"type": "BearerToken", "token": token}:
                return "payload.scope must carry the bearer token"
            if not payload.get("endpoints") or not all(
                "endpointId" in e for e in payload["endpoints"]
            ):
                return "endpoints missing"
            if name[1] == "AddOrUpdateReport":
                for e in payload["endpoints"]:
                    if not all(
                        e.get(k)
                        for k in (
                            "manufacturerName",
                            "description",
                            "friendlyName",
                            "displayCategories",
                            "capabilities",
                        )
                    ):
                        return "endpoint fields missing"
            return None
        if name == ("Alexa", "ChangeReport"):
            endpoint = event.get("endpoint", {})
            if endpoint.get("scope") != {"type": "BearerToken", "token": token} or not endpoint.get(
                "endpointId"
            ):
                return "event.endpoint needs scope and endpointId"
            change = payload.get("change", {})
            if change.get("cause", {}).get("type") not in CAUSES or not change.get("properties"):
                return "bad change"
            for prop in change["properties"]:
                if not TIME.match(prop.get("timeOfSample", "")) or "value" not in prop:
                    return "bad property"
            if "context" not in message:
                return "context missing"
            return None
        return f"unexpected event {name}"

    def close(self) -> None:
        self.http.close()
