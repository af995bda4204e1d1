"""The attempt loop: `run_attempts(steps, attempt, log, ...)` tries models until one answers.

For each step in order it calls `attempt(model)`; the attempt raises
`errors.UpstreamError` when the model failed. Then:

- an error another model cannot fix (`not error.falls_back`: 400, 404, 413, 422 from the
  provider: the request itself is at fault) is raised at once, as it is;
- a provider refusing the gateway's own credentials (`provider_auth_failed`) is not
  retried on that model, but the next step is tried: another provider has its own key;
- any other error (429, 5xx, 529, connect errors, timeouts) is retried on the same model
  while the step has retries left, after `backoff.retry_wait` (the provider's Retry-After
  when it fits in the time left, else 0.5 s, 1 s, 2 s, 4 s with jitter); when the wait
  would not end before the deadline, or the retries are spent, the next step is tried at
  once (no wait between different models);
- when every step failed the last error is raised as a 502 (504 when it was a timeout,
  429 when it was the provider's rate limit), keeping its `upstream_status`, `reason`
  and `retry_after`.

The routing deadline (`deadline_s`, 0 for none) bounds the whole loop, waits included:
an attempt still running when it passes is cancelled, and nothing starts after it; the
request then fails with 504 (`reason="deadline"`). `attempt_timeout(model)` optionally
bounds each attempt (a provider's first-byte or total timeout; `reason="timeout"`).

Circuit breakers (optional) see every attempt: success, failure (retryable errors and
attempt timeouts), or neither (the request's own fault, a deadline cut, a cancellation).
A step whose circuit is open is skipped, unless every step's circuit was open when the
loop began: then all are tried anyway, since an answer from a doubtful model beats none.

For a stream, the attempt is "open the stream and receive its first event": once the
first byte has gone to the client there is no retry, so that part stays out of here.

`AttemptLog` is the caller's record of what happened (for the usage record and metrics),
filled in as the loop goes and complete whether it returns or raises.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, TypeVar

from ..catalog import Model
from ..errors import UpstreamError, UpstreamTimeout
from .backoff import retry_wait
from .circuit import CircuitBreakers
from .plan import Step

T = TypeVar("T")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
# What the loop did after a failed attempt: wait and try the same model again, go on to
# the next model, or give up (the error reached the client).
Action = Literal["retry", "fallback", "stop"]
FailureHook = Callable[[Model, UpstreamError, Action], None]


class Failure:
    """One failed attempt: which model, why (`UpstreamError.reason`: "503", "timeout",
    "connect", ...), the status it would have shown the client, and what came next."""

    __slots__ = ("action", "model", "reason", "status")

    def __init__(self, model: Model, reason: str, status: int, action: Action) -> None:
        self.model = model
        self.reason = reason
        self.status = status
        self.action: Action = action

    def __repr__(self) -> str:
        return f"Failure({self.model.id!r}, {self.reason!r}, {self.status}, {self.action!r})"


class AttemptLog:
    """What one request's attempt loop did.

    `attempts`: attempts started. `model`: the model of the latest attempt, so after a
    success the one that served. `failures`: every failed attempt, in order. `skipped`:
    models passed over because their circuit was open. `started` / `answered`: the clock
    at the start and end of the latest attempt (for a stream, end = first event), for
    `LatencyTracker.observe`. `waited_s`: time spent in backoff waits.
    """

    __slots__ = ("answered", "attempts", "failures", "model", "skipped", "started", "waited_s")

    def __init__(self) -> None:
        self.attempts = 0
        self.model: Model | None = None
        self.failures: list[Failure] = []
        self.skipped: list[Model] = []
        self.started = 0.0
        self.answered = 0.0
        self.waited_s = 0.0

    @property
    def attempt_s(self) -> float:
        """How long the latest attempt took (for a stream: time to first event)."""
        return self.answered - self.started


async def run_attempts(
    steps: Sequence[Step],
    attempt: Callable[[Model], Awaitable[T]],
    log: AttemptLog,
    *,
    deadline_s: float = 0.0,
    breakers: CircuitBreakers | None = None,
    attempt_timeout: Callable[[Model], float] | None = None,
    on_failure: FailureHook | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
) -> T:
    """Try `steps` in order until one attempt returns; see the module docstring."""
    rng = rng or random.Random()
    start = clock()
    end = start + deadline_s if deadline_s > 0 else math.inf
    last: UpstreamError | None = None
    forced = breakers is not None and not any(
        breakers.available(s.model.provider, s.model.id) for s in steps
    )
    for n, step in enumerate(steps):
        model = step.model
        for retry in range(step.retries + 1):
            if clock() >= end:
                raise _deadline_error(deadline_s, log, last)
            if breakers is not None and not breakers.allow(model.provider, model.id) and not forced:
                log.skipped.append(model)
                break
            try:
                result = await _one(model, attempt, log, end, attempt_timeout, clock)
            except UpstreamError as e:
                cut = e.reason == "deadline"
                if breakers is not None:
                    if e.retryable and not cut:
                        breakers.record_failure(model.provider, model.id)
                    else:
                        breakers.release(model.provider, model.id)
                wait = None
                if e.retryable and not cut and retry < step.retries:
                    wait = retry_wait(e, end - clock(), retry, rng)
                action = _action(e, cut, wait, more_steps=n < len(steps) - 1)
                log.failures.append(Failure(model, e.reason, e.status, action))
                if on_failure is not None:
                    on_failure(model, e, action)
                if cut:
                    raise _deadline_error(deadline_s, log, last) from None
                if not e.falls_back:
                    raise
                last = e
                if wait is None:
                    break
                log.waited_s += wait
                await sleep(wait)
                continue
            except BaseException:
                if breakers is not None:
                    breakers.release(model.provider, model.id)
                raise
            if breakers is not None:
                breakers.record_success(model.provider, model.id)
            return result
    raise _exhausted_error(log, last)


def _action(e: UpstreamError, cut: bool, wait: float | None, *, more_steps: bool) -> Action:
    if wait is not None:
        return "retry"
    if e.falls_back and not cut and more_steps:
        return "fallback"  # the next step may still be skipped (circuit) or be too late
    return "stop"


async def _one(
    model: Model,
    attempt: Callable[[Model], Awaitable[T]],
    log: AttemptLog,
    end: float,
    attempt_timeout: Callable[[Model], float] | None,
    clock: Clock,
) -> T:
    """One attempt, bounded by the deadline and the per-attempt limit, whichever is first."""
    log.attempts += 1
    log.model = model
    log.started = clock()
    remaining = end - log.started
    limit = attempt_timeout(model) if attempt_timeout is not None else math.inf
    bound = min(remaining, limit)
    timer: asyncio.Timeout | None = None
    try:
        if math.isinf(bound):
            result = await attempt(model)
        else:
            async with asyncio.timeout(bound) as timer:
                result = await attempt(model)
    except TimeoutError:
        if timer is not None and timer.expired() and limit > remaining:
            raise UpstreamTimeout("The routing deadline passed.", reason="deadline") from None
        # Our per-attempt limit, or a bare TimeoutError from the attempt itself.
        raise UpstreamTimeout(f"Upstream model `{model.id}` timed out.") from None
    log.answered = clock()
    return result


def _deadline_error(
    deadline_s: float, log: AttemptLog, last: UpstreamError | None
) -> UpstreamTimeout:
    detail = f"; last error: {last.message}" if last is not None else ""
    err = UpstreamTimeout(
        f"No model answered within the routing deadline of {deadline_s:g} s "
        f"({log.attempts} attempts{detail}).",
        reason="deadline",
    )
    if last is not None:
        err.upstream_status = last.upstream_status
    return err


def _exhausted_error(log: AttemptLog, last: UpstreamError | None) -> UpstreamError:
    if last is None:  # every step skipped by its circuit, or no step at all
        return UpstreamError("No model is available to serve this request.", reason="unavailable")
    timed_out = isinstance(last, UpstreamTimeout) or last.status == 504
    prefix = f"All {log.attempts} attempts failed; last: " if log.attempts > 1 else ""
    if timed_out:
        err: UpstreamError = UpstreamTimeout(prefix + last.message, reason=last.reason)
        err.upstream_status = last.upstream_status
        err.retry_after = last.retry_after
        return err
    return last.after_attempts(prefix + last.message)  # 502, or the provider's 429
