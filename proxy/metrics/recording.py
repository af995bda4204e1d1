"""The request path's counting: each call a dict lookup and a few increments.

`Recording` is what `Metrics` hands the request path's calls to: `request_done` once per
request with its usage record, `attempts_done` with the routing loop's attempt log (upstream
errors, retries, fallbacks), `cache_lookup` per response-cache lookup, `in_flight(route)`
around a request and `stream_opened` / `stream_closed` around a relayed stream. Each looks
up pre-bound label children in a dict, so the hot path costs a dict lookup and a few
increments. Label values outside the known set are recorded as `other`.

In one process, `request_done` adds to plain numbers of its series (`_Series`), not to the
collectors: a prometheus_client increment takes a lock and an observation walks the buckets
in Python, about 7 µs a request in all. The numbers go into the collectors (`fold`) before
every scrape and at close. A worker of several folds at once: a scrape answered by another
worker reads this one's files, and must see every request already answered.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any, Final, Protocol, Self

from prometheus_client import Counter

from ..catalog import NANO
from ..ledger.record import UsageRecord
from .collectors import COMPONENTS, OTHER, ROUTES, Collectors

_MAX_SERIES: Final = 20_000  # past this, label bundles are built per call and not kept
_REASON_LEN: Final = 40


class FailureView(Protocol):
    """What `attempts_done` reads of one failed attempt (`routing.attempts.Failure`)."""

    @property
    def model(self) -> Any: ...  # a catalog Model: `.provider`, `.id`

    @property
    def reason(self) -> str: ...


class AttemptLogView(Protocol):
    """What `attempts_done` reads of a routing loop's record (`routing.attempts.AttemptLog`)."""

    @property
    def attempts(self) -> int: ...

    @property
    def model(self) -> Any: ...

    @property
    def failures(self) -> Sequence[FailureView]: ...

    @property
    def skipped(self) -> Sequence[Any]: ...


class _Observations:
    """A histogram child's observations not yet added to it: a count a bucket, and the sum."""

    __slots__ = ("_bounds", "_child", "_counts", "_sum")

    @staticmethod
    def of(child: Any) -> _Observations | _Direct:
        """Deferred where the child has the parts `fold` adds to (prometheus_client's own
        attributes, not its API); observed at once where a release has renamed them."""
        try:
            child._buckets, child._sum  # noqa: B018 - present, or a release renamed them
            return _Observations(child)
        except AttributeError:
            return _Direct(child)

    def __init__(self, child: Any) -> None:
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)  # the last is +Inf
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1  # the first bound >= value: `le`
        self._sum += value

    def fold(self) -> None:
        # prometheus_client has no public call that adds many observations at once; a
        # Histogram child keeps one value a bucket (`_buckets`, not cumulative) and `_sum`.
        counts = self._counts
        for i, n in enumerate(counts):
            if n:
                self._child._buckets[i].inc(n)
                counts[i] = 0
        if self._sum:
            self._child._sum.inc(self._sum)
            self._sum = 0.0


class _Direct:
    """A histogram child observed at once (see `_Observations.of`)."""

    __slots__ = ("observe",)

    def __init__(self, child: Any) -> None:
        self.observe = child.observe

    def fold(self) -> None:
        pass


