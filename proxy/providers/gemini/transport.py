"""The HTTP edge of Google's APIs: POST, and a non-200 answer mapped from Google's error
body (`errors.google_error`) rather than OpenAI's; transport failures as every provider's."""

from __future__ import annotations

from typing import Final

from ..h1 import Endpoint, H1Error, Pool, Response
from ..http import transport_error
from ..redact import Redactor
from .errors import google_error

_MAX_ERROR_BODY: Final = 64 * 1024


async def post(
    pool: Pool | None, provider: str, endpoint: Endpoint, body: bytes, redact: Redactor
) -> Response:
    """A 200 response (body unread) or an `UpstreamError`."""
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
        raise google_error(provider, resp.status, err_body, resp.headers, redact)
    return resp
