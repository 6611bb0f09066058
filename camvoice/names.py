"""Spoken camera names to cameras: forgiving articles, the word "camera", plurals, accents and
small mishearings, in every language camvoice speaks (camvoice/languages.py)."""

from __future__ import annotations

import re
import unicodedata
from difflib import SequenceMatcher

from camvoice.models import Camera

FILLER = {
    "the", "a", "an", "my", "our", "camera", "cameras", "cam", "cams", "please", "feed", "video",
    "la", "el", "los", "las", "mi", "mis", "de", "del", "camara", "camaras", "por", "favor",
    "der", "die", "das", "den", "dem", "im", "am", "kamera", "kameras", "meine", "bitte",
    "le", "les", "l", "du", "d", "des", "ma", "mes", "mon",
    "il", "lo", "gli", "della", "dello", "dei", "telecamera", "telecamere", "mia", "mie",
    "o", "os", "as", "da", "do", "dos", "minha", "minhas", "meu",
}  # fmt: skip
# Japanese has no spaces: "玄関のカメラ" is one word whose "のカメラ" (of the camera) is filler.
JA_FILLER = re.compile(r"(の?カメラ|の映像)$")
THRESHOLD = 0.78
TIE = 0.02


def normalize(text: str) -> str:
    """Lower case, no accents or punctuation, no filler words, singular."""
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    words = [JA_FILLER.sub("", w) for w in re.split(r"[\W_]+", text)]
    words = [w for w in words if w and w not in FILLER]
    return " ".join(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
                    for w in words)  # fmt: skip


def score(spoken: str, name: str) -> float:
    if not spoken or not name:
        return 0.0
    if spoken == name:
        return 1.0
    ratio = SequenceMatcher(None, spoken, name).ratio()
    # "garage" for "Garage Left": every spoken word is in the name, a strong (not exact) match.
    return max(ratio, 0.9) if set(spoken.split()) <= set(name.split()) else ratio


def resolve(spoken: str, cameras: list[Camera]) -> list[Camera]:
    """The best match; several when two are equally good; none when nothing is close."""
    wanted = normalize(spoken)
    scored = sorted(
        ((max(score(wanted, normalize(n)) for n in [c.name, *(c.nicknames or [])]), c)
         for c in cameras),
        key=lambda pair: -pair[0],
    )  # fmt: skip
    if not scored or scored[0][0] < THRESHOLD:
        return []
    best = scored[0][0]
    return [camera for value, camera in scored if value >= THRESHOLD and best - value <= TIE]
