"""The attempt loop: exact attempts, waits and errors under scripted failure sequences."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest

from proxy.catalog import Model, _model
from proxy.config import ModelConfig
from proxy.errors import PROVIDER_AUTH_FAILED, UpstreamError, UpstreamTimeout
from proxy.routing import AttemptLog, CircuitBreakers, Routing, Step, run_attempts


def model(mid: str, provider: str = "p") -> Model:
    return _model(ModelConfig(id=mid, provider=provider, upstream=mid))


A, B, C = model("a"), model("b", "q"), model("c", "r")


def e503(retry_after: float | None = None) -> UpstreamError:
    return UpstreamError("boom", status=502, upstream_status=503, retry_after=retry_after,
                         reason="503")


def e429(retry_after: float | None = None) -> UpstreamError:
    return UpstreamError("slow down", status=429, upstream_status=429, retry_after=retry_after,
                         reason="429")


def e400() -> UpstreamError:
    return UpstreamError("bad body", status=400, upstream_status=400, reason="400")


class World:
    """A fake clock, a sleep that only advances it, and scripted attempts per model."""

    def __init__(self, script: dict[str, Sequence[UpstreamError | str]],
                 cost_s: float = 0.0) -> None:
        self.now = 0.0
        self.waits: list[float] = []
        self.calls: list[str] = []
        self.starts: list[float] = []
        self.script = {k: list(v) for k, v in script.items()}
        self.cost_s = cost_s  # how long each attempt takes, on the fake clock

    def clock(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.waits.append(s)
        self.now += s

    async def attempt(self, m: Model) -> str:
        self.calls.append(m.id)
        self.starts.append(self.now)
        self.now += self.cost_s
        outcome = self.script[m.id].pop(0) if self.script[m.id] else "ok-" + m.id
        if isinstance(outcome, UpstreamError):
            raise outcome
        return outcome

    async def run(self, steps: Sequence[Step], log: AttemptLog | None = None,
                  deadline_s: float = 0.0, breakers: CircuitBreakers | None = None) -> str:
        return await run_attempts(
            steps, self.attempt, log or AttemptLog(), deadline_s=deadline_s,
            breakers=breakers, clock=self.clock, sleep=self.sleep, rng=random.Random(3),
        )


async def test_first_success_returns_with_one_attempt() -> None:
    w = World({"a": []})
    log = AttemptLog()
    assert await w.run([Step(A, 3)], log) == "ok-a"
    assert (log.attempts, log.model, log.failures, w.waits) == (1, A, [], [])


async def test_retries_on_the_same_model_with_backoff_then_succeeds() -> None:
    w = World({"a": [e503(), e503(), e503()]})
    log = AttemptLog()
    assert await w.run([Step(A, 3), Step(B, 0)], log) == "ok-a"
    assert w.calls == ["a", "a", "a", "a"]
    assert len(w.waits) == 3
    for wait, base in zip(w.waits, (0.5, 1.0, 2.0), strict=True):
        assert base * 0.9 <= wait <= base * 1.1
    assert log.attempts == 4 and [f.reason for f in log.failures] == ["503"] * 3


async def test_spent_retries_move_on_to_the_next_step_without_waiting() -> None:
    w = World({"a": [e503(), e503()], "b": [e503()], "c": []})
    log = AttemptLog()
    assert await w.run([Step(A, 1), Step(B, 0), Step(C, 0)], log) == "ok-c"
    assert w.calls == ["a", "a", "b", "c"]
    assert len(w.waits) == 1  # only between a's two tries
    assert log.model is C and log.attempts == 4
    assert [(f.model.id, f.reason) for f in log.failures] == [("a", "503"), ("a", "503"),
                                                              ("b", "503")]


async def test_non_retryable_error_is_raised_at_once_as_it_is() -> None:
    w = World({"a": [e400()], "b": []})
    with pytest.raises(UpstreamError) as info:
        await w.run([Step(A, 5), Step(B, 5)])
    assert info.value.status == 400
    assert w.calls == ["a"] and w.waits == []


def auth_failed() -> UpstreamError:
    """A provider refusing the gateway's key, as `providers/faults.py` maps it."""
    return UpstreamError("refused the gateway's credentials", status=502,
                         upstream_status=401, code=PROVIDER_AUTH_FAILED, reason="401")


