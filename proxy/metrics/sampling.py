"""Copying the state other modules keep themselves into collectors.

`sample()` reads the ledger writer's counters (`queue_depth`, `records_written`, ...), the
`redis_errors` and `database_errors` counts on the ledger, limits, auth and cache objects,
and the circuit breakers' `states()`. It runs on every scrape; in a worker of
`serve --workers N` also every second, so that a scrape answered by any one worker sees
every worker's numbers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import Counter

from ..config import Settings
from .collectors import Collectors

if TYPE_CHECKING:
    from ..gateway import Gateway

CIRCUIT_STATES: Final = {"closed": 0, "half_open": 1, "open": 2}
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
    ("records_salvaged", "proxy_ledger_records_salvaged",
     ("Usage records the database refused, written with their metadata replaced by a "
      "marker (cost kept; the original kept on disk for an operator).")),
)
_SAMPLE_EVERY_S: Final = 1.0


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


class Sampling(Collectors):
    """The mirrors of other modules' counters, and when they are sampled."""

    def __init__(self, settings: Settings, gateway: Gateway) -> None:
        super().__init__(settings)
        self._gw = gateway
        self._tick: asyncio.TimerHandle | None = None

        def ledger() -> object:
            return self._gw.ledger

        self._mirrors = [
            _Mirror(Counter(name, what, registry=self.registry), ledger, attr)
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


def _number(obj: object, attr: str) -> float:
    value = getattr(obj, attr, 0)
    return float(value) if isinstance(value, (int, float)) else 0.0
