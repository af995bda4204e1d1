"""Errors in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`."""

from __future__ import annotations

from typing import Final

import msgspec

from ...errors import ApiError

# Anthropic's error type for each status it documents.
ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    known = ERROR_TYPES.get(status)
    if known is not None:
        return known
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(status: int, message: str) -> bytes:
    """The JSON body of an Anthropic error answer with this status."""
    return msgspec.json.encode(
        {"type": "error", "error": {"type": error_type(status), "message": message}}
    )


def render(err: ApiError) -> tuple[int, bytes]:
    """A gateway error as (status, Anthropic body): the status stays the gateway's."""
    return err.status, error_body(err.status, err.message)


def error_event(status: int, message: str) -> bytes:
    """The SSE `error` event Anthropic sends when a stream fails after its 200."""
    return b"event: error\ndata: " + error_body(status, message) + b"\n\n"
