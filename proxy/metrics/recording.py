"""The request path's API: what it records, each call a dict lookup and a few increments.

The request path calls `request_done` once per request with its usage record (which also
writes the access-log line), `attempts_done` with the routing loop's attempt log (upstream
errors, retries, fallbacks), `cache_lookup` per response-cache lookup, `in_flight(route)`
around a request and `stream_opened` / `stream_closed` around a relayed stream. Each looks
up pre-bound label children in a dict, so the hot path costs a dict lookup and a few
increments. Label values outside the known set are recorded as `other`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol, Self

from prometheus_client import Counter

from ..access_log import AccessLog
from ..catalog import NANO
from ..config import Settings
from ..ledger.record import UsageRecord
from .collectors import COMPONENTS, OTHER, ROUTES, Collectors
from .sampling import Sampling

if TYPE_CHECKING:
    from ..gateway import Gateway

_MAX_SERIES: Final = 20_000  # past this, label bundles are built per call and not kept
_REASON_LEN: Final = 40


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

    def __init__(self, m: Collectors, route: str, model: str, provider: str, status: int,
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


class Recording(Sampling):
    """The pre-bound label children of the request path, and the calls that count on them."""

    def __init__(self, settings: Settings, gateway: Gateway) -> None:
        super().__init__(settings, gateway)
        self._series: dict[tuple[str, str, str, int, bool], _Series] = {}
        self._events: dict[tuple[int, str, str], Any] = {}
        self.access_log = AccessLog() if settings.access_log else None
        self._cache_results = {
            (route, hit): self.cache.labels(route, "hit" if hit else "miss")
            for route in ROUTES for hit in (True, False)
        }
        self._in_flight = {route: InFlight(self.in_flight_requests.labels(route))
                           for route in ROUTES}

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
