"""Key management: /v1/api-keys (the keys issue fills these)."""

from __future__ import annotations

from aiohttp import web

from ..errors import ApiError


async def _not_yet(request: web.Request) -> web.Response:
    raise ApiError("Key management is not implemented yet.", status=501, code="not_implemented")


list_keys = create_key = get_key = delete_key = update_limit = _not_yet
