"""Offers as devices send them, made into what aiortc can answer, and its answer made whole again.

aiortc builds a media section's codecs from its rtpmap lines only, and fails the whole offer when
one section has no codec in common. Real offers differ: Alexa's lists the static payload types 0
and 8 on its audio m-line without rtpmap lines (RFC 3551 defines them, so rtpmaps are optional);
a device may offer audio without Opus, or media camvoice does not send. So before aiortc sees an
offer, the static payload types get their rtpmap lines, and the sections camvoice cannot serve
(audio without Opus, a second video or audio, unknown kinds) are taken out and their mids
dropped from the BUNDLE group. After aiortc answered, each one taken out is put back at its
place with port 0 (RFC 3264's rejection), so the answer's m-lines match the offer's one to one.
Video without H.264 cannot be served at all: OfferRefused (camvoice passes the camera's H.264
through and does not transcode to VP8).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from camvoice.webrtc import OfferRefused

MAX_OFFER = 64 * 1024  # a real offer is a few kB; anything larger is not parsed
STATIC_RTPMAP = {0: "PCMU/8000", 8: "PCMA/8000", 9: "G722/8000"}
MLINE = re.compile(r"^m=(\w+) (\d+)(?:/\d+)? ([\w/]+)((?: \S+)+)$")


@dataclass
class Section:
    """One m= section of the offer, as lines."""

    kind: str
    proto: str
    formats: list[str]
    lines: list[str]
    mid: str | None = None
    served: bool = True


@dataclass
class Prepared:
    """The offer aiortc is given, and what the answer must get back."""

    sdp: str
    rejected: list[tuple[int, Section]] = field(default_factory=list)  # (m-line index, section)
    kinds: frozenset[str] = frozenset()  # the media served: "video", and "audio" if offered so


def _sections(sdp: str) -> tuple[list[str], list[Section]]:
    lines = [line.rstrip("\r") for line in sdp.replace("\r\n", "\n").split("\n") if line.strip()]
    if not lines or lines[0] != "v=0":
        raise OfferRefused("not an SDP offer")
    session: list[str] = []
    sections: list[Section] = []
    for line in lines:
        if len(line) < 2 or line[1] != "=":
            raise OfferRefused("not an SDP offer")
        if line.startswith("m="):
            match = MLINE.match(line)
            if match is None:
                raise OfferRefused("an m-line could not be read")
            sections.append(Section(match[1], match[3], match[4].split(), [line]))
        elif sections:
            sections[-1].lines.append(line)
            if line.startswith("a=mid:"):
                sections[-1].mid = line[6:].strip()
        else:
            session.append(line)
    if not sections:
        raise OfferRefused("the offer has no media")
    return session, sections


def _codecs(section: Section) -> dict[str, str]:
    """Payload type -> encoding name (upper case), static ones included."""
    found = {}
    for line in section.lines:
        if line.startswith("a=rtpmap:"):
            pt, _, desc = line[9:].partition(" ")
            found[pt] = desc.split("/")[0].upper()
    return found


def prepare(offer: str) -> Prepared:
    """The offer aiortc can answer, and the sections to answer rejected. Raises OfferRefused."""
    if len(offer) > MAX_OFFER:
        raise OfferRefused("the offer is too large")
    session, sections = _sections(offer)
    seen: set[str] = set()
    for section in sections:
        if section.kind in ("audio", "video"):
            if not all(fmt.isdigit() and int(fmt) < 128 for fmt in section.formats):
                raise OfferRefused("an m-line has bad payload types")
            mapped = _codecs(section)
            for fmt in section.formats:
                if fmt not in mapped and int(fmt) in STATIC_RTPMAP:
                    section.lines.append(f"a=rtpmap:{fmt} {STATIC_RTPMAP[int(fmt)]}")
                    mapped[fmt] = STATIC_RTPMAP[int(fmt)].split("/")[0]
            wanted = "H264" if section.kind == "video" else "OPUS"
            section.served = section.kind not in seen and wanted in mapped.values()
            if section.served:
                seen.add(section.kind)
        else:
            section.served = section.kind == "application"  # a data channel: aiortc does SCTP
    if "video" not in seen:
        raise OfferRefused("no H.264 video offered")
    rejected = [(i, s) for i, s in enumerate(sections) if not s.served]
    dropped = {s.mid for _, s in rejected if s.mid}
    kept_session = []
    for line in session:
        if line.startswith("a=group:BUNDLE") and dropped:
            mids = [m for m in line.split()[1:] if m not in dropped]
            line = " ".join(["a=group:BUNDLE", *mids])
        kept_session.append(line)
    served = [line for s in sections if s.served for line in s.lines]
    return Prepared("\r\n".join([*kept_session, *served]) + "\r\n", rejected, frozenset(seen))


def complete(answer: str, prepared: Prepared) -> str:
    """aiortc's answer with every rejected section back at its place (port 0)."""
    if not prepared.rejected:
        return answer
    lines = [line for line in answer.replace("\r\n", "\n").split("\n") if line]
    session = []
    media: list[list[str]] = []
    for line in lines:
        if line.startswith("m="):
            media.append([line])
        elif media:
            media[-1].append(line)
        else:
            session.append(line)
    for index, section in prepared.rejected:
        block = [f"m={section.kind} 0 {section.proto} {section.formats[0]}", "c=IN IP4 0.0.0.0"]
        if section.mid is not None:
            block.append(f"a=mid:{section.mid}")
        block.append("a=inactive")
        media.insert(index, block)
    return "\r\n".join([*session, *(line for block in media for line in block)]) + "\r\n"
