"""GET /v1/api-keys/{key_id}/usage and GET /v1/organization/usage (the ledger issue fills these)."""

from __future__ import annotations

from aiohttp import web

from ..errors import ApiError


async def key_usage(request: web.Request) -> web.Response:
    raise ApiError("Usage reports are not implemented yet.", status=501, code="not_implemented")


async def org_usage(request: web.Request) -> web.Response:
    raise ApiError("Usage reports are not implemented yet.", status=501, code="not_implemented")
