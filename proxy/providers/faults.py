"""A provider's error answer (an HTTP status, or an error event in a stream) as the error
the client sees.

The provider is not trusted with the client's answer:

- 429: 429 `rate_limit_error`, with the provider's Retry-After (or one of the gateway's),
  so that SDKs back off instead of retrying a server error;
- 401 and 403: the provider refused the *gateway's* credentials, which the client cannot
  fix: 502 `provider_auth_failed`, the provider's text left out;
- 5xx (and 529): 502;
- other 4xx (400, 404, 413, 422, ...): passed with the provider's status, type and
  message, the message redacted (`redact.Redactor`).

`upstream_status` keeps what the provider said, so routing decides retries and fallbacks
on the provider's status as before; only the client's answer changes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Final

import msgspec

from ..errors import PROVIDER_AUTH_FAILED, UpstreamError
from .redact import PATTERNS_ONLY, Redactor

_MAX_RETRY_AFTER_S: Final = 3600.0


class _ErrorInner(msgspec.Struct):
    message: str = ""
    type: str | None = None
    code: str | int | None = None


class _ErrorBody(msgspec.Struct):
    error: _ErrorInner | str | None = None


_decode_error = msgspec.json.Decoder(_ErrorBody).decode

# An error event carries a type, not a status: the status the same error would have had
# as an answer, so that routing and the client judge both alike (OpenAI's and Anthropic's
# words; anything else is a server error).
_TYPE_STATUS: Final = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "invalid_api_key": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "tokens": 429,
    "requests": 429,
    "server_error": 500,
    "api_error": 500,
    "overloaded_error": 529,
}


def _parse(body: bytes) -> tuple[str, str | None, str | int | None]:
    """Message, type and code of an OpenAI- or Anthropic-shaped error body (any may be missing)."""
    try:
        err = _decode_error(body).error
    except msgspec.MsgspecError:
        return "", None, None
    if isinstance(err, _ErrorInner):
        return err.message, err.type, err.code
    if isinstance(err, str):
        return err, None, None
    return "", None, None


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The provider's Retry-After in seconds: `retry-after-ms`, or `retry-after` as seconds
    or an HTTP date; None when absent or unreadable."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return _bounded(float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return _bounded(float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return _bounded(when.timestamp() - time.time())


def _bounded(seconds: float) -> float | None:
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_S)


def map_error(
    provider: str,
    status: int,
    message: str,
    type_: str | None,
    code: str | int | None,
    retry_after: float | None,
    redact: Redactor,
) -> UpstreamError:
    """The client's error for a provider's `status` and error fields."""
    reason = str(status)
    if status == 429:
        return UpstreamError(
            f"Upstream provider `{provider}` is rate limiting the gateway"
            + (f": {redact(message)}" if message else "."),
            status=429,
            upstream_status=429,
            code="upstream_rate_limited",
            type_="rate_limit_error",
            retry_after=retry_after,
            reason=reason,
        )
    if status in (401, 403):
        # The provider's text is about the gateway's key: nothing in it is the client's.
        return UpstreamError(
            f"Upstream provider `{provider}` refused the gateway's credentials "
            f"(status {status}); the gateway's operator must check its provider key.",
            status=502,
            upstream_status=status,
            code=PROVIDER_AUTH_FAILED,
            reason=reason,
        )
    text = redact(message) if message else f"status {status}"
    if 400 <= status < 500:
        return UpstreamError(
            f"Upstream provider `{provider}` refused the request: {text}",
            status=status,
            upstream_status=status,
            code=None if code is None else redact(str(code)),
            type_=type_ if type_ in _TYPE_STATUS else "invalid_request_error",
            retry_after=retry_after,
            reason=reason,
        )
    return UpstreamError(
        f"Upstream provider `{provider}` failed with status {status}: {text}",
        status=502,
        upstream_status=status,
        retry_after=retry_after,
        reason=reason,
    )


def upstream_error(
    provider: str,
    status: int,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    redact: Redactor = PATTERNS_ONLY,
) -> UpstreamError:
    """A provider's non-200 answer, its body read whole."""
    message, type_, code = _parse(body)
    return map_error(
        provider, status, message, type_, code,
        retry_after_s(headers) if headers else None, redact,
    )


def event_status(type_: str | None, code: str | int | None) -> int:
    """The HTTP status an error event stands for (a numeric code where one is given)."""
    if isinstance(code, int) and 400 <= code < 600:
        return code
    if isinstance(code, str):
        if code.isdigit() and 400 <= int(code) < 600:
            return int(code)
        if code in _TYPE_STATUS:
            return _TYPE_STATUS[code]
    return _TYPE_STATUS.get(type_ or "", 502)


def error_event(
    provider: str, data: bytes, redact: Redactor = PATTERNS_ONLY
) -> UpstreamError:
    """An error event in an OpenAI-shaped stream (`{"error": {...}}`)."""
    message, type_, code = _parse(data)
    status = event_status(type_, code)
    return map_error(provider, status, message, type_, code, None, redact)
