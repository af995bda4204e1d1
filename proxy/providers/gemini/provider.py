"""The HTTP edge: `GeminiProvider` posts to the Gemini API around the pure transforms."""

from __future__ import annotations

from urllib.parse import quote

from msgspec import Raw

from ...catalog import Model
from ...config import ProviderConfig
from ...errors import malformed_response
from ..base import ChatCall, ChatStream, Completion, Embedding, Provider
from ..h1 import Endpoint
from ..http import post, read_all
from ..redact import Redactor
from .embed import embed_request, to_embeddings
from .errors import google_error
from .request import build_body
from .response import to_completion
from .stream import GeminiStream


def method_path(upstream: str, stream: bool) -> str:
    """`/models/{upstream}:generateContent`, or the SSE stream's method."""
    method = ":streamGenerateContent?alt=sse" if stream else ":generateContent"
    return "/models/" + quote(upstream, safe="") + method


_EMBED = ":batchEmbedContents"


class GeminiProvider(Provider):
    """Google's Gemini API; `config.base_url` includes the version, e.g.
    https://generativelanguage.googleapis.com/v1beta."""

    def __init__(self, name: str, config: ProviderConfig, api_key: str | None) -> None:
        super().__init__(name, config, api_key)
        self._base = config.base_url.rstrip("/")
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["x-goog-api-key"] = api_key
        # One per (model, streamed): the URL names the model. Filled as models are first
        # called; the catalog bounds it.
        self._endpoints: dict[tuple[str, str], Endpoint] = {}
        self._redact = Redactor.for_provider(config.base_url, api_key)

    def _endpoint(self, upstream: str, stream: bool, method: str = "") -> Endpoint:
        key = (upstream, method or ("stream" if stream else "chat"))
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            path = ("/models/" + quote(upstream, safe="") + method) if method else method_path(
                upstream, stream)
            endpoint = self._endpoints[key] = Endpoint(self._base + path, self._headers)
        return endpoint

    async def chat(self, call: ChatCall) -> Completion:
        endpoint = self._endpoint(call.model.upstream, False)
        resp = await post(self.pool, self.name, endpoint, build_body(call), self._redact,
                          google_error)
        return to_completion(await read_all(self.name, resp), call.model.upstream, self.name)

    async def stream(self, call: ChatCall) -> ChatStream:
        endpoint = self._endpoint(call.model.upstream, True)
        resp = await post(self.pool, self.name, endpoint, build_body(call), self._redact,
                          google_error)
        return GeminiStream(self.name, call.model.upstream, resp, self._redact)

    async def embed(self, model: Model, fields: dict[str, Raw]) -> Embedding:
        endpoint = self._endpoint(model.upstream, False, _EMBED)
        body = embed_request(model.upstream, fields)
        resp = await post(self.pool, self.name, endpoint, body, self._redact, google_error)
        payload = to_embeddings(await read_all(self.name, resp), model.upstream, fields)
        if payload is None:
            raise malformed_response(self.name)
        return Embedding(payload, None)  # Gemini reports no usage: the gateway estimates it
