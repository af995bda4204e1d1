"""Metrics across the workers of `serve --workers N`: the shared directory, and its sum.

The parent sets `PROMETHEUS_MULTIPROC_DIR` for its workers (`prepare_multiprocess_dir`);
with it set, prometheus_client keeps each worker's values in files in that directory and
a scrape adds them up (`multiprocess_exposition`). When a worker exits, the parent drops
its live gauges from the sums (`worker_exited`).
"""

from __future__ import annotations

import glob
import os
import tempfile
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest, multiprocess

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"


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


def multiprocess_exposition(path: str) -> bytes:
    """Every process's values in `path`, added up (live gauges of dead ones dropped)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
