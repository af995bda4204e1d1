"""The HTTP edge: `BedrockProvider` signs and posts to Converse around the pure transforms."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final
from urllib.parse import quote, urlsplit

from ...config import ProviderConfig
from ...errors import UpstreamError
from ..base import ChatCall, ChatStream, Completion, Provider
from ..h1 import Endpoint, Response
from ..http import post, read_all
from ..redact import ADDRESS, SECRET, Redactor
from .faults import bedrock_error
from .request import build_body
from .response import to_completion
from .signing import Signer
from .stream import BedrockStream, ConverseTranslator

_JSON: Final = {"Content-Type": "application/json", "Accept": "application/json"}
_EVENTS: Final = {"Content-Type": "application/json",
                  "Accept": "application/vnd.amazon.eventstream"}


def default_base_url(region: str) -> str:
    return f"https://bedrock-runtime.{region}.amazonaws.com"


class BedrockProvider(Provider):
    """Bedrock Runtime's Converse API in `config.aws_region`; `config.base_url` overrides
    the regional endpoint (a VPC endpoint, a test's fake)."""

    def __init__(
        self,
        name: str,
        config: ProviderConfig,
        api_key: str | None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(name, config, api_key)
        region = config.aws_region or ""
        self._base = (config.base_url or default_base_url(region)).rstrip("/") + "/model/"
        self._signer = Signer.from_env(region, os.environ if env is None else env)
        literals = [(urlsplit(self._base).hostname or "", ADDRESS)]
        if self._signer is not None:
            literals += [(s, SECRET) for s in (self._signer.access_key, self._signer.secret_key,
                                               self._signer.token) if s]
        self._redact = Redactor(literals)

    def _url(self, upstream: str, operation: str) -> str:
        # A model id (`eu.anthropic.claude-...-v1:0`, an ARN) is one path segment.
        return f"{self._base}{quote(upstream, safe='')}/{operation}"

    async def _post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Response:
        """POST signed; a 200 response (body unread) or the mapped `UpstreamError`."""
        if self._signer is None:
            raise UpstreamError(
                f"Provider `{self.name}` is not configured: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary credentials) "
                "in the gateway's environment.",
                status=503,
                upstream_status=503,
                code="provider_not_configured",
                reason="not_configured",
            )
        assert self.pool is not None, "start() the provider first"
        # Signed per request (the signature covers the body and the time); the pool keeps
        # connections per host, so a new Endpoint reuses them.
        endpoint = Endpoint(url, self._signer.headers(url, body, headers))
        return await post(self.pool, self.name, endpoint, body, self._redact, bedrock_error)

    async def chat(self, call: ChatCall) -> Completion:
        resp = await self._post(self._url(call.model.upstream, "converse"), build_body(call), _JSON)
        request_id = resp.headers.get("x-amzn-requestid")
        body = await read_all(self.name, resp)
        return to_completion(body, call.model.upstream, self.name, request_id)

    async def stream(self, call: ChatCall) -> ChatStream:
        url = self._url(call.model.upstream, "converse-stream")
        resp = await self._post(url, build_body(call), _EVENTS)
        translator = ConverseTranslator(call.model.upstream, self.name, self._redact,
                                        resp.headers.get("x-amzn-requestid"))
        return BedrockStream(translator, resp)