async def test_a_provider_refusing_the_gateways_key_falls_back_without_a_retry() -> None:
    """Another provider has its own key: the next step answers, and the refused model is
    not tried again (its retries would meet the same key)."""
    w = World({"a": [auth_failed()], "b": []})
    log = AttemptLog()
    assert await w.run([Step(A, 3), Step(B, 0)], log) == "ok-b"
    assert w.calls == ["a", "b"] and w.waits == []
    assert [(f.model.id, f.action) for f in log.failures] == [("a", "fallback")]


async def test_when_every_provider_refuses_the_gateways_key_the_client_is_told_so() -> None:
    w = World({"a": [auth_failed()], "b": [auth_failed()]})
    with pytest.raises(UpstreamError) as info:
        await w.run([Step(A, 2), Step(B, 2)])
    assert w.calls == ["a", "b"]
    assert (info.value.status, info.value.code) == (502, PROVIDER_AUTH_FAILED)


@pytest.mark.parametrize("status", [401, 413])
async def test_request_errors_do_not_fall_back(status: int) -> None:
    err = UpstreamError("no", status=status, upstream_status=status, reason=str(status))
    w = World({"a": [err], "b": []})
    with pytest.raises(UpstreamError):
        await w.run([Step(A, 0), Step(B, 0)])
    assert w.calls == ["a"]


@pytest.mark.parametrize("err", [
    e429(),
    UpstreamError("overloaded", upstream_status=529, reason="529"),
    UpstreamError("no route", reason="connect"),
    UpstreamTimeout("slow"),
])
async def test_transient_errors_fall_back_to_the_next_model(err: UpstreamError) -> None:
    w = World({"a": [err], "b": []})
    assert await w.run([Step(A, 0), Step(B, 0)]) == "ok-b"
    assert w.calls == ["a", "b"]


async def test_retry_after_shorter_than_the_deadline_is_waited_for() -> None:
    w = World({"a": [e429(retry_after=7.0)]})
    assert await w.run([Step(A, 2)], deadline_s=60) == "ok-a"
    assert w.waits == [7.0]


async def test_retry_after_longer_than_the_deadline_moves_on_at_once() -> None:
    w = World({"a": [e429(retry_after=90.0)], "b": []})
    assert await w.run([Step(A, 2), Step(B, 0)], deadline_s=60) == "ok-b"
    assert w.calls == ["a", "b"] and w.waits == []


async def test_everything_failing_raises_the_last_error_as_502() -> None:
    w = World({"a": [e429()] * 3, "b": [e503(retry_after=1.0)]})
    log = AttemptLog()
    with pytest.raises(UpstreamError) as info:
        await w.run([Step(A, 2), Step(B, 0)], log)
    err = info.value
    assert err.status == 502 and err.upstream_status == 503 and err.reason == "503"
    assert "All 4 attempts failed" in err.message
    assert log.attempts == 4 and len(log.failures) == 4


async def test_everything_failing_with_a_rate_limit_last_is_a_429_with_its_retry_after() -> None:
    # Issue 16: a provider's 429 reached the client as a 502, which SDKs retry at once.
    w = World({"a": [e503()] * 3, "b": [e429(retry_after=7.0)]})
    with pytest.raises(UpstreamError) as info:
        await w.run([Step(A, 2), Step(B, 0)], AttemptLog())
    err = info.value
    assert (err.status, err.upstream_status, err.reason, err.retry_after) == (429, 429, "429", 7.0)
    assert err.headers["retry-after"] == "7"
    assert "All 4 attempts failed" in err.message


