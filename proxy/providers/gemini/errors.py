"""Google's error body (`google.rpc.Status`) mapped through the shared `faults.map_error`.

`{"error": {"code": 429, "message": "...", "status": "RESOURCE_EXHAUSTED", "details":
[{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}]}}`: Google
sends no Retry-After header when it throttles; the wait is in `RetryInfo.retryDelay`.
The canonical `status` word becomes the client's error code on a passed-through 4xx.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

import msgspec

from ...errors import UpstreamError
from ..faults import map_error, retry_after_s
from ..redact import PATTERNS_ONLY, Redactor

_RETRY_INFO: Final = "type.googleapis.com/google.rpc.RetryInfo"
_MAX_RETRY_DELAY_S: Final = 3600.0
# The Gemini API answers a wrong or expired key with 400 INVALID_ARGUMENT, which would pass
# to the client as its own mistake; its `ErrorInfo.reason` says it is the key.
_KEY_REFUSED: Final = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED",
                                 "API_KEY_SERVICE_BLOCKED"})

# A stream's error event has no HTTP status of its own: the canonical code's.
_STATUS_HTTP: Final = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


class _Detail(msgspec.Struct, rename={"type": "@type", "retry_delay": "retryDelay"}):
    type: str = ""
    retry_delay: str | None = None  # RetryInfo
    reason: str | None = None  # ErrorInfo


class _Status(msgspec.Struct):
    code: int = 0
    message: str = ""
    status: str = ""
    details: list[_Detail] = []


class _Body(msgspec.Struct):
    error: _Status | None = None


_decode: Final = msgspec.json.Decoder(_Body).decode


def _parse(body: bytes) -> _Status | None:
    # A proxy in front of Google may answer in another shape (or a list of one status,
    # as some Google front ends do): whatever is not a Status is mapped from the HTTP code.
    if body.startswith(b"["):
        body = body[1:].rstrip().removesuffix(b"]")
    try:
        return _decode(body).error
    except msgspec.MsgspecError:
        return None


def retry_delay_s(status: _Status) -> float | None:
    """`RetryInfo.retryDelay` ("17s", "0.5s") in seconds, bounded; None when absent."""
    for detail in status.details:
        if detail.type == _RETRY_INFO and detail.retry_delay:
            try:
                seconds = float(detail.retry_delay.removesuffix("s"))
            except ValueError:
                return None
            if math.isnan(seconds):
                return None
            return min(max(seconds, 0.0), _MAX_RETRY_DELAY_S)
    return None


def google_error(
    provider: str,
    status: int,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    redact: Redactor = PATTERNS_ONLY,
) -> UpstreamError:
    """A non-200 answer from the Gemini API or Vertex AI."""
    parsed = _parse(body)
    retry_after = retry_after_s(headers) if headers else None
    if parsed is None:
        return map_error(provider, status, "", None, None, retry_after, redact)
    if retry_after is None:
        retry_after = retry_delay_s(parsed)
    if any(d.reason in _KEY_REFUSED for d in parsed.details):
        status = 401  # the gateway's key, not the client's request: see `_KEY_REFUSED`
    return map_error(provider, status, parsed.message, None, parsed.status or None,
                     retry_after, redact)


def error_event(provider: str, data: bytes, redact: Redactor = PATTERNS_ONLY) -> UpstreamError:
    """An error in a stream (`data: {"error": {...}}`): the status it names, or its code's."""
    parsed = _parse(data)
    if parsed is None:
        return map_error(provider, 502, "", None, None, None, redact)
    status = parsed.code if 400 <= parsed.code < 600 else _STATUS_HTTP.get(parsed.status, 502)
    return map_error(provider, status, parsed.message, None, parsed.status or None,
                     retry_delay_s(parsed), redact)
