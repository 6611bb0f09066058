"""Demo data: one account and five cameras that show every readiness case."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from camvoice.accounts import create_account, find_account
from camvoice.cameras import Registry
from camvoice.models import Account

DEMO_EMAIL = "demo@camvoice.example"
DEMO_PASSWORD = "camvoice-demo"  # noqa: S105 - published demo credential, printed at start

DEMO_CAMERAS: list[dict[str, Any]] = [
    {"name": "Front Door", "room": "Entrance", "nicknames": ["porch", "puerta principal",
     "Haustür", "porte d'entrée", "porta d'ingresso", "porta da frente", "玄関"]},
    {"name": "Garage", "room": "Garage", "image_encryption": True, "nicknames": ["garaje",
     "garagem", "ガレージ"]},
    {"name": "Nursery", "room": "Nursery", "audio": False, "nicknames": ["habitación del bebé",
     "Kinderzimmer", "chambre de bébé", "cameretta", "quarto do bebê", "子供部屋"]},
    {"name": "Backyard", "room": "Garden", "online": False, "nicknames": ["jardín", "Garten",
     "jardin", "giardino", "quintal", "庭"]},
    {"name": "Living Room", "room": "Living Room", "sleep_mode": True, "nicknames": ["salón",
     "Wohnzimmer", "salon", "soggiorno", "sala de estar", "リビング"]},
]  # fmt: skip


def seed(session: Session, registry: Registry) -> Account:
    """Create the demo account and cameras unless they exist (safe to run on every start)."""
    account = find_account(session, DEMO_EMAIL)
    if account is None:
        account = create_account(session, DEMO_EMAIL, DEMO_PASSWORD)
    have = {camera.name for camera in account.cameras}
    for index, spec in enumerate(DEMO_CAMERAS, start=1):
        if spec["name"] not in have:
            fields = {k: v for k, v in spec.items() if k != "name"}
            registry.add(
                session,
                account,
                spec["name"],
                actor="demo",
                source="demo",
                model="C6N demo",
                firmware="1.0.0",
                serial=f"DEMO{index:05d}",
                **fields,
            )
    session.flush()
    session.refresh(account)
    return account
