"""Helpers every handler shares: request id, body reading, Requesty headers."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from .. import metadata
from ..errors import BodyTooLarge

REQUEST_ID: Final = web.RequestKey("request_id", str)  # the gateway's, unique
CLIENT_REQUEST_ID: Final = web.RequestKey[str | None]("client_request_id")  # X-Request-Id sent


def echo_request_id(request: web.Request) -> str:
    """The `x-request-id` a response carries: the client's own when it sent one."""
    return request[CLIENT_REQUEST_ID] or request[REQUEST_ID]


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"The request body is larger than the limit of {limit} bytes.")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"The request body is larger than the limit of {limit} bytes.") from None


def requesty_headers(request: web.Request) -> dict[str, str]:
    """`X-Requesty-<Name>` headers as analytics dimensions: {name (lower case): value}.
    Call it before routing: headers out of bounds (metadata.py) are a 400."""
    return metadata.requesty_headers(request.headers)
