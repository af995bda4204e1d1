"""What an idempotent request is named by: its header's value, and its body's digest."""

from __future__ import annotations

import hashlib
from typing import Any, Final

import msgspec
from multidict import CIMultiDictProxy, istr

from ..errors import InvalidRequest

HEADER: Final = "Idempotency-Key"
# For lookups: an istr is case-folded once, a str at every lookup. (Not for messages or
# `param`: msgspec does not encode an istr.)
HEADER_KEY: Final = istr(HEADER)
MAX_KEY_CHARS: Final = 255  # Stripe's bound; a UUID is 36

_decode: Final = msgspec.json.Decoder(Any).decode


def header_key(headers: CIMultiDictProxy[str]) -> str | None:
    """The request's idempotency key, None without the header; 400 for one that is empty,
    too long, not printable ASCII, or sent twice (which of two would it be?)."""
    value = headers.get(HEADER_KEY)
    if value is None:
        return None
    if (not 0 < len(value) <= MAX_KEY_CHARS or not value.isascii() or not value.isprintable()
            or len(headers.getall(HEADER_KEY)) > 1):
        raise InvalidRequest(
            f"The `{HEADER}` header must be one value of 1 to {MAX_KEY_CHARS} printable "
            "ASCII characters.",
            param=HEADER,
            code="invalid_idempotency_key",
        )
    return value


def body_digest(route: str, body: bytes) -> str:
    """The sha256 of the route and the body as canonical JSON (sorted keys, no spaces):
    a retry that re-serializes the same request is the same request. The body was
    decoded by the handler already, so it is JSON."""
    canonical = msgspec.json.encode(_decode(body), order="sorted")
    return hashlib.sha256(route.encode() + b"\0" + canonical).hexdigest()
