"""A fake Azure OpenAI resource: the OpenAI fake's bodies behind Azure's paths and key.

`POST /openai/deployments/{deployment}/chat/completions?api-version=...` and
`.../embeddings`, the key in the `api-key` header (a wrong or missing one is Azure's 401;
a missing `api-version` Azure's 404; an unknown deployment `DeploymentNotFound`). Bodies
are OpenAI's with Azure's additions: `model` is the model the deployment runs, not what
the request said; `prompt_filter_results` and per-choice `content_filter_results`; a
stream opens with a chunk of empty `choices`, `id`, `object` and `model` carrying only the
prompt's filter results. Errors are Azure's `{"error": {"code": ..., "message": ...}}`
(a `Fail.error_type` is the `code`), a 429 with `retry-after` and `retry-after-ms`, and
`content_filter` 400s with `innererror.content_filter_result`.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from aiohttp import web

from . import openai_server
from .behaviour import ErrorEvent, Fail, FakeServer, Reply, encode, request_id

API_KEY: Final = "azure-fake-key-0123456789abcdef"
_SAFE: Final = {"filtered": False, "severity": "safe"}
_FILTERS: Final = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
_PROMPT_FILTER: Final = [{"prompt_index": 0, "content_filter_results": _FILTERS}]
FILTER_PREAMBLE: Final = {
    "choices": [],
    "created": 0,
    "id": "",
    "model": "",
    "object": "",
    "prompt_filter_results": _PROMPT_FILTER,
}
CONTENT_FILTER_MESSAGE: Final = (
    "The response was filtered due to the prompt triggering Azure OpenAI's content "
    "management policy. Please modify your prompt and retry. To learn more about our "
    "content filtering policies please read our documentation: "
    "https://go.microsoft.com/fwlink/?linkid=2198766"
)


class FakeAzure(FakeServer):
    """`deployments` maps each deployment name to the model it runs."""

    request_id_header = "apim-request-id"

    def __init__(
        self, deployments: dict[str, str] | None = None, api_key: str = API_KEY
    ) -> None:
        super().__init__()
        self.deployments = deployments or {"gpt-4o-eu": "gpt-4o-2024-11-20"}
        self.api_key = api_key
        self.api_versions: list[str] = []  # each request's `api-version`, in order

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/openai/deployments/{deployment}/chat/completions", self._chat),
            web.post("/openai/deployments/{deployment}/embeddings", self._embeddings),
        ]

    def error_body(self, status: int, message: str, error_type: str | None) -> bytes:
        code = error_type or str(status)
        error: dict[str, Any] = {"code": code, "message": message}
        if code == "content_filter":
            error.update(
                message=message or CONTENT_FILTER_MESSAGE,
                type=None,
                param="prompt",
                status=400,
                innererror={
                    "code": "ResponsibleAIPolicyViolation",
                    "content_filter_result": {
                        **_FILTERS,
                        "violence": {"filtered": True, "severity": "high"},
                        "jailbreak": {"filtered": False, "detected": False},
                    },
                },
            )
        return encode({"error": error})

    def error_headers(self, f: Fail) -> dict[str, str]:
        if f.retry_after is None:
            return {}
        return {
            "retry-after": f"{f.retry_after:g}",
            "retry-after-ms": f"{f.retry_after * 1000:g}",
        }

    def error_frame(self, event: ErrorEvent) -> bytes:
        body = {"error": {"code": event.error_type or "server_error", "message": event.message}}
        return b"data: " + encode(body) + b"\n\n"

    def _refusal(self, request: web.Request) -> web.Response | None:
        """Azure's answer to a request it would not route to a deployment, if any."""
        if not request.query.get("api-version"):
            return _error(404, "404", "Resource not found")
        self.api_versions.append(request.query["api-version"])
        if request.headers.get("api-key") != self.api_key:
            return _error(
                401,
                "401",
                "Access denied due to invalid subscription key or wrong API endpoint. Make "
                "sure to provide a valid key for an active subscription and use a correct "
                "regional API endpoint for your resource.",
            )
        if request.match_info["deployment"] not in self.deployments:
            return _error(
                404,
                "DeploymentNotFound",
                "The API deployment for this resource does not exist. If you created the "
                "deployment within the last 5 minutes, please wait a moment and try again.",
            )
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        model = self.deployments[request.match_info["deployment"]]
        return await self.serve(
            request,
            lambda reply, req, n: completion(reply, {**req, "model": model}, n),
            lambda reply, req, n: chunks(reply, {**req, "model": model}, n),
        )

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        model = self.deployments[request.match_info["deployment"]]
        return await self.serve(
            request,
            lambda reply, req, n: _embeddings(req, model),
        )



def completion(reply: Reply, req: Any, number: int) -> bytes:
    """The OpenAI fake's completion with Azure's filter results added."""
    body = msgspec.json.decode(openai_server.completion(reply, req, number))
    body["prompt_filter_results"] = _PROMPT_FILTER
    for choice in body["choices"]:
        choice["content_filter_results"] = _FILTERS
    return encode(body)


def chunks(reply: Reply, req: Any, number: int) -> list[bytes]:
    """The OpenAI fake's stream, opened by Azure's filter preamble, with filter results."""
    events = [b"data: " + encode(FILTER_PREAMBLE) + b"\n\n"]
    for event in openai_server.chunks(reply, req, number):
        data = event[6:-2]
        if data == b"[DONE]":
            events.append(event)
            continue
        chunk = msgspec.json.decode(data)
        for choice in chunk["choices"]:  # the role chunk's results are empty
            choice["content_filter_results"] = _FILTERS if choice["delta"].get("content") else {}
        events.append(b"data: " + encode(chunk) + b"\n\n")
    return events


def _embeddings(req: Any, model: str) -> bytes:
    raw = req.get("input")
    inputs = raw if isinstance(raw, list) else [raw]
    tokens = sum(len(str(text).split()) for text in inputs)
    data = [
        {"object": "embedding", "index": i, "embedding": openai_server.embedding_for(str(text))}
        for i, text in enumerate(inputs)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return encode({"object": "list", "data": data, "model": model, "usage": usage})


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=encode({"error": {"code": code, "message": message}}),
        content_type="application/json",
        headers={"apim-request-id": request_id(0)},
    )