async def test_a_last_timeout_is_a_504() -> None:
    w = World({"a": [e503()], "b": [UpstreamTimeout("slow")]})
    with pytest.raises(UpstreamError) as info:
        await w.run([Step(A, 0), Step(B, 0)])
    assert info.value.status == 504 and info.value.reason == "timeout"


async def test_deadline_holds_across_retries_and_waits() -> None:
    # Each attempt takes 4 s (on the fake clock) and fails. With a 10 s deadline: a at 0,
    # wait ~0.5, a at ~4.5, wait ~1, a at ~9.5; then the deadline has passed, so b never
    # starts. (A real attempt still running at the deadline is cancelled: next test.)
    w = World({"a": [e503()] * 10, "b": []}, cost_s=4.0)
    log = AttemptLog()
    with pytest.raises(UpstreamError) as info:
        await w.run([Step(A, 10), Step(B, 10)], log, deadline_s=10)
    assert info.value.status == 504 and info.value.reason == "deadline"
    assert info.value.upstream_status == 503  # what the last attempt met
    assert w.calls == ["a", "a", "a"]
    assert all(start < 10.0 for start in w.starts)
    assert sum(w.waits) + 4.0 * 2 < 10.0  # no wait was allowed to cross the deadline


async def test_deadline_cancels_a_hanging_attempt() -> None:
    async def hang(m: Model) -> str:
        await asyncio.Event().wait()
        return "never"

    log = AttemptLog()
    cb = CircuitBreakers()
    with pytest.raises(UpstreamError) as info:
        await run_attempts([Step(A, 3), Step(B, 3)], hang, log, deadline_s=0.05, breakers=cb)
    assert info.value.status == 504 and info.value.reason == "deadline"
    assert log.attempts == 1 and log.failures[0].reason == "deadline"
    # a deadline cut is not the provider's fault: it does not count against its circuit
    assert cb.states() == []


async def test_attempt_timeout_counts_as_a_timeout_and_falls_back() -> None:
    async def slow_a(m: Model) -> str:
        if m.id == "a":
            await asyncio.sleep(10)
        return "ok-" + m.id

    log = AttemptLog()
    cb = CircuitBreakers()
    result = await run_attempts([Step(A, 0), Step(B, 0)], slow_a, log,
                                attempt_timeout=lambda m: 0.02, breakers=cb)
    assert result == "ok-b"
    assert [(f.model.id, f.reason, f.status) for f in log.failures] == [("a", "timeout", 504)]
    assert cb.states() == [("p", "a", "closed")]  # one failure on record


async def test_a_bare_timeout_error_from_the_attempt_becomes_an_upstream_timeout() -> None:
    async def raises(m: Model) -> str:
        if m.id == "a":
            raise TimeoutError
        return "ok"

    log = AttemptLog()
    assert await run_attempts([Step(A, 0), Step(B, 0)], raises, log) == "ok"
    assert log.failures[0].reason == "timeout"


async def test_circuit_counts_failures_and_successes() -> None:
    cb = CircuitBreakers(clock=lambda: 0.0)
    w = World({"a": [e503()] * 5})
    with pytest.raises(UpstreamError):
        await w.run([Step(A, 4)], breakers=cb)
    assert cb.state("p", "a") == "open"
    # after five failed tries the circuit opened; nothing else was left, so no skip
    assert w.calls == ["a"] * 5


async def test_ejected_step_is_skipped_when_another_is_available() -> None:
    cb = CircuitBreakers(clock=lambda: 0.0)
    for _ in range(5):
        cb.record_failure("p", "a")
    w = World({"a": [], "b": [e503()]})
    log = AttemptLog()
    with pytest.raises(UpstreamError):
        await w.run([Step(B, 0), Step(A, 0)], log, breakers=cb)
    assert w.calls == ["b"] and log.skipped == [A]


