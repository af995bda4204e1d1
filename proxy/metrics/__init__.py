"""Prometheus metrics of one gateway process: `Metrics`, held by the gateway as `metrics`.

`Metrics` is built in layers, one module each, and adds the `/readyz` checks, the
`/metrics` scrape and `close`:

- collectors.py: the registry and every collector, with bounded label values;
- sampling.py: the state other modules keep themselves, copied into collectors;
- recording.py: the request path's API (`request_done`, `attempts_done`, ...);
- multiprocess.py: `serve --workers N`: the directory the workers share their values in
  (`PROMETHEUS_MULTIPROC_DIR`), and a scrape that adds them up.

With that directory set, a scrape answers every worker's values added up; otherwise this
process's registry.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from prometheus_client import generate_latest

from ..config import Settings
from ..health import Readiness
from .multiprocess import multiprocess_exposition
from .recording import Recording

if TYPE_CHECKING:
    from ..gateway import Gateway


class Metrics(Recording):
    """Every collector of one gateway process, the request-path API, and `/readyz` checks."""

    def __init__(self, settings: Settings, gateway: Gateway) -> None:
        super().__init__(settings, gateway)
        self.readiness = Readiness(settings, gateway, self.dependency_error)

    def close(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        self.fold()  # a worker's last requests reach its files
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