class _Series:
    """The label children of one (route, model, provider, status, stream), and what
    `request_done` added since the last `fold`."""

    __slots__ = (
        "_cache_write",
        "_cached",
        "_completion",
        "_cost",
        "_prompt",
        "_requests",
        "_savings",
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
        self.duration = _Observations.of(m.duration.labels(route, model, provider, streamed))
        self.ttft = _Observations.of(m.ttft.labels(route, model, provider))
        self.overhead = _Observations.of(m.overhead.labels(route, streamed))
        self.prompt = m.tokens.labels(model, provider, "prompt")
        self.completion = m.tokens.labels(model, provider, "completion")
        self.cached = m.tokens.labels(model, provider, "cached")
        self.cache_write = m.tokens.labels(model, provider, "cache_write")
        self.cost = m.cost.labels(model, provider)
        self.savings = m.savings.labels(model, provider)
        self._reset()

    def _reset(self) -> None:
        self._requests = self._prompt = self._completion = self._cached = 0
        self._cache_write = self._cost = self._savings = 0

    def record(self, r: UsageRecord, duration: float, ttft: float | None,
               overhead: float | None) -> bool:
        """Count one request; True if it is the first since the last fold."""
        first = not self._requests
        self._requests += 1
        self.duration.observe(duration)
        if ttft is not None:
            self.ttft.observe(ttft)
        if overhead is not None:
            self.overhead.observe(overhead)
        self._prompt += r.prompt_tokens
        self._completion += r.completion_tokens
        self._cached += r.cached_tokens
        self._cache_write += r.cache_write_tokens
        self._cost += r.cost_nusd
        self._savings += r.savings_nusd
        return first

    def fold(self) -> None:
        self.requests.inc(self._requests)
        self.duration.fold()
        self.ttft.fold()
        self.overhead.fold()
        for child, n in ((self.prompt, self._prompt), (self.completion, self._completion),
                         (self.cached, self._cached), (self.cache_write, self._cache_write)):
            if n:
                child.inc(n)
        if self._cost:
            self.cost.inc(self._cost / NANO)
        if self._savings:
            self.savings.inc(self._savings / NANO)
        self._reset()


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


class Recording:
    """The pre-bound label children of the request path, and the calls that count on them.

    `fold_at_once`: in a worker of several, a series goes into the collectors at once (the
    files another worker's scrape reads), not at the next `fold`.
    """

    def __init__(self, collectors: Collectors, *, fold_at_once: bool) -> None:
        self._c = collectors
        self._models = collectors.models
        self._providers = collectors.providers
        self._fold_at_once = fold_at_once
        self._series: dict[tuple[str, str, str, int, bool], _Series] = {}
        self._unfolded: list[_Series] = []  # series with numbers not yet in the collectors
        self._events: dict[tuple[int, str, str], Any] = {}
        self._cache_results = {
            (route, hit): collectors.cache.labels(route, "hit" if hit else "miss")
            for route in ROUTES for hit in (True, False)
        }
        self._in_flight = {route: InFlight(collectors.in_flight_requests.labels(route))
                           for route in ROUTES}

    def request_done(self, route: str, record: UsageRecord, upstream_s: float) -> None:
        """Count one finished request (`Metrics.request_done`)."""
        key = (route, record.model, record.provider, record.status, record.stream)
        series = self._series.get(key)
        kept = True
        if series is None:
            series = self._bind(key)
            kept = key in self._series
        duration = record.latency_ms / 1000
        ttft = None if record.ttft_ms is None else record.ttft_ms / 1000
        own = ttft if record.stream else duration
        if series.record(record, duration, ttft,
                         None if own is None else max(own - upstream_s, 0.0)):
            if kept and not self._fold_at_once:
                self._unfolded.append(series)
            else:  # another worker's scrape reads it now, or built for this call only
                series.fold()

    def fold(self) -> None:
        """Add what `request_done` counted since the last fold to the collectors."""
        unfolded, self._unfolded = self._unfolded, []
        for series in unfolded:
            series.fold()

    def _bind(self, key: tuple[str, str, str, int, bool]) -> _Series:
        route, model, provider, status, stream = key
        series = _Series(
            self._c,
            route if route in ROUTES else OTHER,
            model if model in self._models else OTHER,
            provider if provider in self._providers else OTHER,
            status if 100 <= status <= 599 else 0,
            stream,
        )
        if len(self._series) < _MAX_SERIES:
            self._series[key] = series
        return series

    def attempts_done(self, log: AttemptLogView) -> None:
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
        self._event(self._c.upstream_errors, provider, reason).inc()

    def retry(self, provider: str, reason: str) -> None:
        """The same model is tried again after a failure for `reason`."""
        self._event(self._c.retries, provider, reason).inc()

    def fallback(self, provider: str, reason: str) -> None:
        """The next model is tried because `provider` failed for `reason`."""
        self._event(self._c.fallbacks, provider, reason).inc()

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
            child = self._c.cache.labels(OTHER, "hit" if hit else "miss")
        child.inc()

    def in_flight(self, route: str) -> InFlight:
        tracker = self._in_flight.get(route)
        if tracker is None:
            tracker = InFlight(self._c.in_flight_requests.labels(OTHER))
        return tracker

    def stream_opened(self) -> None:
        self._c.open_streams.inc()

    def stream_closed(self) -> None:
        self._c.open_streams.dec()

    def dependency_error(self, dependency: str, component: str) -> None:
        """A Redis or database operation failed (`dependency`: "redis" or "database")."""
        counter = self._c.redis_errors if dependency == "redis" else self._c.database_errors
        counter.labels(component if component in COMPONENTS else OTHER).inc()
