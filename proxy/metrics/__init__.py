"""Prometheus metrics of one gateway process: `Metrics`, held by the gateway as `metrics`.

`Metrics` is the one class to read. It owns three collaborators, one module each:

- collectors.py, `Collectors`: the registry and every collector, with bounded label values;
- recording.py, `Recording`: the request path's counting (`request_done`,
  `attempts_done`, ...), pre-bound label children and the numbers not yet folded in;
- sampling.py, `Sampling`: the state other components keep themselves, read through their
  typed `stats()` (`MetricSources`, built by the gateway) and copied into collectors;

and multiprocess.py: `serve --workers N`: the directory the workers share their values in
(`PROMETHEUS_MULTIPROC_DIR`), and a scrape that adds them up. With that directory set, a
scrape answers every worker's values added up; otherwise this process's registry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import generate_latest

from ..access_log import AccessLog
from ..config import Settings
from ..ledger.record import UsageRecord
from .collectors import Collectors
from .multiprocess import multiprocess_exposition
from .recording import AttemptLogView, InFlight, Recording
from .sampling import MetricSources, Sampling

__all__ = ["InFlight", "MetricSources", "Metrics"]


class Metrics:
    """Every collector of one gateway process, the request path's calls, and the scrape."""

    def __init__(self, settings: Settings, sources: MetricSources) -> None:
        self.collectors = Collectors(settings)
        self.multiprocess_dir = self.collectors.multiprocess_dir
        self._recording = Recording(self.collectors,
                                    fold_at_once=self.multiprocess_dir is not None)
        self._sampling = Sampling(self.collectors, sources)
        self.access_log = AccessLog() if settings.access_log else None
        # The request path's calls that only pass on to `Recording` are its own methods,
        # bound here: a Python call less each, several a request.
        recording = self._recording
        self.attempts_done: Callable[[AttemptLogView], None] = recording.attempts_done
        """Count a routing loop's failures once it is over (`Recording.attempts_done`)."""
        self.cache_lookup: Callable[[str, bool], None] = recording.cache_lookup
        self.in_flight: Callable[[str], InFlight] = recording.in_flight
        """`with metrics.in_flight(route):` counts the request while it runs."""
        self.stream_opened: Callable[[], None] = recording.stream_opened
        self.stream_closed: Callable[[], None] = recording.stream_closed
        self.dependency_error: Callable[[str, str], None] = recording.dependency_error
        """A Redis or database operation failed (`dependency`: "redis" or "database")."""

    # --- the request path -------------------------------------------------------------------

    def request_done(self, route: str, record: UsageRecord, upstream_s: float) -> None:
        """Count one finished request and write its access-log line.

        `upstream_s` is the time spent waiting on upstreams, failed attempts included: for
        a plain call until the answer was in, for a stream until its first event. The
        overhead observed is the request's time (a stream's time to first token) minus it.
        """
        self._recording.request_done(route, record, upstream_s)
        if self.access_log is not None:
            self.access_log.write(route, record, upstream_s)
        if self.multiprocess_dir is not None and not self._sampling.ticking:
            self._sampling.start_ticking(self.sample)

    # --- scrape and lifecycle ---------------------------------------------------------------

    def sample(self) -> None:
        """Fold the request path's numbers in and copy other components' stats."""
        self._recording.fold()
        self._sampling.sample()

    async def scrape(self) -> bytes:
        """The text exposition: this process's registry, or every worker's files added up."""
        self.sample()
        if self.multiprocess_dir is None:
            return generate_latest(self.collectors.registry)
        if not self._sampling.ticking:
            self._sampling.start_ticking(self.sample)
        return await asyncio.to_thread(multiprocess_exposition, self.multiprocess_dir)

    def close(self) -> None:
        self._sampling.stop_ticking()
        self._recording.fold()  # a worker's last requests reach its files
        if self.access_log is not None:
            self.access_log.flush()
