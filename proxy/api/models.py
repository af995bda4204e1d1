"""GET /v1/models and GET /v1/models/{id}: this region's catalog with prices."""

from __future__ import annotations

import msgspec
from aiohttp import web

from ..catalog import Model, ModelNotFound
from ..errors import ModelNotFoundError
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


def _entry(m: Model) -> ModelEntry:
    return ModelEntry(m.id, m.owned_by, m.context_window, m.input_price, m.output_price, m.kind)


async def list_models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    entries = [_entry(m) for m in gw.catalog.served()]
    return web.Response(body=msgspec.json.encode(ModelList(entries)),
                        content_type="application/json")


async def get_model(request: web.Request) -> web.Response:
    """One model of this region's catalog (the OpenAI SDKs' `models.retrieve`).

    Model ids carry a slash (`openai/gpt-4o`), so the route takes the rest of the path.
    """
    try:
        model = request.app[GATEWAY].catalog.get(request.match_info["model_id"])
    except ModelNotFound as e:
        raise ModelNotFoundError(e.message, param="model") from None
    return web.Response(body=msgspec.json.encode(_entry(model)), content_type="application/json")
