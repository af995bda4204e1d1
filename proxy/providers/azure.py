"""Azure OpenAI: the OpenAI adapter with Azure's URLs, key header and content-filter errors.

A model's `upstream` is the name of an Azure *deployment*:
`POST {base_url}/openai/deployments/{upstream}/chat/completions?api-version={api_version}`
(and `/embeddings`), the key in the `api-key` header. Bodies are OpenAI's, so the OpenAI
adapter does the rest (`OpenAIProvider` given `AzureRoutes`): Azure's stream opens with a
chunk of empty `choices` and `prompt_filter_results`, which that adapter does not forward;
`finish_reason: "content_filter"` passes as it came.

A prompt Azure's content filter refuses is a 400 with `error.code == "content_filter"`:
the shared mapping (`faults.map_error`) passes it as an OpenAI-shaped 400 with that code
and Azure's message, and routing does not retry it elsewhere (a 400 is the request's).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

from ..catalog import Model
from ..config import ProviderConfig
from .h1 import Endpoint
from .openai import OpenAIProvider

_CHAT: Final = "chat/completions"
_EMBEDDINGS: Final = "embeddings"


class AzureRoutes:
    """One endpoint per deployment and operation, built on first use and kept (a provider
    serves the few deployments the catalog names)."""

    __slots__ = ("_base", "_endpoints", "_headers", "_query")

    def __init__(self, base_url: str, api_version: str, api_key: str | None) -> None:
        self._base = base_url.rstrip("/") + "/openai/deployments/"
        self._query = "?api-version=" + quote(api_version, safe="")
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["api-key"] = api_key
        self._endpoints: dict[tuple[str, str], Endpoint] = {}

    def chat(self, model: Model) -> Endpoint:
        return self._endpoint(model.upstream, _CHAT)

    def embeddings(self, model: Model) -> Endpoint:
        return self._endpoint(model.upstream, _EMBEDDINGS)

    def _endpoint(self, deployment: str, operation: str) -> Endpoint:
        endpoint = self._endpoints.get((deployment, operation))
        if endpoint is None:
            url = f"{self._base}{quote(deployment, safe='')}/{operation}{self._query}"
            endpoint = self._endpoints[(deployment, operation)] = Endpoint(url, self._headers)
        return endpoint


def azure_provider(name: str, config: ProviderConfig, api_key: str | None) -> OpenAIProvider:
    """The `azure` protocol's provider: the OpenAI adapter placed by `AzureRoutes`."""
    routes = AzureRoutes(config.base_url, config.api_version or "", api_key)
    return OpenAIProvider(name, config, api_key, routes)