async def test_everything_ejected_is_tried_anyway() -> None:
    cb = CircuitBreakers(clock=lambda: 0.0)
    for m in ("a", "b"):
        for _ in range(5):
            cb.record_failure("p" if m == "a" else "q", m)
    w = World({"a": [e503()], "b": []})
    assert await w.run([Step(A, 0), Step(B, 0)], breakers=cb) == "ok-b"
    assert w.calls == ["a", "b"]
    assert cb.state("q", "b") == "closed"  # an answer closes it


async def test_half_open_probe_success_closes_the_circuit() -> None:
    now = [0.0]
    cb = CircuitBreakers(clock=lambda: now[0])
    for _ in range(5):
        cb.record_failure("p", "a")
    now[0] = 30.1
    w = World({"a": [], "b": []})
    assert await w.run([Step(A, 0), Step(B, 0)], breakers=cb) == "ok-a"
    assert cb.state("p", "a") == "closed"


async def test_request_errors_free_the_probe_without_a_verdict() -> None:
    now = [0.0]
    cb = CircuitBreakers(clock=lambda: now[0])
    for _ in range(5):
        cb.record_failure("p", "a")
    now[0] = 30.1
    w = World({"a": [e400()]})
    with pytest.raises(UpstreamError):
        await w.run([Step(A, 0), Step(B, 0)], breakers=cb)
    assert cb.state("p", "a") == "half_open" and cb.allow("p", "a")


async def test_cancelled_request_frees_the_probe() -> None:
    now = [0.0]
    cb = CircuitBreakers(clock=lambda: now[0])
    for _ in range(5):
        cb.record_failure("p", "a")
    now[0] = 30.1

    async def cancelled(m: Model) -> str:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await run_attempts([Step(A, 0)], cancelled, AttemptLog(), breakers=cb)
    assert cb.allow("p", "a")


async def test_failure_hook_sees_every_failed_attempt() -> None:
    seen: list[tuple[str, str, str]] = []
    r = Routing(clock=lambda: 0.0, sleep=World({}).sleep, rng=random.Random(1),
                on_failure=lambda m, e, action: seen.append((m.provider, e.reason, action)))
    w = World({"a": [e503(), e429()], "b": [e503()], "c": [e400()]})
    log = AttemptLog()
    with pytest.raises(UpstreamError):
        await r.run([Step(A, 1), Step(B, 0), Step(C, 0)], w.attempt, log)
    assert seen == [("p", "503", "retry"), ("p", "429", "fallback"), ("q", "503", "fallback"),
                    ("r", "400", "stop")]
    assert [(f.model.id, f.reason, f.action) for f in log.failures] == [
        ("a", "503", "retry"), ("a", "429", "fallback"), ("b", "503", "fallback"),
        ("c", "400", "stop")]


async def test_routing_observe_feeds_latency_from_the_log() -> None:
    now = [0.0]
    r = Routing(clock=lambda: now[0])
    r.latency.min_samples = 1

    async def first_event_after_half_a_second(m: Model) -> str:
        now[0] += 0.5
        return "stream"

    log = AttemptLog()
    await r.run([Step(A, 0)], first_event_after_half_a_second, log)
    now[0] += 2.0  # the rest of the stream
    r.observe(log, 101, stream=True)
    ttft, tps, n = r.latency.snapshot()["a"]
    assert ttft == pytest.approx(0.5) and tps == pytest.approx(50.0) and n == 1


async def test_stream_failed_after_first_byte_counts_against_the_circuit() -> None:
    r = Routing(clock=lambda: 0.0)
    log = AttemptLog()
    w = World({"a": []})
    await r.run([Step(A, 0)], w.attempt, log)
    for _ in range(5):
        r.stream_failed(log, UpstreamError("cut", reason="cut"))
    assert r.breakers.state("p", "a") == "open"
    assert [f.reason for f in log.failures] == ["cut"] * 5
