"""Builds the aiohttp application: middleware, routes, startup and shutdown wiring."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from aiohttp import web

from . import compat
from .api import chat, completions, embeddings, keys, messages, models, ops, responses, usage
from .api.common import CLIENT_REQUEST_ID, REQUEST_ID
from .api.inflight import INFLIGHT, InFlight, inflight_lifecycle
from .auth import PRINCIPAL, Authenticator, bearer_token
from .bootstrap import admin_digest, key_secret
from .config import Settings
from .dialects.messages import render as anthropic_error
from .edge import read_body_in_time
from .compat.aiohttp_edge import EDGE_SLOTS
from .errors import ApiError, InvalidRequest, NotFound
from .gateway import GATEWAY, Gateway

log = logging.getLogger("proxy")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_V1: Final = "/v1/"
_MESSAGES: Final = "/v1/messages"
_HTTP_ERRORS: Final[dict[int, type[ApiError]]] = {404: NotFound, 405: InvalidRequest}


def _client_request_id(request: web.Request) -> str | None:
    given = request.headers.get("x-request-id")
    if given and len(given) <= 128 and given.isascii() and given.isprintable():
        return given
    return None


@web.middleware
async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, authentication for /v1, and every error as OpenAI's error body."""
    # The gateway's own id is always fresh (the ledger is idempotent on it); the response
    # echoes the client's id when it sent one.
    gw = request.app[GATEWAY]
    own_id = request[REQUEST_ID] = gw.new_request_id()
    client_id = request[CLIENT_REQUEST_ID] = _client_request_id(request)
    rid = client_id or own_id
    try:
        if request.path.startswith(_V1):
            request[PRINCIPAL] = await gw.auth.authenticate(bearer_token(request))
        if not request.content.is_eof():  # a body still arriving: bound how long it takes
            late = await read_body_in_time(request, gw.settings.edge.body_timeout_s, rid,
                                           error_response)
            if late is not None:
                return late
        response = await handler(request)
    except ApiError as e:
        response = error_response(request, e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        cls = _HTTP_ERRORS.get(e.status, ApiError)
        response = error_response(request, cls(e.reason or "error", status=e.status))
    except ConnectionResetError:
        # The client went away (the record says 499); there is no one to answer.
        response = web.Response(status=499)
    except Exception as e:  # the last line of defence: never a traceback to the client
        # The traceback goes to the log only, with the request id the client saw, so a report
        # can be traced; the client gets the generic body below.
        log.error("request %s failed: internal error (%s)", rid, type(e).__name__, exc_info=e)
        response = error_response(request, ApiError("The gateway failed to handle the request."))
    if not response.prepared:
        response.headers["x-request-id"] = rid
    return response


def error_response(request: web.Request, e: ApiError) -> web.Response:
    """An error in the shape of the route's dialect: Anthropic's on /v1/messages (auth and
    rate-limit refusals included), OpenAI's everywhere else."""
    if request.path.startswith(_MESSAGES):
        status, body = anthropic_error(e)
        return web.Response(body=body, status=status, content_type="application/json",
                            headers=e.headers)
    return e.response()


def build_app(settings: Settings, auth: Authenticator | None = None) -> web.Application:
    app = web.Application(
        middlewares=[edge],
        client_max_size=settings.max_body_bytes,
        handler_args={"max_field_size": 16384},
    )
    if auth is None:
        from .keys import create_registry

        secret = key_secret(settings)
        auth = Authenticator(secret, admin_digest(settings, secret, announce=False),
                             keys=create_registry(settings))
    gw = Gateway(settings, auth)
    app[GATEWAY] = gw
    app[EDGE_SLOTS] = gw.edge_slots  # the listener counts into the gateway's metrics
    app.cleanup_ctx.append(_gateway_lifecycle)
    app[INFLIGHT] = InFlight(gw.admissions, settings.region)  # journaled, clients watched
    app.cleanup_ctx.append(inflight_lifecycle)
    app.router.add_post("/v1/chat/completions", chat.chat_completions)
    app.router.add_post("/v1/messages", messages.messages)
    app.router.add_post("/v1/messages/count_tokens", messages.count_tokens)
    app.router.add_post("/v1/responses", responses.responses)
    app.router.add_post("/v1/completions", completions.completions)
    app.router.add_post("/v1/embeddings", embeddings.embeddings)
    app.router.add_get("/v1/models", models.list_models)
    app.router.add_get("/v1/models/{model_id:.+}", models.get_model)
    app.router.add_get("/v1/api-keys", keys.list_keys)
    app.router.add_post("/v1/api-keys", keys.create_key)
    app.router.add_get("/v1/api-keys/{key_id}", keys.get_key)
    app.router.add_delete("/v1/api-keys/{key_id}", keys.delete_key)
    app.router.add_patch("/v1/api-keys/{key_id}/limit", keys.update_limit)
    app.router.add_get("/v1/api-keys/{key_id}/usage", usage.key_usage)
    app.router.add_get("/v1/organization/usage", usage.org_usage)
    app.router.add_get("/healthz", ops.healthz)
    app.router.add_get("/readyz", ops.readyz)
    app.router.add_get("/metrics", ops.metrics)
    return app


async def _gateway_lifecycle(app: web.Application) -> AsyncIterator[None]:
    compat.check()  # a library changed under a fenced private API: fail here, not mid-request
    gw = app[GATEWAY]
    await gw.ledger.start()
    await gw.limits.start()
    await gw.start()
    yield
    await gw.close()
    await gw.limits.close()
    await gw.ledger.close()  # flush every record before the process exits
    gw.metrics.close()
