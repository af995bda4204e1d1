"""Whether the ledger's database is up and, while it is away, when to try it again.

Shared by the flusher (which fails and recovers) and the request path (which, while the
database is away, opens segments that keep their records on disk only).
"""

from __future__ import annotations

import logging
import random
import time

log = logging.getLogger("proxy.ledger")


class Backoff:
    """Exponential backoff with jitter between `bounds` (seconds), from the first failure."""

    __slots__ = ("_delay", "_last_error", "_max", "_min", "retry_at")

    def __init__(self, bounds: tuple[float, float]) -> None:
        self._min, self._max = bounds
        self._delay = self._min
        self.retry_at: float | None = None  # monotonic time of the next attempt; None: up
        self._last_error = ""

    @property
    def up(self) -> bool:
        return self.retry_at is None

    def waiting(self, now: float) -> bool:
        """Away, and not yet time to try again."""
        return self.retry_at is not None and now < self.retry_at

    def failed(self, error: Exception, directory: object) -> None:
        """A write failed for a reason other than its data: wait longer before the next."""
        first = self.retry_at is None
        self._delay = self._min if first else min(self._delay * 2, self._max)
        self.retry_at = time.monotonic() + self._delay * random.uniform(0.8, 1.2)
        reason = f"{type(error).__name__}: {error}"
        if first:
            log.warning("ledger: database unavailable (%s); spooling to %s and retrying",
                        reason, directory)
        elif reason != self._last_error:
            log.warning("ledger: still unavailable, now: %s", reason)
        self._last_error = reason

    def recovered(self) -> None:
        log.info("ledger: database reachable again; spool replayed")
        self.retry_at = None
        self._delay = self._min

    def try_now(self) -> None:
        """One more attempt whatever the backoff said (at close)."""
        self.retry_at = None
