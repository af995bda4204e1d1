"""POST /v1/embeddings: a string or a list of them, routed like chat, metered the same way."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import msgspec
from aiohttp import web

from .. import tokens
from ..auth import PRINCIPAL
from ..catalog import Usage
from ..errors import ApiError
from ..gateway import GATEWAY
from ..ledger.record import UsageRecord
from ..wire import EmbeddingInput, RequestyMeta, decode_body, embedding_texts, field, required
from .common import CLIENT_REQUEST_ID, REQUEST_ID, echo_request_id, read_body, requesty_headers
from .inflight import INFLIGHT
from .relay import STATUS_CLIENT_GONE, usage_with_cost

_encode = msgspec.json.encode


async def embeddings(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    started = time.monotonic()
    arrived = datetime.now(UTC)
    fields = decode_body(await read_body(request, gw.settings.max_body_bytes))
    model_id: str = required(fields, "model", str)
    texts = embedding_texts(required(fields, "input", EmbeddingInput))
    meta: RequestyMeta = field(fields, "requesty", RequestyMeta | None) or RequestyMeta()
    fields.pop("requesty", None)
    model = gw.router.resolve(model_id, kind="embedding").models[0]
    estimate = sum(tokens.text_tokens(len(t)) for t in texts)
    admission = await gw.limits.admit(
        request[PRINCIPAL],
        request[REQUEST_ID],
        request.headers.get("Idempotency-Key"),
        model.worst_case_cost(estimate, 0),
        estimate,
    )
    flight = request.app[INFLIGHT]
    ticket = flight.begin(request, admission, model, model_id, estimate, False, meta, arrived)
    usage = Usage()
    status, code = 200, None
    began = time.monotonic()
    try:
        result = await gw.provider(model.provider).embed(model, fields)
        usage = result.usage or Usage()
        payload = result.payload
        payload["usage"] = usage_with_cost(payload.get("usage"), usage, model.cost(usage))
        return web.Response(
            body=_encode(payload),
            content_type="application/json",
            headers={"x-request-id": echo_request_id(request), "x-model": model.id,
                     "x-provider": model.provider},
        )
    except ApiError as e:
        status, code = e.status, e.code
        raise
    except (ConnectionResetError, asyncio.CancelledError):
        status, code = STATUS_CLIENT_GONE, "client_disconnected"
        raise
    finally:
        gw.limits.settle(admission, model.cost(usage), usage.total_tokens)
        record = UsageRecord(
            request_id=request[REQUEST_ID],
            ts=arrived,
            key_id=request[PRINCIPAL].key_id,
            model_requested=model_id,
            model=model.id,
            provider=model.provider,
            region=gw.region,
            status=status,
            error_code=code,
            prompt_tokens=usage.prompt_tokens,
            cost_nusd=model.cost(usage),
            latency_ms=(time.monotonic() - started) * 1000,
            user_id=meta.user_id,
            trace_id=meta.trace_id,
            tags=meta.tags,
            extra=meta.extra,
            headers=requesty_headers(request),
        client_request_id=request[CLIENT_REQUEST_ID],
        )
        gw.metrics.request_done("embeddings", record, time.monotonic() - began)
        gw.ledger.enqueue(record)
        flight.end(ticket)
