"""`Routing`: the per-process routing state (circuits, latency) and the two calls on it.

One `Routing` per process, held on the gateway; it owns no I/O. `plan` orders a route for
one request, `run` tries the steps, `observe` feeds the latency ranking after an answer,
`stream_failed` counts a failure that came after the first byte (too late to retry, not
too late to count against the provider's circuit).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from ..catalog import Model
from ..errors import UpstreamError
from .resolve import Route
from ..wire import RequestyMeta
from .attempts import AttemptLog, Clock, Failure, FailureHook, Sleep, run_attempts
from .circuit import CircuitBreakers
from .latency import LatencyTracker
from .plan import Step, plan, sticky_key

T = TypeVar("T")


class Routing:
    __slots__ = ("_clock", "_rng", "_sleep", "breakers", "latency", "on_failure")

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        on_failure: FailureHook | None = None,
    ) -> None:
        self.breakers = CircuitBreakers(clock=clock)
        self.latency = LatencyTracker(clock=clock)
        # Called once per failed attempt (model, error, action): metrics counters by
        # (model.provider, error.reason), split by what came next, belong here.
        self.on_failure = on_failure
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()

    def plan(self, route: Route, meta: RequestyMeta | None = None) -> list[Step]:
        """The try order for one request (strategy, stickiness, latency, circuit state)."""
        return plan(
            route,
            sticky=sticky_key(meta) if meta is not None else None,
            breakers=self.breakers,
            latency=self.latency,
            rng=self._rng,
        )

    async def run(
        self,
        steps: Sequence[Step],
        attempt: Callable[[Model], Awaitable[T]],
        log: AttemptLog,
        *,
        deadline_s: float = 0.0,
        attempt_timeout: Callable[[Model], float] | None = None,
    ) -> T:
        """`attempts.run_attempts` with this process's circuits, clock and failure hook."""
        return await run_attempts(
            steps,
            attempt,
            log,
            deadline_s=deadline_s,
            breakers=self.breakers,
            attempt_timeout=attempt_timeout,
            on_failure=self.on_failure,
            clock=self._clock,
            sleep=self._sleep,
            rng=self._rng,
        )

    def observe(self, log: AttemptLog, completion_tokens: int, *, stream: bool) -> None:
        """Feed the latency ranking once the answer is complete (call it then, not before).

        For a stream, TTFT is the attempt's time to first event and the duration runs to
        now (the last event); a non-streamed answer's duration is the attempt itself.
        """
        if log.model is None:
            return
        if stream:
            self.latency.observe(
                log.model.id, log.attempt_s, completion_tokens, self._clock() - log.started
            )
        else:
            self.latency.observe(log.model.id, None, completion_tokens, log.attempt_s)

    def stream_failed(self, log: AttemptLog, error: UpstreamError) -> None:
        """A stream broke after its first byte: count it against the model that served."""
        model = log.model
        if model is None:
            return
        log.failures.append(Failure(model, error.reason, error.status, "stop"))
        if error.retryable:
            self.breakers.record_failure(model.provider, model.id)
        if self.on_failure is not None:
            self.on_failure(model, error, "stop")
