"""The HTTP edge every network provider shares: POST, status check, errors mapped.

Provider errors are mapped once, here: the provider's own 4xx passes through with its
message, 5xx become 502, transport failures 502 and timeouts 504, with no internal address
in any message.
"""

from __future__ import annotations

import msgspec

from ..errors import UpstreamError, UpstreamTimeout
from .h1 import ConnectError, Endpoint, H1Error, Pool, Response


class _ErrorInner(msgspec.Struct):
    message: str = ""
    type: str | None = None
    code: str | int | None = None


class _ErrorBody(msgspec.Struct):
    error: _ErrorInner | str | None = None


_decode_error = msgspec.json.Decoder(_ErrorBody).decode


def upstream_error(provider: str, status: int, body: bytes, retry_after: str | None) -> UpstreamError:
    """Map a provider's error answer: 4xx pass through with its message, 5xx become 502."""
    message, type_, code = "", None, None
    try:
        err = _decode_error(body).error
        if isinstance(err, _ErrorInner):
            message, type_ = err.message, err.type
            code = str(err.code) if err.code is not None else None
        elif isinstance(err, str):
            message = err
    except msgspec.MsgspecError:
        pass
    message = message or f"status {status}"
    ra: float | None = None
    if retry_after:
        try:
            ra = float(retry_after)
        except ValueError:
            ra = None
    if 400 <= status < 500:
        return UpstreamError(
            f"Upstream provider `{provider}` refused the request: {message}",
            status=status,
            upstream_status=status,
            code=code,
            type_=type_ or "invalid_request_error",
            retry_after=ra,
            reason=str(status),
        )
    return UpstreamError(
        f"Upstream provider `{provider}` failed with status {status}: {message}",
        status=502,
        upstream_status=status,
        retry_after=ra,
        reason=str(status),
    )


def transport_error(provider: str, exc: BaseException) -> UpstreamError:
    """Connection failures, resets and timeouts, without internal addresses."""
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"Upstream provider `{provider}` timed out.")
    if isinstance(exc, ConnectError):
        return UpstreamError(
            f"Could not connect to upstream provider `{provider}`.", reason="connect"
        )
    return UpstreamError(
        f"The connection to upstream provider `{provider}` failed "
        f"({type(exc).__name__}).",
        reason="reset",
    )


async def post(pool: Pool | None, provider: str, endpoint: Endpoint, body: bytes) -> Response:
    """POST and check the status: a 200 response (body unread) or an `UpstreamError`."""
    assert pool is not None, "start() the provider first"
    try:
        resp = await pool.post(endpoint, body)
    except (TimeoutError, H1Error) as e:
        raise transport_error(provider, e) from None
    if resp.status != 200:
        try:
            err_body = await resp.read()
        except (TimeoutError, H1Error):
            err_body = b""
        finally:
            resp.release()
        raise upstream_error(provider, resp.status, err_body, resp.headers.get("retry-after"))
    return resp


async def read_all(provider: str, resp: Response) -> bytes:
    """The whole body of a 200 response; the connection goes back to the pool."""
    try:
        return await resp.read()
    except (TimeoutError, H1Error) as e:
        raise transport_error(provider, e) from None
    finally:
        resp.release()
