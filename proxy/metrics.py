"""Prometheus collectors, all of them, and the small API the request path calls.

The request path calls `request_done` once per request with its usage record (which also
writes the access-log line), `attempts_done` with the routing loop's attempt log (upstream
errors, retries, fallbacks), `cache_lookup` per response-cache lookup, `in_flight(route)`
around a request and `stream_opened` / `stream_closed` around a relayed stream. Each looks
up pre-bound label children in a dict, so the hot path costs a dict lookup and a few
increments.

State that other modules keep themselves is copied into collectors by `sample()`: the
ledger writer's counters (`queue_depth`, `records_written`, ...), `redis_errors` and
`database_errors` counts on the ledger, limits, auth and cache objects, and the circuit
breakers' `states()`. It runs on every scrape; in a worker of `serve --workers N` also every
second, so that a scrape answered by any one worker sees every worker's numbers.

With `PROMETHEUS_MULTIPROC_DIR` set (the parent of `serve --workers N` sets it, see
`prepare_multiprocess_dir`), prometheus_client keeps each worker's values in files in that
directory and a scrape adds them up; otherwise one process-local registry serves.
Labels are bounded: routes, catalog models, configured providers, HTTP statuses, short
failure reasons. Never a key id or a user id.
"""

from __future__ import annotations

import asyncio
import glob
import os
import tempfile
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Final, Protocol, Self

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    gc_collector,
    generate_latest,
    multiprocess,
    platform_collector,
    process_collector,
)

from .access_log import AccessLog
from .catalog import NANO
from .config import Settings
from .health import Readiness
from .ledger.record import UsageRecord

if TYPE_CHECKING:
    from .gateway import Gateway

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
# Request duration and time to first token: 1 ms to 60 s.
LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
)
# The gateway's own time: 50 µs to 1 s (the target is under 1 ms).
OVERHEAD_BUCKETS: Final = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)
CIRCUIT_STATES: Final = {"closed": 0, "half_open": 1, "open": 2}
ROUTES: Final = ("chat", "embeddings")
COMPONENTS: Final = ("ledger", "limits", "auth", "cache", "readyz")
OTHER: Final = "other"  # the label of anything outside the known set
# The ledger writer's monotonic counters (plain attributes), mirrored into Counters.
LEDGER_COUNTERS: Final = (
    ("records_written", "proxy_ledger_records_written",
     "Usage records written to the database."),
    ("records_spooled", "proxy_ledger_records_spooled",
     "Usage records spooled to local disk while the database was away."),
    ("records_replayed", "proxy_ledger_records_replayed",
     "Usage records replayed from the spool into the database."),
    ("records_quarantined", "proxy_ledger_records_quarantined",
     "Usage records set aside as unwritable (kept on disk for an operator)."),
)
_MAX_SERIES: Final = 20_000  # past this, label bundles are built per call and not kept
_SAMPLE_EVERY_S: Final = 1.0
_REASON_LEN: Final = 40


def _version() -> str:
    try:
        return version("llm-proxy")
    except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
        return "dev"


def prepare_multiprocess_dir() -> tuple[str, bool]:
    """The directory workers share their metric files in, emptied; and whether it is new.

    An operator's `PROMETHEUS_MULTIPROC_DIR` is used (its old files removed, so a restart
    does not add the previous run's counts); otherwise a fresh temporary directory.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        for path in glob.glob(os.path.join(given, "*.db")):
            os.remove(path)
        return given, False
    return tempfile.mkdtemp(prefix="proxy-metrics-"), True


def worker_exited(pid: int, path: str) -> None:
    """Drop a dead worker's live gauges (in-flight, queue depth) from the sums."""
    multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


class _Failure(Protocol):
    """What `attempts_done` reads of one failed attempt (`routing.attempts.Failure`)."""

    @property
    def model(self) -> Any: ...  # a catalog Model: `.provider`, `.id`

    @property
    def reason(self) -> str: ...


