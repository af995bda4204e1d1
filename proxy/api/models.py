"""GET /v1/models: this region's catalog with prices."""

from __future__ import annotations

import msgspec
from aiohttp import web

from ..gateway import GATEWAY


class ModelEntry(msgspec.Struct):
    id: str
    owned_by: str
    context_window: int
    input_price: float
    output_price: float
    type: str
    object: str = "model"
    created: int = 0


class ModelList(msgspec.Struct):
    data: list[ModelEntry]
    object: str = "list"


async def list_models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    entries = [
        ModelEntry(m.id, m.owned_by, m.context_window, m.input_price, m.output_price, m.kind)
        for m in gw.catalog.served()
    ]
    return web.Response(body=msgspec.json.encode(ModelList(entries)), content_type="application/json")
