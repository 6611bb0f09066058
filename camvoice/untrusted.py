"""Text and JSON from the outside, checked once before anything walks or stores it.

Every adapter reads request JSON through `loads` (the app's JSON provider calls it), so a hostile
body gets each protocol's own "bad request" instead of a crash further in:
- nesting deeper than any message we accept (Python's parser raises RecursionError near 1,000
  levels, and shallower nesting still breaks code that walks it again, such as a reply that
  echoes a header), refused at MAX_DEPTH;
- strings the database cannot store: PostgreSQL refuses NUL in text, and a lone UTF-16
  surrogate (JSON "\\ud800") cannot be encoded for either database. Such text is never a valid
  identifier, name or token here, so it is refused at the door, alike on SQLite and PostgreSQL,
  rather than failing halfway through a transaction.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Alexa and Google messages nest about 10 levels deep; 64 leaves room and stays far from the
# interpreter's recursion limit wherever the value is walked later.
MAX_DEPTH = 64
# The only JSON that can decode to NUL or to a UTF-16 surrogate: the escapes \u0000 and
# \uD800-\uDFFF (the parser refuses raw control characters, and decoding UTF-8 never yields a
# surrogate). A surrogate pair (an emoji) matches too and is walked: the match is only a hint.
SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def storable(text: str) -> bool:
    """Whether text can be stored and compared by both databases: no NUL, valid Unicode."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


def loads(data: str | bytes) -> Any:
    """`json.loads` for request bodies: ValueError for anything but storable UTF-8 JSON no
    deeper than MAX_DEPTH.

    The parsed value is walked (`check`) only when its text could hold what the walk refuses:
    more than MAX_DEPTH brackets, or an escape that may decode to NUL or a surrogate. A
    directive's body has neither, and skipping the walk halves what reading it costs."""
    decoded = isinstance(data, bytes | bytearray)
    try:
        text = data.decode("utf-8") if decoded else data
        value = json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if (
        not decoded  # text given as str may hold surrogates without any escape
        or text.count("[") + text.count("{") > MAX_DEPTH
        or SUSPECT_ESCAPE.search(text)
    ):
        check(value)
    return value


def check(value: Any) -> None:
    """Walk a parsed value without recursion; ValueError on depth or unstorable strings."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not storable(item):
                raise ValueError("JSON string with NUL or invalid Unicode")
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise ValueError(f"JSON nested deeper than {MAX_DEPTH}")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
