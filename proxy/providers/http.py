"""The HTTP edge every network provider shares: POST, status check, errors mapped.

A provider's error answer is mapped once, by `faults.upstream_error` (429 stays a 429,
401/403 become 502 `provider_auth_failed`, 5xx 502, other 4xx pass with a redacted
message); transport failures are 502 and timeouts 504, with no internal address in any
message: a failed connection says why (refused, TLS: expired certificate, ...) in words
that name no host.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from ..errors import UpstreamError, UpstreamTimeout
from .faults import upstream_error
from .h1 import ConnectError, Endpoint, H1Error, Pool, Response, ResponseTooLarge
from .redact import PATTERNS_ONLY, Redactor

__all__ = ["post", "read_all", "transport_error", "upstream_error"]

# An error answer is read up to this much; a longer one is mapped from its status alone.
_MAX_ERROR_BODY: Final = 64 * 1024


def transport_error(provider: str, exc: BaseException) -> UpstreamError:
    """Connection failures, resets, oversized answers and timeouts, without addresses."""
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"Upstream provider `{provider}` timed out.")
    if isinstance(exc, ConnectError):
        why = f": {exc.reason}." if exc.reason else "."
        return UpstreamError(
            f"Could not connect to upstream provider `{provider}`{why}", reason=exc.kind
        )
    if isinstance(exc, ResponseTooLarge):
        return UpstreamError(
            f"The response of upstream provider `{provider}` is larger than the gateway "
            "accepts.",
            reason="too_large",
        )
    return UpstreamError(
        f"The connection to upstream provider `{provider}` failed "
        f"({type(exc).__name__}).",
        reason="reset",
    )


# (provider, status, error body, headers, redactor) -> the client's error: each protocol
# reads its own error bodies (`faults.upstream_error` OpenAI's and Anthropic's).
ErrorMapper = Callable[[str, int, bytes, Mapping[str, str], Redactor], UpstreamError]


async def post(
    pool: Pool | None,
    provider: str,
    endpoint: Endpoint,
    body: bytes,
    redact: Redactor = PATTERNS_ONLY,
    error: ErrorMapper = upstream_error,
) -> Response:
    """POST and check the status: a 200 response (body unread) or an `UpstreamError`
    (`error` maps a non-200 answer)."""
    assert pool is not None, "start() the provider first"
    try:
        resp = await pool.post(endpoint, body)
    except (TimeoutError, H1Error) as e:
        raise transport_error(provider, e) from None
    if resp.status != 200:
        try:
            err_body = await resp.read(_MAX_ERROR_BODY)
        except (TimeoutError, H1Error):
            err_body = b""
        finally:
            resp.release()
        raise error(provider, resp.status, err_body, resp.headers, redact)
    return resp


async def read_all(provider: str, resp: Response) -> bytes:
    """The whole body of a 200 response (up to the pool's `max_body_bytes`); the
    connection goes back to the pool."""
    try:
        return await resp.read()
    except (TimeoutError, H1Error) as e:
        raise transport_error(provider, e) from None
    finally:
        resp.release()
