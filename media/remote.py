"""RemoteWebRTC: the WebRTC contract served by media nodes, for web processes that run none.

`answer` goes to the camera's first node by rendezvous order (media/nodes.py); when that node
cannot be reached it goes to the next, so a node going down costs its cameras one failed
connection each, not their live view. A node that answered but refused (ticket, offer, busy,
camera unreachable) is final: another node would refuse alike, and trying it would split the
camera's viewers over two upstream pulls. A node slower than the deadline is final too:
it may have set the session up, and the assistant's own deadline (Alexa gives up after 8 s) is
closer than a second try. `connected` and `end` ask the nodes in the same order until one holds
the session.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import requests

from camvoice.webrtc import Answer, MediaUnavailable
from media.nodes import ERRORS, PREFIX, ranked, signed_headers

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 1.5
ANSWER_TIMEOUT = 6.0  # gathering candidates and opening the camera; Alexa allows 8 s in all
CALL_TIMEOUT = 3.0


class NodeDown(Exception):
    """This node could not be reached or did not speak the protocol: try the next."""


class RemoteWebRTC:
    """Forwards answer/connected/end to the media node that holds the camera."""

    def __init__(self, nodes: tuple[str, ...], secret: bytes) -> None:
        if not nodes:
            raise ValueError("RemoteWebRTC needs at least one media node")
        self.nodes = nodes
        self.secret = secret
        self.http = requests.Session()

    def answer(
        self, token: str, camera_id: str, offer_sdp: str, session_id: str | None = None
    ) -> Answer:
        body = {
            "token": token,
            "camera_id": camera_id,
            "offer_sdp": offer_sdp,
            "session_id": session_id,
        }
        for node in ranked(self.nodes, camera_id):
            try:
                data = self.call(node, "answer", body, ANSWER_TIMEOUT)
            except NodeDown as exc:
                log.warning("media node %s unavailable for an offer: %s", node, exc)
                continue
            try:
                return Answer(session_id=str(data["session_id"]), sdp=str(data["sdp"]))
            except (KeyError, TypeError):
                raise MediaUnavailable("the media node sent no answer") from None
        raise MediaUnavailable("no media node is reachable")

    def connected(self, session_id: str, camera_id: str) -> bool:
        return self.ask_holder("connected", {"session_id": session_id, "camera_id": camera_id})

    def end(self, session_id: str, camera_id: str, reason: str) -> bool:
        body = {"session_id": session_id, "camera_id": camera_id, "reason": reason}
        return self.ask_holder("end", body)

    def ask_holder(self, action: str, body: dict[str, Any]) -> bool:
        """True from the first node that holds the session; False when none does (or none
        answers: the session then ends on its node's own ICE and idle timeouts)."""
        for node in ranked(self.nodes, str(body["camera_id"])):
            try:
                if self.call(node, action, body, CALL_TIMEOUT).get("ok") is True:
                    return True
            except NodeDown as exc:
                log.warning("media node %s unavailable for %s: %s", node, action, exc)
            except MediaUnavailable as exc:  # its read timed out: it may hold it, or not
                log.warning("media node %s: %s on %s", node, exc.reason, action)
        return False

    def call(self, node: str, action: str, body: dict[str, Any], timeout: float) -> dict:
        """POST one signed call; the contract's errors are raised as the node raised them."""
        path = f"{PREFIX}/{action}"
        payload = json.dumps(body).encode()
        try:
            response = self.http.post(
                node + path,
                data=payload,
                headers=signed_headers(self.secret, path, payload),
                timeout=(CONNECT_TIMEOUT, timeout),
                allow_redirects=False,
            )
        except requests.ConnectionError as exc:  # refused, unreachable, connect timeout
            raise NodeDown(type(exc).__name__) from None
        except requests.ReadTimeout:
            raise MediaUnavailable("the media node did not answer in time") from None
        except requests.RequestException as exc:
            raise NodeDown(type(exc).__name__) from None
        try:
            data = response.json()
        except ValueError:
            raise NodeDown(f"HTTP {response.status_code} without JSON") from None
        if not isinstance(data, dict):
            raise NodeDown(f"HTTP {response.status_code} with unexpected JSON")
        if response.status_code == 200:
            return data
        kind = ERRORS.get(str(data.get("error")))
        if kind is None:  # 401 (our signature refused: a secret key mismatch), 404, 5xx
            raise NodeDown(f"HTTP {response.status_code} {data.get('error')}")
        raise kind[0](str(data.get("reason") or data.get("error")))
