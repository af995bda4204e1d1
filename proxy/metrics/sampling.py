"""Copying the state other components keep themselves into collectors.

`Sampling.sample()` reads each component's typed `stats()` (`proxy/stats.py`): the ledger
writer's queue and counters, the Redis and database error counts of the limits, auth and
the response cache, the edge's connection slots, the admission journal's write errors, and
the circuit breakers' `states()`. It runs on every scrape; in a worker of
`serve --workers N` also every second (`tick`), so that a scrape answered by any one
worker sees every worker's numbers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from ..stats import AdmissionStats, DependencyErrors, EdgeStats, LedgerStats, PoolStats, Reports
from .collectors import Collectors

S = TypeVar("S")

CIRCUIT_STATES: Final = {"closed": 0, "half_open": 1, "open": 2}
_SAMPLE_EVERY_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class MetricSources:
    """Where the metrics read what other components count. The gateway's components are
    read through getters, so that a component replaced after the metrics were built (a
    test's stand-in ledger, say) is the one read."""

    ledger: Callable[[], Reports[LedgerStats]]
    limits: Callable[[], Reports[DependencyErrors]]
    auth: Callable[[], Reports[DependencyErrors]]
    cache: Callable[[], Reports[DependencyErrors]]
    circuits: Callable[[], Iterable[tuple[str, str, str]]]  # (provider, model, state)
    pools: Callable[[], Mapping[str, Reports[PoolStats]]]  # provider name -> its provider
    edge: Reports[EdgeStats] | None = None
    admissions: Reports[AdmissionStats] | None = None


class _Mirror:
    """Follows a monotonic count a component keeps and adds its growth to a Counter.

    A replaced source object (or one whose count went down) starts over from zero.
    """

    __slots__ = ("_counter", "_last", "_source")

    def __init__(self, counter: Any) -> None:
        self._counter = counter
        self._source: int | None = None
        self._last: float = 0

    def update(self, source: object, value: float) -> None:
        if id(source) != self._source or value < self._last:
            self._source, self._last = id(source), 0
        if value > self._last:
            self._counter.inc(value - self._last)
            self._last = value


class _Mirrors(Generic[S]):
    """The mirrors of one component's stats: (mirror, the count it follows)."""

    __slots__ = ("_get", "_mirrors")

    def __init__(self, get: Callable[[], Reports[S]],
                 mirrors: list[tuple[Any, Callable[[S], float]]]) -> None:
        self._get = get
        self._mirrors = [(_Mirror(counter), read) for counter, read in mirrors]

    def sample(self) -> S:
        source = self._get()
        stats = source.stats()
        for mirror, read in self._mirrors:
            mirror.update(source, read(stats))
        return stats


def _errors(c: Collectors, component: str) -> list[tuple[Any, Callable[[DependencyErrors],
                                                                         float]]]:
    return [(c.redis_errors.labels(component), lambda s: s.redis_errors),
            (c.database_errors.labels(component), lambda s: s.database_errors)]


class Sampling:
    """The mirrors of other components' counts, and when they are sampled."""

    def __init__(self, collectors: Collectors, sources: MetricSources) -> None:
        c = self._collectors = collectors
        self._circuits = sources.circuits
        self._pools = sources.pools
        self._tick: asyncio.TimerHandle | None = None
        self._ledger = _Mirrors[LedgerStats](sources.ledger, [
            (c.ledger_written, lambda s: s.records_written),
            (c.ledger_spooled, lambda s: s.records_spooled),
            (c.ledger_replayed, lambda s: s.records_replayed),
            (c.ledger_quarantined, lambda s: s.records_quarantined),
            (c.ledger_salvaged, lambda s: s.records_salvaged),
            (c.ledger_journal_errors, lambda s: s.journal_errors),
            (c.database_errors.labels("ledger"), lambda s: s.database_errors),
        ])
        self._components = [_Mirrors[DependencyErrors](get, _errors(c, name)) for name, get in (
            ("limits", sources.limits), ("auth", sources.auth), ("cache", sources.cache))]
        edge, admissions = sources.edge, sources.admissions
        self._edge = None if edge is None else _Mirrors[EdgeStats](
            lambda: edge, [(c.edge_refused, lambda s: s.refused)])
        self._admissions = None if admissions is None else _Mirrors[AdmissionStats](
            lambda: admissions, [(c.admission_journal_errors, lambda s: s.write_errors)])

    def sample(self) -> None:
        """Copy what other components count themselves into collectors."""
        c = self._collectors
        ledger = self._ledger.sample()
        c.ledger_queue.set(ledger.queue_depth)
        c.ledger_flush.set(ledger.last_flush_seconds)
        for component in self._components:
            component.sample()
        if self._edge is not None:
            c.edge_open.set(self._edge.sample().open)
        if self._admissions is not None:
            self._admissions.sample()
        self._sample_circuits()
        self._sample_pools()

    def _sample_circuits(self) -> None:
        """The worst circuit of each provider's models (`CircuitBreakers.states()`)."""
        c = self._collectors
        worst = dict.fromkeys(c.providers, 0)
        for provider, _model, state in self._circuits():
            if provider in worst:
                worst[provider] = max(worst[provider], CIRCUIT_STATES.get(state, 2))
        for provider, value in worst.items():
            c.circuit.labels(provider).set(value)

    def _sample_pools(self) -> None:
        c = self._collectors
        for name, provider in self._pools().items():
            if name in c.providers:
                pool = provider.stats()
                c.upstream_open.labels(name).set(pool.open)
                c.upstream_idle.labels(name).set(pool.idle)
                c.upstream_waiting.labels(name).set(pool.waiting)

    # --- in a worker of several: keep this worker's files current between its scrapes ---

    @property
    def ticking(self) -> bool:
        return self._tick is not None

    def start_ticking(self, sample: Callable[[], None]) -> None:
        """Call `sample` (the metrics' fold and sample) every second from now on."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - called outside the event loop
            return

        def tick() -> None:
            sample()
            self._tick = loop.call_later(_SAMPLE_EVERY_S, tick)

        self._tick = loop.call_later(_SAMPLE_EVERY_S, tick)

    def stop_ticking(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
