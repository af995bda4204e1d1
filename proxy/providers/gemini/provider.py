"""The HTTP edge: `GeminiProvider` posts to the Gemini API around the pure transforms."""

from __future__ import annotations

from urllib.parse import quote

from ...config import ProviderConfig
from ..base import ChatCall, ChatStream, Completion, Provider
from ..h1 import Endpoint
from ..http import read_all
from ..redact import Redactor
from .request import build_body
from .response import to_completion
from .stream import GeminiStream
from .transport import post


def method_path(upstream: str, stream: bool) -> str:
    """`/models/{upstream}:generateContent`, or the SSE stream's method."""
    method = ":streamGenerateContent?alt=sse" if stream else ":generateContent"
    return "/models/" + quote(upstream, safe="") + method


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
        self._endpoints: dict[tuple[str, bool], Endpoint] = {}
        self._redact = Redactor.for_provider(config.base_url, api_key)

    def _endpoint(self, upstream: str, stream: bool) -> Endpoint:
        endpoint = self._endpoints.get((upstream, stream))
        if endpoint is None:
            endpoint = Endpoint(self._base + method_path(upstream, stream), self._headers)
            self._endpoints[(upstream, stream)] = endpoint
        return endpoint

    async def chat(self, call: ChatCall) -> Completion:
        endpoint = self._endpoint(call.model.upstream, False)
        resp = await post(self.pool, self.name, endpoint, build_body(call), self._redact)
        return to_completion(await read_all(self.name, resp), call.model.upstream, self.name)

    async def stream(self, call: ChatCall) -> ChatStream:
        endpoint = self._endpoint(call.model.upstream, True)
        resp = await post(self.pool, self.name, endpoint, build_body(call), self._redact)
        return GeminiStream(self.name, call.model.upstream, resp, self._redact)
