"""The HTTP edge: `AnthropicProvider` posts to `/v1/messages` around the pure transforms."""

from __future__ import annotations

from typing import Final

from ...config import ProviderConfig
from ..base import ChatCall, ChatStream, Completion, Provider
from ..h1 import Endpoint, Response
from ..http import post, read_all
from ..redact import Redactor
from .passthrough import MessagesWireStream, to_wire_completion
from .request import build_body, structured_tool
from .response import to_completion
from .stream import AnthropicStream

API_VERSION: Final = "2023-06-01"
# Distinct (anthropic-version, anthropic-beta) pairs whose encoded endpoints are kept; a
# client sending more distinct pairs gets an endpoint built per request.
_MAX_HEADER_SETS: Final = 32


class AnthropicProvider(Provider):
    """Anthropic's Messages API; `config.base_url` is the host, e.g. https://api.anthropic.com."""

    def __init__(self, name: str, config: ProviderConfig, api_key: str | None) -> None:
        super().__init__(name, config, api_key)
        base = config.base_url.rstrip("/")
        # Accept a base URL given with `/v1`, as OpenAI-style base URLs usually are.
        self._url = base + ("/messages" if base.endswith("/v1") else "/v1/messages")
        self._headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
        if api_key:
            self._headers["x-api-key"] = api_key
        self._messages = Endpoint(self._url, self._headers)  # encoded once, not per request
        self._wire: dict[tuple[str, str, str | None], Endpoint] = {}
        self._redact = Redactor.for_provider(config.base_url, api_key)

    async def _post(self, body: bytes, endpoint: Endpoint | None = None) -> Response:
        # Anthropic's error body nests {"type", "message"} under `error` as OpenAI's does,
        # so the shared mapping applies.
        return await post(self.pool, self.name, endpoint or self._messages, body, self._redact)

    async def chat(self, call: ChatCall) -> Completion:
        body = await read_all(self.name, await self._post(build_body(call)))
        return to_completion(body, call.model.upstream, self.name, structured=structured_tool(call))

    async def stream(self, call: ChatCall) -> ChatStream:
        resp = await self._post(build_body(call))
        return AnthropicStream(self.name, call.model.upstream, resp, self._redact,
                               structured=structured_tool(call))

    # -- Messages passed through (`/v1/messages` of the gateway) -------------------------

    def endpoint(self, path: str, version: str | None, beta: str | None) -> Endpoint:
        """The endpoint with the client's `anthropic-version` and `anthropic-beta`."""
        key = (path, version or API_VERSION, beta)
        endpoint = self._wire.get(key)
        if endpoint is None:
            headers = {**self._headers, "anthropic-version": key[1]}
            if beta:
                headers["anthropic-beta"] = beta
            endpoint = Endpoint(self._url + path, headers)
            if len(self._wire) < _MAX_HEADER_SETS:
                self._wire[key] = endpoint
        return endpoint

    async def messages(self, body: bytes, endpoint: Endpoint) -> Completion:
        return to_wire_completion(await read_all(self.name, await self._post(body, endpoint)),
                                  self.name)

    async def messages_stream(self, body: bytes, endpoint: Endpoint, model: str) -> ChatStream:
        resp = await self._post(body, endpoint)
        return MessagesWireStream(self.name, model, resp, self._redact)

    async def count_tokens(self, body: bytes, endpoint: Endpoint) -> bytes:
        return await read_all(self.name, await self._post(body, endpoint))
