"""A fake of Google's OAuth token endpoint and HomeGraph on 127.0.0.1, speaking their wire format.

The token endpoint verifies the service account's signed JWT assertion (RS256, its claims, and
an `aud` of Google's own token URL, whatever token_uri says); HomeGraph checks the bearer token
it issued and records each request body.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt

from tests.fake_http import JsonServer

GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
SCOPE = "https://www.googleapis.com/auth/homegraph"
EMAIL = "camvoice-homegraph@camvoice-test.iam.gserviceaccount.com"


class FakeGoogle:
    def __init__(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()  # fmt: skip
        self.public_pem = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        self.access_token = secrets.token_urlsafe(16)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.token_requests = 0
        self.unknown_users: set[str] = set()
        # Answers the coming HomeGraph calls get, one each: (status, response headers).
        self.faults: list[tuple[int, dict[str, str]]] = []
        self.http = JsonServer(self.route)
        self.url = self.http.url

    def route(self, path: str, headers: Any, raw: bytes) -> tuple[Any, ...]:
        if path == "/token":
            self.token_requests += 1
            return self.token(raw)
        if headers.get("Authorization") != f"Bearer {self.access_token}":
            return 401, {"error": {"code": 401, "status": "UNAUTHENTICATED"}}
        if self.faults:
            status, extra = self.faults.pop(0)
            state = "RESOURCE_EXHAUSTED" if status == 429 else "INTERNAL"
            return status, {"error": {"code": status, "status": state}}, extra
        return self.homegraph(path, json.loads(raw))

    def key_file(self, folder: Path) -> Path:
        path = folder / "homegraph-key.json"
        path.write_text(json.dumps({
            "type": "service_account", "project_id": "camvoice-test", "private_key_id": "kid1",
            "private_key": self.private_pem, "client_email": EMAIL, "client_id": "1234567890",
            "token_uri": f"{self.url}/token",
        }))  # fmt: skip
        return path

    def token(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return 400, {"error": "unsupported_grant_type"}
        try:
            claims = jwt.decode(form["assertion"], certs=self.public_pem, audience=GOOGLE_TOKEN_URL)
        except (ValueError, KeyError) as exc:
            return 400, {"error": "invalid_grant", "error_description": str(exc)}
        if claims.get("iss") != EMAIL or claims.get("scope") != SCOPE:
            return 400, {"error": "invalid_grant", "error_description": "bad iss or scope"}
        if not claims["iat"] - 60 <= time.time() <= claims["exp"]:
            return 400, {"error": "invalid_grant", "error_description": "expired assertion"}
        return 200, {"access_token": self.access_token, "expires_in": 3600, "token_type": "Bearer"}

    def homegraph(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("agentUserId") in self.unknown_users:
            return 404, {"error": {"code": 404, "message": "Requested entity was not found.",
                                   "status": "NOT_FOUND"}}  # fmt: skip
        self.calls.append((path, body))
        if path == "/v1/devices:requestSync":
            return 200, {}
        if path == "/v1/devices:reportStateAndNotification":
            return 200, {"requestId": body.get("requestId")}
        return 404, {"error": {"code": 404}}

    def close(self) -> None:
        self.http.close()
