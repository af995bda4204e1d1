"""Every Prometheus collector of one gateway process, defined in its registry.

`Collectors` makes the registry (in multiprocess mode only a namespace: the values live in
files, see multiprocess.py) and the counters, histograms and gauges, with the series whose
label values are known up front, including the mirrors of what other components count
themselves (sampling.py fills them). Labels are bounded: routes, catalog models, configured
providers, HTTP statuses, short failure reasons. Never a key id or a user id.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    gc_collector,
    platform_collector,
    process_collector,
)

from ..config import Settings
from .multiprocess import MULTIPROC_ENV

# Request duration and time to first token: 1 ms to 60 s.
LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
)
# The gateway's own time: 50 µs to 1 s (the target is under 1 ms).
OVERHEAD_BUCKETS: Final = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)
ROUTES: Final = ("chat", "embeddings", "messages", "responses", "completions")
COMPONENTS: Final = ("ledger", "limits", "auth", "cache", "readyz")
OTHER: Final = "other"  # the label of anything outside the known set


def _version() -> str:
    try:
        return version("llm-proxy")
    except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        return "dev"


class Collectors:
    """The registry, its collectors, and the label values known up front."""

    def __init__(self, settings: Settings) -> None:
        # No `*_created` twin of every counter and histogram series.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        # In multiprocess mode the values live in files; the registry is only a namespace.
        self.registry = CollectorRegistry(auto_describe=True)
        if self.multiprocess_dir is None:
            process_collector.ProcessCollector(registry=self.registry)
            platform_collector.PlatformCollector(registry=self.registry)
            gc_collector.GCCollector(registry=self.registry)
        # The label values known up front; anything else is recorded as OTHER.
        self.models = frozenset(m.id for m in settings.models)
        self.providers = frozenset(
            n for n, p in settings.providers.items() if settings.region in p.regions)
        self._define(settings)

    def _define(self, settings: Settings) -> None:
        r = self.registry
        route_labels = ("route", "model", "provider")
        self.requests = Counter(
            "proxy_requests", "Requests that reached routing, by the status the client got.",
            (*route_labels, "status"), registry=r)
        self.duration = Histogram(
            "proxy_request_duration_seconds",
            "Time from the request's arrival to its last byte (streams: the whole stream).",
            (*route_labels, "stream"), buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(
            "proxy_time_to_first_token_seconds",
            "Streams: time from the request's arrival to the first upstream event.",
            route_labels, buckets=LATENCY_BUCKETS, registry=r)
        self.overhead = Histogram(
            "proxy_overhead_seconds",
            "The gateway's own time: request time (streams: time to first token) minus the "
            "time spent waiting on upstreams.",
            ("route", "stream"), buckets=OVERHEAD_BUCKETS, registry=r)
        self.tokens = Counter(
            "proxy_tokens", "Tokens by type: prompt (cached included), completion, cached "
            "(prompt tokens read from the provider's cache), cache_write.",
            ("model", "provider", "type"), registry=r)
        self.cost = Counter(
            "proxy_cost_usd", "Spend charged to keys, USD.", ("model", "provider"), registry=r)
        self.savings = Counter(
            "proxy_cache_savings_usd", "What response-cache hits would have cost, USD.",
            ("model", "provider"), registry=r)
        self.cache = Counter(
            "proxy_cache_requests", "Response-cache lookups by result (hit, miss).",
            ("route", "result"), registry=r)
        self.upstream_errors = Counter(
            "proxy_upstream_errors", "Failed upstream attempts by provider and reason.",
            ("provider", "reason"), registry=r)
        self.retries = Counter(
            "proxy_retries", "Retries of the same model after a failed attempt.",
            ("provider", "reason"), registry=r)
        self.fallbacks = Counter(
            "proxy_fallbacks", "Moves to the next model after a failure, by the provider "
            "that failed.", ("provider", "reason"), registry=r)
        self.circuit = Gauge(
            "proxy_circuit_state", "Circuit breaker per provider: 0 closed, 1 half-open, 2 open "
            "(the worst over workers).", ("provider",), multiprocess_mode="livemax", registry=r)
        self.in_flight_requests = Gauge(
            "proxy_requests_in_flight", "Requests being handled.", ("route",),
            multiprocess_mode="livesum", registry=r)
        self.open_streams = Gauge(
            "proxy_open_streams", "Streams being relayed to clients.",
            multiprocess_mode="livesum", registry=r)
        self.ledger_queue = Gauge(
            "proxy_ledger_queue_depth", "Usage records waiting in memory for the database.",
            multiprocess_mode="livesum", registry=r)
        self.ledger_flush = Gauge(
            "proxy_ledger_last_flush_seconds", "Duration of the ledger's last flush (the "
            "slowest over workers).", multiprocess_mode="livemax", registry=r)
        self.redis_errors = Counter(
            "proxy_redis_errors", "Redis operations that failed, by component.",
            ("component",), registry=r)
        self.database_errors = Counter(
            "proxy_database_errors", "Database operations that failed, by component.",
            ("component",), registry=r)
        # Mirrors of the ledger writer's own counters (`LedgerStats`), added to by sampling.
        self.ledger_written = Counter(
            "proxy_ledger_records_written", "Usage records written to the database.",
            registry=r)
        self.ledger_spooled = Counter(
            "proxy_ledger_records_spooled",
            "Usage records spooled to local disk while the database was away.", registry=r)
        self.ledger_replayed = Counter(
            "proxy_ledger_records_replayed",
            "Usage records replayed from the spool into the database.", registry=r)
        self.ledger_quarantined = Counter(
            "proxy_ledger_records_quarantined",
            "Usage records set aside as unwritable (kept on disk for an operator).", registry=r)
        self.ledger_salvaged = Counter(
            "proxy_ledger_records_salvaged",
            "Usage records the database refused, written with their metadata replaced by a "
            "marker (cost kept; the original kept on disk for an operator).", registry=r)
        self.ledger_journal_errors = Counter(
            "proxy_ledger_journal_errors",
            "Failed writes of the ledger's local journal (records not yet in the database "
            "are at risk).", registry=r)
        self.admission_journal_errors = Counter(
            "proxy_admission_journal_errors",
            "Failed writes of the admission journal (a worker killed meanwhile leaves its "
            "requests to the limits' sweeper).", registry=r)
        self.edge_open = Gauge(
            "proxy_edge_connections_open", "Client connections open on the listener.",
            multiprocess_mode="livesum", registry=r)
        self.edge_refused = Counter(
            "proxy_edge_connections_refused",
            "Client connections refused with 503 at the cap (`[edge] max_connections`).",
            registry=r)
        self.upstream_open = Gauge(
            "proxy_upstream_connections_open", "Upstream connections open or being opened, "
            "by provider.", ("provider",), multiprocess_mode="livesum", registry=r)
        self.upstream_idle = Gauge(
            "proxy_upstream_connections_idle", "Upstream connections open and idle (kept for "
            "reuse), by provider.", ("provider",), multiprocess_mode="livesum", registry=r)
        self.upstream_waiting = Gauge(
            "proxy_upstream_requests_waiting", "Requests waiting for an upstream connection "
            "(the provider's pool at `max_connections`).", ("provider",),
            multiprocess_mode="livesum", registry=r)
        info = Gauge("proxy_info", "The gateway's region and version (value 1).",
                     ("region", "version"), multiprocess_mode="livemax", registry=r)
        info.labels(settings.region, _version()).set(1)
        # Series whose label values are known up front exist from the start, at zero, so
        # that rates and ratios are defined before the first event.
        for component in COMPONENTS:
            self.redis_errors.labels(component)
            self.database_errors.labels(component)
        for provider in self.providers:
            self.circuit.labels(provider).set(0)
            for gauge in (self.upstream_open, self.upstream_idle, self.upstream_waiting):
                gauge.labels(provider).set(0)
