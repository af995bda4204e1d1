"""Bedrock's errors (an HTTP answer, or an exception frame in a stream) as the client's.

AWS names the error, not the status alone: the `x-amzn-ErrorType` header (or `__type`
in the body) says `ThrottlingException`, the body `{"message": ...}` says why. Each
name is mapped to the status whose semantics it has, then through the shared mapping
(`providers.faults.map_error`): throttling, a model not ready and an exhausted quota are
a 429 with Retry-After; AccessDenied, an unrecognized key, a bad signature or an expired
token are the gateway's credentials (502 `provider_auth_failed`); a model's own failure
(424) and a model timeout (408) are server errors to retry elsewhere, not the client's
400s; validation and not-found errors pass with AWS's message, redacted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import msgspec

from ...errors import UpstreamError
from ..faults import map_error, retry_after_s
from ..redact import Redactor

_STATUS: Final = {
    "ThrottlingException": 429,
    "ModelNotReadyException": 429,
    "ServiceQuotaExceededException": 429,
    "AccessDeniedException": 403,
    "UnrecognizedClientException": 403,
    "InvalidSignatureException": 403,
    "ExpiredTokenException": 403,
    "IncompleteSignatureException": 403,
    "ValidationException": 400,
    "ResourceNotFoundException": 404,
    "ModelErrorException": 500,  # 424 from AWS: the model failed, not the request
    "ModelStreamErrorException": 500,
    "ModelTimeoutException": 504,  # 408 from AWS: the model took too long
    "InternalServerException": 500,
    "ServiceUnavailableException": 503,
}


class _Body(msgspec.Struct):
    message: str | None = None
    capitalized: str | None = msgspec.field(default=None, name="Message")  # some AWS errors
    type: str | None = msgspec.field(default=None, name="__type")


_decode_body = msgspec.json.Decoder(_Body).decode


def exception_name(raw: str | None) -> str:
    """`ThrottlingException:http://internal.amazon.com/...` or `com.amazon...#Throttling
    Exception` or a stream's `throttlingException` -> `ThrottlingException`."""
    if not raw:
        return ""
    name = raw.split(":", 1)[0].rsplit("#", 1)[-1].strip()
    return name[:1].upper() + name[1:]


def bedrock_error(
    provider: str,
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    redact: Redactor,
) -> UpstreamError:
    """A non-200 answer of Bedrock Runtime, its body read whole."""
    try:
        parsed = _decode_body(body)
    except msgspec.MsgspecError:
        parsed = _Body()
    name = exception_name(headers.get("x-amzn-errortype") or parsed.type)
    message = parsed.message or parsed.capitalized or ""
    return _mapped(provider, name, _STATUS.get(name, status), message,
                   retry_after_s(headers), redact)


def stream_exception(
    provider: str, exception_type: str | None, payload: bytes, redact: Redactor
) -> UpstreamError:
    """An exception frame in a Converse stream (`:message-type: exception`)."""
    try:
        parsed = _decode_body(payload)
    except msgspec.MsgspecError:
        parsed = _Body()
    name = exception_name(exception_type)
    return _mapped(provider, name, _STATUS.get(name, 500), parsed.message or "", None, redact)


def _mapped(
    provider: str,
    name: str,
    status: int,
    message: str,
    retry_after: float | None,
    redact: Redactor,
) -> UpstreamError:
    text = f"{name}: {message}" if name and message else (message or name)
    code = name if name and 400 <= status < 500 and status not in (401, 403, 429) else None
    return map_error(provider, status, text, None, code, retry_after, redact)
