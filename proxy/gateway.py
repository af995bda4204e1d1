"""The app-wide services, built once per process and held on the app (`GATEWAY`)."""

from __future__ import annotations

import itertools
import os
from typing import Final

import redis.asyncio as aioredis
from aiohttp import web

from .auth import Authenticator
from .cache import ResponseCache
from .catalog import Catalog
from .config import Settings
from .errors import ServiceUnavailable, UpstreamError
from .idempotency import Idempotency
from .ledger import Ledger, create_ledger
from .limits import Limits, create_limits
from .metrics import Metrics
from .providers.base import Provider
from .providers.openai import OpenAIProvider
from .providers.simulated import SimulatedProvider
from .router import Router
from .routing import Routing


def _provider_class(protocol: str) -> type[Provider]:
    if protocol == "openai":
        return OpenAIProvider
    if protocol == "anthropic":
        from .providers.anthropic import AnthropicProvider

        return AnthropicProvider
    return SimulatedProvider


class Gateway:
    """Everything a request handler needs, in one place, with no module globals."""

    def __init__(self, settings: Settings, auth: Authenticator) -> None:
        self.settings = settings
        self.region = settings.region
        self.catalog = Catalog(settings)
        self.router = Router(self.catalog, dict(settings.policies))
        self.routing = Routing()  # circuits and latency stats: per process by design
        # One client (one connection pool) for everything this process keeps in Redis.
        self.redis: aioredis.Redis | None = (
            aioredis.Redis.from_url(settings.redis_url, decode_responses=False)
            if settings.redis_url else None
        )
        self.cache = ResponseCache.for_settings(settings.cache, self.redis,
                                                settings.redis_namespace)
        self.idempotency = Idempotency.for_settings(settings, self.redis)
        self.auth = auth
        self.ledger: Ledger = create_ledger(settings)
        # A getter for the ledger: its own wiring may replace the object after this line.
        self.limits: Limits = create_limits(settings, auth.keys, lambda: self.ledger)
        self.providers: dict[str, Provider] = {}
        for name, cfg in settings.providers.items():
            if settings.region not in cfg.regions:
                continue  # never even open a connection pool to a provider outside the region
            key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
            self.providers[name] = _provider_class(cfg.protocol)(name, cfg, key)
        self.metrics = Metrics(settings, self)
        # Request ids: a random per-process prefix and a counter (os.urandom per request
        # was a measurable syscall); unique across workers and restarts.
        self._rid_prefix = os.urandom(6).hex()
        self._rid_counter = itertools.count(1)

    def new_request_id(self) -> str:
        return f"{self._rid_prefix}{next(self._rid_counter):010x}"

    def provider(self, name: str) -> Provider:
        provider = self.providers.get(name)
        if provider is None:  # pragma: no cover - the catalog only serves region-allowed models
            raise ServiceUnavailable(f"Provider `{name}` is not available.")
        if provider.config.api_key_env and not provider.api_key:
            # An upstream failure, not the request's: routing falls through to other models.
            raise UpstreamError(
                f"Provider `{name}` is not configured: set {provider.config.api_key_env} "
                "in the gateway's environment.",
                status=503,
                upstream_status=503,
                code="provider_not_configured",
                reason="not_configured",
            )
        return provider

    async def start(self) -> None:
        for provider in self.providers.values():
            await provider.start()
        await self.auth.start()

    async def close(self) -> None:
        for provider in self.providers.values():
            await provider.close()
        await self.auth.close()
        if self.redis is not None:
            await self.redis.aclose()


GATEWAY: Final = web.AppKey("gateway", Gateway)
