"""The HTTP edge: `AnthropicProvider` posts to `/v1/messages` around the pure transforms."""

from __future__ import annotations

from typing import Final

from ...config import ProviderConfig
from ..base import ChatCall, ChatStream, Completion, Provider
from ..h1 import Endpoint, Response
from ..http import post, read_all
from ..redact import Redactor
from .request import build_body
from .response import to_completion
from .stream import AnthropicStream

API_VERSION: Final = "2023-06-01"


class AnthropicProvider(Provider):
    """Anthropic's Messages API; `config.base_url` is the host, e.g. https://api.anthropic.com."""

    def __init__(self, name: str, config: ProviderConfig, api_key: str | None) -> None:
        super().__init__(name, config, api_key)
        base = config.base_url.rstrip("/")
        # Accept a base URL given with `/v1`, as OpenAI-style base URLs usually are.
        url = base + ("/messages" if base.endswith("/v1") else "/v1/messages")
        headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        self._messages = Endpoint(url, headers)  # encoded once, not per request
        self._redact = Redactor.for_provider(config.base_url, api_key)

    async def _post(self, body: bytes) -> Response:
        # Anthropic's error body nests {"type", "message"} under `error` as OpenAI's does,
        # so the shared mapping applies.
        return await post(self.pool, self.name, self._messages, body, self._redact)

    async def chat(self, call: ChatCall) -> Completion:
        body = await read_all(self.name, await self._post(build_body(call)))
        return to_completion(body, call.model.upstream, self.name)

    async def stream(self, call: ChatCall) -> ChatStream:
        resp = await self._post(build_body(call))
        return AnthropicStream(self.name, call.model.upstream, resp, self._redact)
