"""Operating endpoints without auth: /healthz, /readyz, /metrics."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from ..gateway import GATEWAY

# The classic text format, which every Prometheus version parses.
METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 while the instance can serve without losing records or breaking limits, else 503."""
    ready, body = await request.app[GATEWAY].readiness.check()
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = await request.app[GATEWAY].metrics.scrape()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})
