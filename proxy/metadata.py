"""Bounds on request metadata: the `requesty` object and `X-Requesty-*` headers.

Metadata becomes analytics dimensions: every tag, `extra` key and header is a row of the
`usage_dim_hourly` rollup, and every value a key of its B-tree index. Unbounded, one
request could add thousands of rollup rows (a flush that holds up every tenant), or a
value the database refuses (a NUL byte, a lone surrogate, an index row over ~2,700 bytes),
so the record would be set aside and the charge for a served request missing from the
ledger. The bounds below are checked at the edge (400 naming the field) and sized so that
nothing within them can fail an insert or an index: the longest dimension value is 512
characters, at most 2,048 bytes of UTF-8, plus a name of at most 64 characters.

| field                         | bound                                                    |
| ----------------------------- | -------------------------------------------------------- |
| `requesty.tags`               | at most 64 tags, each at most 128 characters             |
| `requesty.extra`              | at most 32 keys; key 1-64 characters, value at most 512   |
| `requesty.user_id`, `trace_id`| at most 256 characters                                   |
| `X-Requesty-<Name>` headers   | at most 32; name at most 64 characters, value at most 512 |

Every string above must be printable: no control characters (U+0000-U+001F,
U+007F-U+009F) and no lone surrogates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Final

import msgspec

from .errors import InvalidRequest

MAX_TAGS: Final = 64
MAX_TAG_CHARS: Final = 128
MAX_EXTRA_KEYS: Final = 32
MAX_KEY_CHARS: Final = 64
MAX_VALUE_CHARS: Final = 512
MAX_ID_CHARS: Final = 256
MAX_HEADERS: Final = 32
# No C0/C1 control characters (NUL among them) and no lone surrogates (which no database
# encoding can store). `\Z`, not `$`: `$` also matches before a trailing newline.
PRINTABLE: Final = r"^[^\x00-\x1f\x7f-\x9f\ud800-\udfff]*\Z"
_PRINTABLE_RE: Final = re.compile(PRINTABLE)

Tag = Annotated[str, msgspec.Meta(max_length=MAX_TAG_CHARS, pattern=PRINTABLE)]
Tags = Annotated[list[Tag], msgspec.Meta(max_length=MAX_TAGS)]
ExtraKey = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_CHARS,
                                       pattern=PRINTABLE)]
ExtraValue = Annotated[str, msgspec.Meta(max_length=MAX_VALUE_CHARS, pattern=PRINTABLE)]
Extra = Annotated[dict[ExtraKey, ExtraValue], msgspec.Meta(max_length=MAX_EXTRA_KEYS)]
Identifier = Annotated[str, msgspec.Meta(max_length=MAX_ID_CHARS, pattern=PRINTABLE)]

_PREFIX: Final = "x-requesty-"
_PREFIX_LEN: Final = len(_PREFIX)


def printable(text: str) -> bool:
    return _PRINTABLE_RE.match(text) is not None


def requesty_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """`X-Requesty-<Name>` headers as {name (lower case): value}, within the bounds above."""
    # Most requests send none: one pass in C over the names settles that, where the loop
    # below would run Python code for every header (the admission journal reuses this scan).
    if _PREFIX not in "\n".join(headers.keys()).lower():
        return {}
    found: dict[str, str] = {}
    for name, value in headers.items():
        if len(name) > _PREFIX_LEN and name[:_PREFIX_LEN].lower() == _PREFIX:
            found[_header_name(name)] = _header_value(name, value)
    if len(found) > MAX_HEADERS:
        raise InvalidRequest(
            f"Too many X-Requesty-* headers: {len(found)}, at most {MAX_HEADERS}.",
            param="X-Requesty-*",
        )
    return found


def _header_name(name: str) -> str:
    short = name[_PREFIX_LEN:].lower()
    if len(short) > MAX_KEY_CHARS or not printable(short):
        raise InvalidRequest(
            f"Invalid header name `{name[:_PREFIX_LEN + 16]}...`: an X-Requesty-* header "
            f"name must be at most {MAX_KEY_CHARS} characters after the prefix.",
            param="X-Requesty-*",
        )
    return short


def _header_value(name: str, value: str) -> str:
    if len(value) > MAX_VALUE_CHARS:
        raise InvalidRequest(
            f"Invalid header `{name}`: its value must be at most {MAX_VALUE_CHARS} characters.",
            param=str(name),  # an aiohttp istr, which msgspec does not encode
        )
    if not printable(value):
        # aiohttp keeps bytes that are not UTF-8 as lone surrogates (surrogateescape).
        raise InvalidRequest(
            f"Invalid header `{name}`: its value must be UTF-8 text without control "
            "characters.",
            param=str(name),  # an aiohttp istr, which msgspec does not encode
        )
    return value