class _AttemptLog(Protocol):
    """What `attempts_done` reads of a routing loop's record (`routing.attempts.AttemptLog`)."""

    @property
    def attempts(self) -> int: ...

    @property
    def model(self) -> Any: ...

    @property
    def failures(self) -> Sequence[_Failure]: ...

    @property
    def skipped(self) -> Sequence[Any]: ...


class _Series:
    """The label children of one (route, model, provider, status, stream)."""

    __slots__ = (
        "cache_write",
        "cached",
        "completion",
        "cost",
        "duration",
        "overhead",
        "prompt",
        "requests",
        "savings",
        "ttft",
    )

    def __init__(self, m: Metrics, route: str, model: str, provider: str, status: int,
                 stream: bool) -> None:
        streamed = "true" if stream else "false"
        self.requests = m.requests.labels(route, model, provider, str(status))
        self.duration = m.duration.labels(route, model, provider, streamed)
        self.ttft = m.ttft.labels(route, model, provider)
        self.overhead = m.overhead.labels(route, streamed)
        self.prompt = m.tokens.labels(model, provider, "prompt")
        self.completion = m.tokens.labels(model, provider, "completion")
        self.cached = m.tokens.labels(model, provider, "cached")
        self.cache_write = m.tokens.labels(model, provider, "cache_write")
        self.cost = m.cost.labels(model, provider)
        self.savings = m.savings.labels(model, provider)


class InFlight:
    """`with metrics.in_flight(route):` counts the request while it runs."""

    __slots__ = ("_gauge",)

    def __init__(self, gauge: Any) -> None:
        self._gauge = gauge

    def __enter__(self) -> Self:
        self._gauge.inc()
        return self

    def __exit__(self, *exc: object) -> None:
        self._gauge.dec()


class _Mirror:
    """Follows a monotonic counter kept as a plain attribute and adds its growth to a Counter.

    A replaced source object (or one whose count went down) starts over from zero.
    """

    __slots__ = ("_attr", "_counter", "_get", "_last", "_source")

    def __init__(self, counter: Any, get: Callable[[], object], attr: str) -> None:
        self._counter = counter
        self._get = get
        self._attr = attr
        self._source: int | None = None
        self._last: float = 0

    def sample(self) -> None:
        obj = self._get()
        value = getattr(obj, self._attr, None)
        if not isinstance(value, (int, float)):
            return
        if id(obj) != self._source or value < self._last:
            self._source, self._last = id(obj), 0
        if value > self._last:
            self._counter.inc(value - self._last)
            self._last = value


