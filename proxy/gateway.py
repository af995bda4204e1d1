"""The app-wide services, built once per process and held on the app (`GATEWAY`).

The gateway also wires what reads its components: `metrics` and `readiness` are handed
typed getters of each component's `stats()` (`proxy/stats.py`), never the gateway itself.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable
from typing import Final

import redis.asyncio as aioredis
from aiohttp import web

from .auth import Authenticator
from .cache import ResponseCache
from .catalog import Catalog
from .config import ProviderConfig, Settings
from .deadline import Deadlines
from .edge import connection_cap, fd_limit
from .compat.aiohttp_edge import ConnectionSlots
from .errors import ServiceUnavailable, UpstreamError
from .health import Readiness
from .idempotency import Idempotency
from .ledger import Ledger, create_ledger, spool_dir
from .ledger.inflight import AdmissionJournal
from .limits import Limits, create_limits
from .metrics import MetricSources, Metrics
from .providers.base import Provider
from .providers.openai import OpenAIProvider
from .providers.simulated import SimulatedProvider
from .routing import Router, Routing


def _provider_class(protocol: str) -> Callable[[str, ProviderConfig, str | None], Provider]:
    if protocol == "openai":
        return OpenAIProvider
    if protocol == "anthropic":
        from .providers.anthropic import AnthropicProvider

        return AnthropicProvider
    if protocol == "azure":
        from .providers.azure import azure_provider

        return azure_provider
    if protocol == "bedrock":
        from .providers.bedrock import BedrockProvider

        return BedrockProvider
    if protocol == "gemini":
        from .providers.gemini import GeminiProvider

        return GeminiProvider
    if protocol == "vertex":
        from .providers.vertex import VertexProvider

        return VertexProvider
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
        # The listener's connection cap (`edge.EdgeServer` takes these slots) and the
        # admission journal (`api/inflight.InFlight` writes it): here, so metrics see them.
        self.edge_slots = ConnectionSlots(
            connection_cap(settings.edge.max_connections, fd_limit()))
        self.admissions: AdmissionJournal | None = None  # "memory": the ledger keeps nothing
        if settings.ledger.store != "memory":
            self.admissions = AdmissionJournal(spool_dir(settings),
                                               settings.limits.reservation_ttl_s)
        # Getters, not objects: a component replaced after this line is the one read.
        self.metrics = Metrics(settings, MetricSources(
            ledger=lambda: self.ledger,
            limits=lambda: self.limits,
            auth=lambda: self.auth,
            cache=lambda: self.cache,
            circuits=lambda: self.routing.breakers.states(),
            pools=lambda: self.providers,
            edge=self.edge_slots,
            admissions=self.admissions,
        ))
        self.readiness = Readiness(settings, lambda: self.ledger.stats(), self.redis,
                                   self.metrics.dependency_error)
        # Request ids: a random per-process prefix and a counter (os.urandom per request
        # was a measurable syscall); unique across workers and restarts.
        self._rid_prefix = os.urandom(6).hex()
        self._deadlines: Deadlines | None = None
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

    @property
    def deadlines(self) -> Deadlines:
        """The worker's coarse deadlines (`deadline.py`), made on the first use."""
        deadlines = self._deadlines
        if deadlines is None:
            deadlines = self._deadlines = Deadlines(asyncio.get_running_loop())
        return deadlines

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
