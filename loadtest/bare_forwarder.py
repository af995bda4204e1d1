"""The ceiling of this stack: an aiohttp + uvloop forwarder that does nothing but forward.

    python loadtest/bare_forwarder.py --port 8300 --upstream http://127.0.0.1:9200

Bytes in, bytes out: the request body is read and POSTed unchanged to the upstream at the
same path, through one `ClientSession` with pooled keep-alive connections; a plain answer is
read whole and returned, an event stream is piped chunk for chunk as it arrives. No JSON is
decoded, nothing is authenticated, metered or logged. Whatever the gateway costs over this is
the cost of its features; `bench.py` compares the two on the same upstream and core.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)
_FORWARDED = ("Content-Type", "Authorization")


async def forward(request: web.Request) -> web.StreamResponse:
    session = request.app[SESSION]
    body = await request.read()
    headers = {h: request.headers[h] for h in _FORWARDED if h in request.headers}
    async with session.request(request.method, request.app[UPSTREAM] + request.path_qs,
                               data=body, headers=headers) as upstream:
        ctype = upstream.headers.get("Content-Type", "application/octet-stream")
        if not ctype.startswith("text/event-stream"):
            return web.Response(body=await upstream.read(), status=upstream.status,
                                headers={"Content-Type": ctype})
        response = web.StreamResponse(status=upstream.status, headers={"Content-Type": ctype})
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def _session(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=30)
    app[SESSION] = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                         skip_auto_headers=("User-Agent",))
    yield
    await app[SESSION].close()


async def serve(host: str, port: int, upstream: str) -> None:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(_session)
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=2048).start()
    print(f"bare forwarder: http://{host}:{port} -> {upstream}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description="bare aiohttp forwarder (the stack's ceiling)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8300)
    p.add_argument("--upstream", required=True, help="base URL; the request path is appended")
    ns = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(ns.host, ns.port, ns.upstream))


if __name__ == "__main__":
    main()