class Metrics:
    """Every collector of one gateway process, the request-path API, and `/readyz` checks."""

    def __init__(self, settings: Settings, gateway: Gateway) -> None:
        self._gw = gateway
        # No `*_created` twin of every counter and histogram series.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        # In multiprocess mode the values live in files; the registry is only a namespace.
        self.registry = CollectorRegistry(auto_describe=True)
        if self.multiprocess_dir is None:
            process_collector.ProcessCollector(registry=self.registry)
            platform_collector.PlatformCollector(registry=self.registry)
            gc_collector.GCCollector(registry=self.registry)
        self._models = {m.id for m in settings.models}
        self._providers = {n for n, p in settings.providers.items() if settings.region in p.regions}
        self._series: dict[tuple[str, str, str, int, bool], _Series] = {}
        self._events: dict[tuple[int, str, str], Any] = {}
        self._tick: asyncio.TimerHandle | None = None
        self.access_log = AccessLog() if settings.access_log else None
        self.readiness = Readiness(settings, gateway, self.dependency_error)
        self._define(settings)

    # --- collectors -------------------------------------------------------------------

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
        info = Gauge("proxy_info", "The gateway's region and version (value 1).",
                     ("region", "version"), multiprocess_mode="livemax", registry=r)
        info.labels(settings.region, _version()).set(1)

        def ledger() -> object:
            return self._gw.ledger

        self._mirrors = [
            _Mirror(Counter(name, what, registry=r), ledger, attr)
            for attr, name, what in LEDGER_COUNTERS
        ]
        sources: dict[str, Callable[[], object]] = {
            "ledger": ledger,
            "limits": lambda: self._gw.limits,
            "auth": lambda: self._gw.auth,
            "cache": lambda: getattr(self._gw, "cache", None),
        }
        for component, get in sources.items():
            self._mirrors.append(_Mirror(self.redis_errors.labels(component), get, "redis_errors"))
            self._mirrors.append(
                _Mirror(self.database_errors.labels(component), get, "database_errors"))
        # Series whose label values are known up front exist from the start, at zero, so
        # that rates and ratios are defined before the first event.
        for component in COMPONENTS:
            self.redis_errors.labels(component)
            self.database_errors.labels(component)
        self._cache_results = {
            (route, hit): self.cache.labels(route, "hit" if hit else "miss")
            for route in ROUTES for hit in (True, False)
        }
        self._in_flight = {route: InFlight(self.in_flight_requests.labels(route))
                           for route in ROUTES}
        for provider in self._providers:
            self.circuit.labels(provider).set(0)

    # --- the request path -------------------------------------------------------------

    def request_done(self, route: str, record: UsageRecord, upstream_s: float) -> None:
        """Count one finished request and write its access-log line.

        `upstream_s` is the time spent waiting on upstreams, failed attempts included: for
        a plain call until the answer was in, for a stream until its first event. The
        overhead observed is the request's time (a stream's time to first token) minus it.
        """
        key = (route, record.model, record.provider, record.status, record.stream)
        series = self._series.get(key)
        if series is None:
            series = self._bind(key)
        series.requests.inc()
        duration = record.latency_ms / 1000
        series.duration.observe(duration)
        ttft = None if record.ttft_ms is None else record.ttft_ms / 1000
        if ttft is not None:
            series.ttft.observe(ttft)
        own = ttft if record.stream else duration
        if own is not None:
            series.overhead.observe(max(own - upstream_s, 0.0))
        if record.prompt_tokens:
            series.prompt.inc(record.prompt_tokens)
        if record.completion_tokens:
            series.completion.inc(record.completion_tokens)
        if record.cached_tokens:
            series.cached.inc(record.cached_tokens)
        if record.cache_write_tokens:
            series.cache_write.inc(record.cache_write_tokens)
        if record.cost_nusd:
            series.cost.inc(record.cost_nusd / NANO)
        if record.savings_nusd:
            series.savings.inc(record.savings_nusd / NANO)
        if self.access_log is not None:
            self.access_log.write(route, record, upstream_s)
        if self.multiprocess_dir is not None and self._tick is None:
            self._schedule_sampling()

    def _bind(self, key: tuple[str, str, str, int, bool]) -> _Series:
        route, model, provider, status, stream = key
        series = _Series(
            self,
            route if route in ROUTES else OTHER,
            model if model in self._models else OTHER,
            provider if provider in self._providers else OTHER,
            status if 100 <= status <= 599 else 0,
            stream,
        )
        if len(self._series) < _MAX_SERIES:
            self._series[key] = series
        return series

    def attempts_done(self, log: _AttemptLog) -> None:
        """Count a routing loop's failures once it is over (answered or not).

        Each failed attempt is an upstream error; the attempt after it is a retry when it
        went to the same model, a fallback when to another. Models skipped because their
        circuit was open are fallbacks with reason "circuit_open".
        """
        failures = log.failures
        answered = log.attempts > len(failures)  # the last attempt did not fail
        for i, failure in enumerate(failures):
            provider = failure.model.provider
            self.attempt_failed(provider, failure.reason)
            if i + 1 < len(failures):
                following = failures[i + 1].model
            elif answered:
                following = log.model
            else:
                continue
            if following is failure.model or following.id == failure.model.id:
                self.retry(provider, failure.reason)
            else:
                self.fallback(provider, failure.reason)
        for model in log.skipped:
            self.fallback(model.provider, "circuit_open")

    def attempt_failed(self, provider: str, reason: str) -> None:
        """One upstream attempt failed (`UpstreamError.reason`: a status code, "timeout", ...)."""
        self._event(self.upstream_errors, provider, reason).inc()

    def retry(self, provider: str, reason: str) -> None:
        """The same model is tried again after a failure for `reason`."""
        self._event(self.retries, provider, reason).inc()

    def fallback(self, provider: str, reason: str) -> None:
        """The next model is tried because `provider` failed for `reason`."""
        self._event(self.fallbacks, provider, reason).inc()

    def _event(self, counter: Counter, provider: str, reason: str) -> Any:
        key = (id(counter), provider, reason)
        child = self._events.get(key)
        if child is None:
            child = counter.labels(
                provider if provider in self._providers else OTHER, str(reason)[:_REASON_LEN])
            if len(self._events) < _MAX_SERIES:
                self._events[key] = child
        return child

    def cache_lookup(self, route: str, hit: bool) -> None:
        child = self._cache_results.get((route, hit))
        if child is None:
            child = self.cache.labels(OTHER, "hit" if hit else "miss")
        child.inc()

    def in_flight(self, route: str) -> InFlight:
        tracker = self._in_flight.get(route)
        if tracker is None:
            tracker = InFlight(self.in_flight_requests.labels(OTHER))
        return tracker

    def stream_opened(self) -> None:
        self.open_streams.inc()

    def stream_closed(self) -> None:
        self.open_streams.dec()

    def dependency_error(self, dependency: str, component: str) -> None:
        """A Redis or database operation failed (`dependency`: "redis" or "database")."""
        counter = self.redis_errors if dependency == "redis" else self.database_errors
        counter.labels(component if component in COMPONENTS else OTHER).inc()

    # --- scrape time ------------------------------------------------------------------

    def sample(self) -> None:
        """Copy the state other modules keep as attributes into collectors."""
        ledger = self._gw.ledger
        self.ledger_queue.set(_number(ledger, "queue_depth"))
        self.ledger_flush.set(_number(ledger, "last_flush_seconds"))
        for mirror in self._mirrors:
            mirror.sample()
        self._sample_circuits()

    def _sample_circuits(self) -> None:
        """The worst circuit of each provider's models (`CircuitBreakers.states()`)."""
        breakers = getattr(getattr(self._gw, "routing", None), "breakers", None)
        if breakers is None:
            return
        worst = dict.fromkeys(self._providers, 0)
        for provider, _model, state in breakers.states():
            if provider in worst:
                worst[provider] = max(worst[provider], CIRCUIT_STATES.get(state, 2))
        for provider, value in worst.items():
            self.circuit.labels(provider).set(value)

    def _schedule_sampling(self) -> None:
        """In a worker of several, keep this worker's files current between its scrapes."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - called outside the event loop
            return

        def tick() -> None:
            self.sample()
            self._tick = loop.call_later(_SAMPLE_EVERY_S, tick)

        self._tick = loop.call_later(_SAMPLE_EVERY_S, tick)

    def close(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        if self.access_log is not None:
            self.access_log.flush()

    async def scrape(self) -> bytes:
        """The text exposition: this process's registry, or every worker's files added up."""
        self.sample()
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        if self._tick is None:
            self._schedule_sampling()
        return await asyncio.to_thread(multiprocess_exposition, self.multiprocess_dir)


def multiprocess_exposition(path: str) -> bytes:
    """Every process's values in `path`, added up (live gauges of dead ones dropped)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def _number(obj: object, attr: str) -> float:
    value = getattr(obj, attr, 0)
    return float(value) if isinstance(value, (int, float)) else 0.0

