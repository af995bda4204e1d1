"""A fake Gemini API and Vertex AI on one server.

Gemini API: `POST /{v1beta|v1}/models/{model}:generateContent` and
`:streamGenerateContent?alt=sse`, `:batchEmbedContents`, the key in `x-goog-api-key`
(or `?key=`).
Vertex AI: `POST /{v1|v1beta1}/projects/{p}/locations/{l}/publishers/google/models/{m}:...`
(the same Gemini formats) and `.../publishers/anthropic/models/{m}:rawPredict` /
`:streamRawPredict` (Anthropic's Messages formats, from `anthropic_server`), with an
OAuth access token the fake token server issued (`tokens`).

Streams are what Google sends with `alt=sse`: `data: <GenerateContentResponse>` events
ending in CRLF CRLF, no end marker, `usageMetadata` on every event (cumulative: early
events carry the prompt count only), `finishReason` and the full usage on the last one.
Errors are `google.rpc.Status` bodies; a 429 carries `RetryInfo` when `retry_delay` is set.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from aiohttp import web

from . import anthropic_server
from .behaviour import ErrorEvent, FakeServer, Reply, encode
from .openai_server import embedding_for

_STATUS: Final[dict[int, str]] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@dataclass(frozen=True)
class GeminiReply(Reply):
    """A `Reply` with Gemini's thinking: `thoughts_tokens` in `thoughtsTokenCount`, and a
    thought summary part (`thought: true`) when `thought` is given."""

    thoughts_tokens: int = 0
    thought: str | None = None


def usage_metadata(reply: Reply, final: bool = True) -> dict[str, Any]:
    usage: dict[str, Any] = {"promptTokenCount": reply.prompt_tokens}
    out = reply.output_tokens()
    thoughts = reply.thoughts_tokens if isinstance(reply, GeminiReply) else 0
    if final:
        usage["candidatesTokenCount"] = out
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
    if reply.cached_tokens:
        usage["cachedContentTokenCount"] = reply.cached_tokens
    usage["totalTokenCount"] = reply.prompt_tokens + (out + thoughts if final else 0)
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": reply.prompt_tokens}]
    return usage


def _function_call(name: str, args: str) -> dict[str, Any]:
    return {"functionCall": {"name": name, "args": msgspec.json.decode(args)}}


def _envelope(reply: Reply, number: int, model: str, candidate: dict[str, Any],
              usage: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"candidates": [candidate]}
    if usage is not None and not reply.omit_usage:
        body["usageMetadata"] = usage
    body["modelVersion"] = model
    body["responseId"] = f"fakeResp{number:06d}"
    return body


def response(reply: Reply, number: int, model: str) -> bytes:
    parts: list[dict[str, Any]] = []
    if isinstance(reply, GeminiReply) and reply.thought:
        parts.append({"text": reply.thought, "thought": True})
    if reply.content:
        parts.append({"text": reply.content})
    parts += [_function_call(name, args) for name, args in reply.tools]
    candidate = {
        "content": {"parts": parts, "role": "model"},
        "finishReason": reply.finish_reason or "STOP",
        "index": 0,
    }
    return encode(_envelope(reply, number, model, candidate, usage_metadata(reply)))


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + encode(body) + b"\r\n\r\n"


def events(reply: Reply, number: int, model: str) -> list[bytes]:
    pieces: list[list[dict[str, Any]]] = []
    if isinstance(reply, GeminiReply) and reply.thought:
        pieces.append([{"text": reply.thought, "thought": True}])
    pieces += [[{"text": p}] for p in reply.pieces() if p]
    if reply.tools:  # each call arrives whole; parallel calls in one event
        pieces.append([_function_call(name, args) for name, args in reply.tools])
    if not pieces:
        pieces.append([{"text": ""}])
    out: list[bytes] = []
    for i, parts in enumerate(pieces):
        last = i == len(pieces) - 1
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if last:
            candidate["finishReason"] = reply.finish_reason or "STOP"
        candidate["index"] = 0
        out.append(_event(_envelope(reply, number, model, candidate,
                                    usage_metadata(reply, final=last))))
    return out


def embeddings(req: Any) -> bytes:
    """`batchEmbedContents`: one deterministic vector per request's text (no usage: the
    Gemini API reports none for embeddings)."""
    out = []
    for r in req.get("requests", []):
        text = "".join(p.get("text", "") for p in r["content"]["parts"])
        out.append({"values": embedding_for(text, r.get("outputDimensionality", 8))})
    return encode({"embeddings": out})


def status_body(status: int, message: str, word: str | None,
                details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": status, "message": message,
                             "status": word or _STATUS.get(status, "UNKNOWN")}
    if details:
        error["details"] = details
    return {"error": error}


class FakeGemini(FakeServer):
    """`root_url` is what Google's SDK takes as its base URL; `base_url` (with `/v1beta`)
    is the gateway's. `api_key` (if set) is required of Gemini API calls; `tokens` (if
    set) holds the access tokens Vertex calls must bear. `retry_delay` ("17s") adds
    `RetryInfo` to 429 answers. `Fail(400, error_type="API_KEY_INVALID")` answers as
    Google does to a wrong key: 400 INVALID_ARGUMENT with that `ErrorInfo` reason."""

    url_suffix = "/v1beta"
    request_id_header = "x-goog-request-id"

    def __init__(self, api_key: str | None = None, tokens: AbstractSet[str] | None = None) -> None:
        super().__init__()
        self.api_key = api_key
        self.tokens = tokens
        self.retry_delay: str | None = None

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix(self.url_suffix)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/{version}/models/{target}", self._gemini),
            web.post(
                "/{version}/projects/{project}/locations/{location}/publishers/{publisher}"
                "/models/{target}",
                self._vertex,
            ),
        ]

    def error_body(self, status: int, message: str, error_type: str | None) -> bytes:
        details: list[dict[str, Any]] = []
        word = error_type
        if error_type == "API_KEY_INVALID":
            word = "INVALID_ARGUMENT"
            details.append({"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "API_KEY_INVALID", "domain": "googleapis.com"})
        if status == 429 and self.retry_delay:
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": self.retry_delay})
        return encode(status_body(status, message, word, details))

    def error_frame(self, event: ErrorEvent) -> bytes:
        word = event.error_type or "UNAVAILABLE"
        code = next((c for c, w in _STATUS.items() if w == word), 500)
        return _event(status_body(code, event.message, word))

    def _refuse(self, status: int, message: str) -> web.Response:
        return web.Response(status=status, body=encode(status_body(status, message, None)),
                            content_type="application/json")

    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if self.api_key is not None and key != self.api_key:
            return self._refuse(403, "Method doesn't allow unregistered callers.")
        if request.match_info["version"] not in ("v1", "v1beta"):
            return self._refuse(404, "Not found.")
        return await self._generate(request, request.match_info["target"])

    async def _vertex(self, request: web.Request) -> web.StreamResponse:
        if self.tokens is not None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or token not in self.tokens:
                return self._refuse(401, "Request had invalid authentication credentials.")
        info = request.match_info
        if info["version"] not in ("v1", "v1beta1"):
            return self._refuse(404, "Not found.")
        if info["publisher"] == "anthropic":
            model, _, method = info["target"].partition(":")
            if method not in ("rawPredict", "streamRawPredict"):
                return self._refuse(404, f"Method {method} not found.")
            body = await request.json()
            if not isinstance(body, dict) or "model" in body or not body.get("anthropic_version"):
                return self._refuse(400, "anthropic_version is required and model is not allowed.")
            return await self.serve(
                request,
                lambda r, req, n: anthropic_server.message(r, {"model": model, **req}, n),
                lambda r, req, n: anthropic_server.events(r, {"model": model, **req}, n),
                stream=method == "streamRawPredict",
            )
        return await self._generate(request, info["target"])

    async def _generate(self, request: web.Request, target: str) -> web.StreamResponse:
        model, _, method = target.partition(":")
        if method == "streamGenerateContent":
            if request.query.get("alt") != "sse":
                return self._refuse(400, "This fake streams with alt=sse only.")
            stream = True
        elif method == "generateContent":
            stream = False
        elif method == "batchEmbedContents":
            return await self.serve(request, lambda _r, req, _n: embeddings(req))
        else:
            return self._refuse(404, f"Method {method} not found.")
        return await self.serve(
            request,
            lambda r, _req, n: response(r, n, model),
            lambda r, _req, n: events(r, n, model),
            stream=stream,
        )
