"""Stream tickets: signature, binding, expiry reporting, key rotation."""

from __future__ import annotations

import time

import pytest

from camvoice.tickets import (
    Audience,
    Protocol,
    TicketError,
    TicketSigner,
    new_ticket,
    parse_keys,
)

K1 = {"k1": b"first-secret-key-0123456789"}


def ticket(**kw):  # type: ignore[no-untyped-def]
    args = {
        "camera_id": "cam_a",
        "account_id": "acc_a",
        "protocol": Protocol.HLS,
        "audience": Audience.GOOGLE,
        "ttl": 300,
        **kw,
    }
    return new_ticket(**args)


def test_round_trip_binds_camera_protocol_audience() -> None:
    signer = TicketSigner(K1)
    original = ticket(grant_id="grt_1")
    back = signer.verify(signer.sign(original), "cam_a", Protocol.HLS)
    assert back == original
    assert not back.expired


@pytest.mark.parametrize(
    ("camera", "protocol", "reason"),
    [("cam_b", Protocol.HLS, "wrong_camera"), ("cam_a", Protocol.RTSPS, "wrong_protocol")],
)
def test_wrong_camera_or_protocol(camera: str, protocol: Protocol, reason: str) -> None:
    signer = TicketSigner(K1)
    with pytest.raises(TicketError) as err:
        signer.verify(signer.sign(ticket()), camera, protocol)
    assert err.value.reason == reason


def test_tampering_is_detected() -> None:
    signer = TicketSigner(K1)
    token = signer.sign(ticket())
    payload, mac = token.split(".")
    forged = TicketSigner({"k1": b"attacker-guess-0123456789"}).sign(ticket(camera_id="cam_b"))
    for bad in (f"{payload}.{mac[:-2]}AA", forged, "garbage", "a.b.c", f"{payload}x.{mac}"):
        with pytest.raises(TicketError) as err:
            signer.verify(bad, "cam_a" if bad != forged else "cam_b", Protocol.HLS)
        assert err.value.reason == "tampered"
    # Odd input is refused like any forgery, never an exception of another kind (a 500).
    import base64
    import json

    listed = base64.urlsafe_b64encode(json.dumps({"k": ["k1"]}).encode()).decode().rstrip("=")
    for bad, reason in ((f"{payload}.é{mac[1:]}", "tampered"), (f"{listed}.{mac}", "unknown_key")):
        with pytest.raises(TicketError) as err:
            signer.verify(bad, "cam_a", Protocol.HLS)
        assert err.value.reason == reason


def test_expiry_is_reported() -> None:
    signer = TicketSigner(K1)
    old = ticket(ttl=-1)
    assert signer.verify(signer.sign(old), "cam_a", Protocol.HLS).expired
    assert old.expires_at < time.time()


def test_key_rotation() -> None:
    old_signer = TicketSigner(K1)
    issued = old_signer.sign(ticket())
    rotated = TicketSigner({"k2": b"second-secret-key-987654321", **K1})
    assert rotated.verify(issued, "cam_a", Protocol.HLS).camera_id == "cam_a"
    assert rotated.sign(ticket()).split(".")[0] != issued.split(".")[0]
    retired = TicketSigner({"k2": b"second-secret-key-987654321"})
    with pytest.raises(TicketError) as err:
        retired.verify(issued, "cam_a", Protocol.HLS)
    assert err.value.reason == "unknown_key"


def test_parse_keys() -> None:
    assert list(parse_keys("new:0123456789abcdefXYZ, old:fedcba9876543210abc", "s")) == [
        "new",
        "old",
    ]
    assert list(parse_keys("", "secret")) == ["k0"]
    with pytest.raises(ValueError):
        parse_keys("short:abc", "s")
