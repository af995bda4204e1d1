"""Circuit breaking per (provider, model), with Envoy's outlier-detection defaults.

- closed: requests flow. 5 consecutive failures eject the pair (state open).
- open: skipped for the ejection time: 30 s on the first ejection, doubling on each new
  one (60, 120, 240) up to 300 s. Every 30 s spent closed without an ejection forgets one
  doubling, as Envoy does, so a pair that recovered for good starts again at 30 s.
- half_open: once the ejection time is over, `allow` grants exactly one probe. A success
  closes the circuit; a failure ejects it again for the doubled time. A probe that never
  reports back (`release` not called, the task lost) is given up after `probe_timeout_s`
  and the next request becomes the probe.

What counts: `record_failure` for an error that another attempt might not have met
(5xx, 429, connect errors, timeouts); `record_success` for an answer; `release` for an
attempt that says nothing about the provider (the request's own fault, a cancelled
request), so that a probe slot is never left taken.

State is per process (every worker learns on its own; no Redis round trip on the request
path). `states()` feeds a Prometheus collector. The clock is injectable for tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Final, Literal, TypeVar

from ..catalog import Model

State = Literal["closed", "open", "half_open"]
# Gauge values for a Prometheus collector: higher is worse.
STATE_VALUE: Final[dict[State, int]] = {"closed": 0, "half_open": 1, "open": 2}

CONSECUTIVE_FAILURES: Final = 5
BASE_EJECTION_S: Final = 30.0
MAX_EJECTION_S: Final = 300.0
PROBE_TIMEOUT_S: Final = 60.0

M = TypeVar("M", bound=Model)


class _Circuit:
    __slots__ = ("closed_since", "failures", "level", "open_until", "probe_since")

    def __init__(self, now: float) -> None:
        self.failures = 0  # consecutive, while closed
        self.level = 0  # ejections so far, less the ones forgotten while healthy
        self.open_until: float | None = None  # set while open or half-open
        self.probe_since: float | None = None  # a granted probe not yet reported
        self.closed_since = now


class CircuitBreakers:
    """Every (provider, model) pair's circuit; pairs never seen failing are closed."""

    __slots__ = ("_circuits", "_clock", "base_s", "max_s", "probe_timeout_s", "threshold")

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        threshold: int = CONSECUTIVE_FAILURES,
        base_s: float = BASE_EJECTION_S,
        max_s: float = MAX_EJECTION_S,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        self._circuits: dict[tuple[str, str], _Circuit] = {}
        self._clock = clock
        self.threshold = threshold
        self.base_s = base_s
        self.max_s = max_s
        self.probe_timeout_s = probe_timeout_s

    def state(self, provider: str, model: str) -> State:
        c = self._circuits.get((provider, model))
        if c is None or c.open_until is None:
            return "closed"
        return "open" if self._clock() < c.open_until else "half_open"

    def available(self, provider: str, model: str) -> bool:
        """Would `allow` let a request through now? (Does not take the probe.)"""
        c = self._circuits.get((provider, model))
        return c is None or self._admits(c, self._clock())

    def allow(self, provider: str, model: str) -> bool:
        """May a request go to this pair now? In half-open state this takes the one probe."""
        c = self._circuits.get((provider, model))
        if c is None or c.open_until is None:
            return True
        now = self._clock()
        if not self._admits(c, now):
            return False
        c.probe_since = now
        return True

    def record_success(self, provider: str, model: str) -> None:
        c = self._circuits.get((provider, model))
        if c is None:
            return
        if c.open_until is not None:
            c.open_until = None
            c.closed_since = self._clock()
        c.failures = 0
        c.probe_since = None

    def record_failure(self, provider: str, model: str) -> None:
        now = self._clock()
        c = self._circuits.get((provider, model))
        if c is None:
            c = self._circuits[(provider, model)] = _Circuit(now)
        if c.open_until is None:
            c.failures += 1
            if c.failures >= self.threshold:
                self._eject(c, now)
        elif now >= c.open_until:
            self._eject(c, now)  # the probe (or a last-resort attempt) failed: longer this time
        # A failure while still open is a last-resort attempt at an ejected pair: it was
        # expected to fail and says nothing new, so it does not extend the ejection.

    def release(self, provider: str, model: str) -> None:
        """The attempt ended without a verdict on the provider: free the probe slot."""
        c = self._circuits.get((provider, model))
        if c is not None:
            c.probe_since = None

    def reopens_at(self, provider: str, model: str) -> float:
        """When an ejected pair takes a probe again (the clock's time); 0 if not ejected."""
        c = self._circuits.get((provider, model))
        return c.open_until if c is not None and c.open_until is not None else 0.0

    def order(self, models: Iterable[M]) -> list[M]:
        """The models with available ones first (their order kept), then the ejected ones
        by how soon they take a probe again."""
        ready: list[M] = []
        ejected: list[M] = []
        for m in models:
            (ready if self.available(m.provider, m.id) else ejected).append(m)
        ejected.sort(key=lambda m: self.reopens_at(m.provider, m.id))
        return ready + ejected

    def states(self) -> list[tuple[str, str, State]]:
        """(provider, model, state) of every pair that has failed at least once."""
        return [(p, m, self.state(p, m)) for (p, m) in self._circuits]

    def _admits(self, c: _Circuit, now: float) -> bool:
        if c.open_until is None:
            return True
        if now < c.open_until:
            return False
        return c.probe_since is None or now - c.probe_since >= self.probe_timeout_s

    def _eject(self, c: _Circuit, now: float) -> None:
        if c.open_until is None:
            # Forget one doubling per base interval spent healthy since the last close.
            healthy = int((now - c.closed_since) // self.base_s)
            c.level = max(0, c.level - healthy)
        duration = min(self.max_s, self.base_s * 2**c.level)
        c.level = min(c.level + 1, 32)
        c.open_until = now + duration
        c.probe_since = None
        c.failures = 0
