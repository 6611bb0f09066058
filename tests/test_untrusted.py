"""untrusted.loads refuses exactly what its walk refuses, whether or not it walks a body."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from camvoice import untrusted
from camvoice.untrusted import MAX_DEPTH


def walked(text: bytes) -> Any:
    """The reference: parse, then always walk."""
    value = json.loads(text.decode("utf-8"))
    untrusted.check(value)
    return value


def nested(depth: int) -> bytes:
    return ("[" * depth + "]" * depth).encode()


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": "\\u0000"}',
        b'{"\\u0000": 1}',
        b'{"a": "\\ud800"}',
        b'{"\\uDFFF": "x"}',
        b'{"a": ["x", {"b": "\\udc00y"}]}',
        nested(MAX_DEPTH + 1),
        b'{"a": ' + nested(MAX_DEPTH) + b"}",
    ],
)
def test_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        walked(body)
    with pytest.raises(ValueError):
        untrusted.loads(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"directive": {"header": {"name": "x"}, "payload": {}}}',
        b'["\\ud83d\\ude00"]',  # a surrogate pair: one emoji
        b'{"a": "\\\\u0000"}',  # an escaped backslash, then the text u0000
        b'{"a": "[[[[{{{{"}',
        nested(MAX_DEPTH),
        '{"a": "caf\u00e9 \u2603"}'.encode(),
    ],
)
def test_accepted(body: bytes) -> None:
    assert untrusted.loads(body) == walked(body)


def test_text_given_as_str_is_walked() -> None:
    """A str may hold a lone surrogate without any escape (bytes decoded as UTF-8 cannot)."""
    with pytest.raises(ValueError):
        untrusted.loads('{"a": "\ud800"}')


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=80,
)


@given(JSON, st.booleans())
def test_same_verdict_as_the_walk(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    try:
        expected = walked(text)
    except ValueError:
        with pytest.raises(ValueError):
            untrusted.loads(text)
    else:
        assert untrusted.loads(text) == expected
