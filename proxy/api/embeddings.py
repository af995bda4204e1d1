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
from ..idempotency import replay_json
from ..ledger.record import UsageRecord
from ..wire import (
    OPTIONAL_META,
    EmbeddingInput,
    RequestyMeta,
    decode_body,
    embedding_texts,
    field,
    required,
)
from .common import CLIENT_REQUEST_ID, REQUEST_ID, echo_request_id, read_body, requesty_headers
from .inflight import INFLIGHT
from .relay import STATUS_CLIENT_GONE, usage_with_cost

_encode = msgspec.json.encode


async def embeddings(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    started = time.monotonic()
    arrived = datetime.now(UTC)
    body = await read_body(request, gw.settings.max_body_bytes)
    fields = decode_body(body)
    model_id: str = required(fields, "model", str)
    texts = embedding_texts(required(fields, "input", EmbeddingInput))
    meta: RequestyMeta = field(fields, "requesty", OPTIONAL_META) or RequestyMeta()
    headers = requesty_headers(request)  # bounded at the edge: a 400 before routing
    fields.pop("requesty", None)
    model = gw.router.resolve(model_id, kind="embedding").models[0]
    estimate = sum(tokens.text_tokens(len(t)) for t in texts)
    once = await gw.idempotency.begin(request, request[PRINCIPAL].key_id, "embeddings", body)
    if once is not None and once.replay is not None:  # as in chat.py: never admitted again
        return replay_json(request, once.replay)
    try:
        admission = await gw.limits.admit(
            request[PRINCIPAL],
            request[REQUEST_ID],
            model.worst_case_cost(estimate, 0),
            estimate,
        )
    except BaseException:
        if once is not None:
            await once.close()
        raise
    flight = request.app[INFLIGHT]
    ticket = flight.begin(request, admission, model, model_id, estimate, False, meta, arrived,
                          "embeddings", request[REQUEST_ID], request[CLIENT_REQUEST_ID], headers)
    usage = Usage()
    status, code = 200, None
    began = time.monotonic()
    try:
        result = await gw.provider(model.provider).embed(model, fields)
        usage = result.usage or Usage()
        if result.usage is None or not model.plausible(usage, None, len(texts)):
            # Unreported or untrue (negative, past the window): estimated, never 0 or negative.
            usage = Usage(prompt_tokens=estimate, estimated=True)
        payload = result.payload
        payload["usage"] = usage_with_cost(payload.get("usage"), usage, model.cost(usage))
        response = web.Response(
            body=_encode(payload),
            content_type="application/json",
            headers={"x-request-id": echo_request_id(request), "x-model": model.id,
                     "x-provider": model.provider},
        )
        if once is not None:
            await once.keep_json(response, model)
        return response
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
            estimated=usage.estimated,
            latency_ms=(time.monotonic() - started) * 1000,
            user_id=meta.user_id,
            trace_id=meta.trace_id,
            tags=meta.tags,
            extra=meta.extra,
            headers=headers,
            client_request_id=request[CLIENT_REQUEST_ID],
            route="embeddings",
        )
        gw.metrics.request_done("embeddings", record, time.monotonic() - began)
        gw.ledger.enqueue(record)
        flight.end(ticket)
        if once is not None:
            await once.close()  # no answer kept: the key is free for a retry
