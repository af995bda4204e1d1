"""Vertex AI: Google's models through the Gemini translation, Anthropic's through the
Messages translation, at `{base}/v1/projects/{project}/locations/{location}/publishers/
{google|anthropic}/models/{model}:{method}`, with an OAuth token (`auth.AccessTokens`)."""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import quote

import msgspec

from ...catalog import Model
from ...config import ProviderConfig
from ...errors import PROVIDER_AUTH_FAILED, UpstreamError
from ..anthropic import AnthropicStream, build_request, structured_tool
from ..anthropic import to_completion as anthropic_completion
from ..base import ChatCall, ChatStream, Completion, Provider
from ..gemini import GeminiStream
from ..gemini import build_body as gemini_body
from ..gemini import to_completion as gemini_completion
from ..gemini.errors import google_error
from ..h1 import Endpoint, Response
from ..http import post, read_all
from ..redact import Redactor
from .auth import AccessTokens, TokenError

ANTHROPIC_VERSION: Final = "vertex-2023-10-16"
_METHODS: Final = {
    ("google", False): ":generateContent",
    ("google", True): ":streamGenerateContent?alt=sse",
    ("anthropic", False): ":rawPredict",
    ("anthropic", True): ":streamRawPredict",
}


def default_base_url(location: str) -> str:
    if location == "global":
        return "https://aiplatform.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


def publisher(model: Model) -> str:
    """The model's publisher: as configured, else Anthropic's for `claude-...` ids."""
    if model.publisher:
        return model.publisher
    return "anthropic" if model.upstream.startswith("claude-") else "google"


def anthropic_body(call: ChatCall) -> bytes:
    """Anthropic's Messages body as Vertex takes it: the model is in the URL, the version
    in the body."""
    req: dict[str, Any] = build_request(call)
    del req["model"]
    req["anthropic_version"] = ANTHROPIC_VERSION
    return msgspec.json.encode(req)


class VertexProvider(Provider):
    def __init__(
        self, name: str, config: ProviderConfig, api_key: str | None,
        tokens: AccessTokens | None = None,
    ) -> None:
        super().__init__(name, config, api_key)
        self._location = config.gcp_location or "global"
        self._base = (config.base_url or default_base_url(self._location)).rstrip("/")
        self._tokens = tokens or AccessTokens()
        # Endpoints hold their headers encoded: one set per token, rebuilt when it changes.
        self._endpoints: dict[tuple[str, str, bool], Endpoint] = {}
        self._endpoints_for: str | None = None
        self._redact = Redactor.for_provider(self._base, None)

    async def close(self) -> None:
        await self._tokens.close()
        await super().close()

    async def _authorization(self) -> str:
        header = self._tokens.current()
        if header is not None:
            return header
        try:
            return await self._tokens.header()
        except TokenError as e:
            if not e.configured:
                raise UpstreamError(
                    f"Provider `{self.name}` is not configured: set GOOGLE_APPLICATION_CREDENTIALS "
                    "(a service account key file) in the gateway's environment.",
                    status=503, upstream_status=503, code="provider_not_configured",
                    reason="not_configured",
                ) from None
            # Retryable (a token endpoint can be down for a moment): routing may fall back.
            raise UpstreamError(
                f"Upstream provider `{self.name}`: the gateway could not get a Google access "
                "token; the gateway's operator must check its credentials.",
                status=502, upstream_status=503, code=PROVIDER_AUTH_FAILED, reason="token",
            ) from None

    def _project(self) -> str:
        project = self.config.gcp_project or self._tokens.project
        if not project:
            raise UpstreamError(
                f"Provider `{self.name}` is not configured: set `gcp_project`; its "
                "credentials name no project.",
                status=503, upstream_status=503, code="provider_not_configured",
                reason="not_configured",
            )
        return project

    def _endpoint(self, header: str, pub: str, upstream: str, stream: bool) -> Endpoint:
        if header != self._endpoints_for:
            self._endpoints.clear()
            self._endpoints_for = header
        endpoint = self._endpoints.get((pub, upstream, stream))
        if endpoint is None:
            url = (f"{self._base}/v1/projects/{quote(self._project(), safe='')}/locations/"
                   f"{self._location}/publishers/{pub}/models/{quote(upstream, safe='')}"
                   + _METHODS[(pub, stream)])
            headers = {"content-type": "application/json", "authorization": header}
            endpoint = self._endpoints[(pub, upstream, stream)] = Endpoint(url, headers)
        return endpoint

    async def _post(self, call: ChatCall, pub: str, body: bytes) -> Response:
        header = await self._authorization()
        endpoint = self._endpoint(header, pub, call.model.upstream, call.stream)
        try:
            return await post(self.pool, self.name, endpoint, body, self._redact, google_error)
        except UpstreamError as e:
            if e.upstream_status == 401:
                self._tokens.invalidate(header)  # revoked early: the next call gets a new one
            raise

    async def chat(self, call: ChatCall) -> Completion:
        pub = publisher(call.model)
        if pub == "anthropic":
            resp = await self._post(call, pub, anthropic_body(call))
            return anthropic_completion(await read_all(self.name, resp), call.model.upstream,
                                        self.name, structured=structured_tool(call))
        resp = await self._post(call, pub, gemini_body(call))
        return gemini_completion(await read_all(self.name, resp), call.model.upstream, self.name)

    async def stream(self, call: ChatCall) -> ChatStream:
        pub = publisher(call.model)
        if pub == "anthropic":
            resp = await self._post(call, pub, anthropic_body(call))
            return AnthropicStream(self.name, call.model.upstream, resp, self._redact,
                                   structured=structured_tool(call))
        resp = await self._post(call, pub, gemini_body(call))
        return GeminiStream(self.name, call.model.upstream, resp, self._redact)
