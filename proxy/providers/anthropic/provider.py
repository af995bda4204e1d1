"""The HTTP edge: `AnthropicProvider` posts to `/v1/messages` around the pure transforms."""

from __future__ import annotations

from typing import Final

import aiohttp

from ..base import ChatCall, ChatStream, Completion, Provider
from ..openai import transport_error, upstream_error
from .request import build_body
from .response import to_completion
from .stream import AnthropicStream

API_VERSION: Final = "2023-06-01"


class AnthropicProvider(Provider):
    """Anthropic's Messages API; `config.base_url` is the host, e.g. https://api.anthropic.com."""

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        return headers

    async def _post(self, body: bytes) -> aiohttp.ClientResponse:
        assert self.session is not None, "start() the provider first"
        base = self.config.base_url.rstrip("/")
        # Accept a base URL given with `/v1`, as OpenAI-style base URLs usually are.
        url = base + ("/messages" if base.endswith("/v1") else "/v1/messages")
        try:
            resp = await self.session.post(url, data=body, headers=self._headers())
        except (TimeoutError, aiohttp.ClientError) as e:
            raise transport_error(self.name, e) from None
        if resp.status != 200:
            try:
                err_body = await resp.read()
            except (TimeoutError, aiohttp.ClientError):
                err_body = b""
            finally:
                resp.release()
            # Anthropic's error body nests {"type", "message"} under `error` as OpenAI's does.
            raise upstream_error(self.name, resp.status, err_body, resp.headers.get("retry-after"))
        return resp

    async def chat(self, call: ChatCall) -> Completion:
        resp = await self._post(build_body(call))
        try:
            body = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as e:
            raise transport_error(self.name, e) from None
        finally:
            resp.release()
        return to_completion(body, call.model.upstream, self.name)

    async def stream(self, call: ChatCall) -> ChatStream:
        resp = await self._post(build_body(call))
        return AnthropicStream(self.name, call.model.upstream, resp)
