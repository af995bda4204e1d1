"""Serving a kept answer to a repeat of its request: no admission, no upstream, no charge."""

from __future__ import annotations

from typing import Any, Final

import msgspec
from aiohttp import web

from ..api.common import echo_request_id
from ..api.relay import DONE
from ..cache import replay_chunks
from ..catalog import nano_to_usd
from ..compat.aiohttp_stream import EventStreamResponse
from ..providers.sse import frame
from .store import Answer

REPLAYED: Final = "Idempotent-Replayed"
_SSE_HEADERS: Final = {  # as `api.relay` sends a stream's
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
_decode_dict = msgspec.json.Decoder(dict[str, Any]).decode


async def replay_answer(
    request: web.Request, answer: Answer, include_usage: bool
) -> web.StreamResponse:
    """A JSON answer byte for byte; a streamed one as the response cache replays a stream
    (one content chunk, the finish, the usage chunk when asked for), its `usage.cost` what
    the first request cost, as that one said."""
    if answer.stream is None:
        return replay_json(request, answer)
    headers = _headers(request, answer)
    include_usage = include_usage and answer.usage_chunk
    chunks = replay_chunks(answer.stream, include_usage=include_usage)
    if include_usage:
        last = _decode_dict(chunks[-1])
        last["usage"]["cost"] = nano_to_usd(answer.cost_nusd)
        chunks[-1] = msgspec.json.encode(last)
    response = EventStreamResponse(headers={**_SSE_HEADERS, **headers})
    await response.prepare(request)
    await response.write_eof(frame(chunks) + DONE)
    return response


def replay_json(request: web.Request, answer: Answer) -> web.Response:
    """A JSON answer (all an endpoint that never streams keeps), byte for byte."""
    return web.Response(body=answer.body, content_type="application/json",
                        headers=_headers(request, answer))


def _headers(request: web.Request, answer: Answer) -> dict[str, str]:
    return {"x-request-id": echo_request_id(request), "x-model": answer.model,
            "x-provider": answer.provider, REPLAYED: "true"}
