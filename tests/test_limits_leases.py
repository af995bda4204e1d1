"""Spend leases on the real Redis: most requests of a key with only a spend limit are
admitted without a Redis call, and the money comes out exactly as without leases.

Each test reads the key's counter and reservations straight from Redis: `s` settled, `r`
reserved, and the lease's `a:` entry. Time is an injectable clock, never a sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from ledger_support import wait_for
from test_limits_semantics import WC, Clock, Ledger, keys_store

from proxy.auth import Principal
from proxy.config import LimitsConfig
from proxy.errors import QuotaExceeded
from proxy.keys.sqlite import SqliteKeyStore
from proxy.limits import Admission
from proxy.limits.durable import SpendSource
from proxy.limits.leases import Lease
from proxy.limits.periods import period_id
from proxy.limits.redis import RedisLimits
from proxy.limits.scripts import LEASE_SHARE, keys_of

LEASE_REQUESTS = 8


class Workers:
    """Several `RedisLimits` on one Redis namespace, as several gateway workers would be."""

    def __init__(self, store: SqliteKeyStore, redis_url: str, ns: str) -> None:
        self.clock = Clock()
        self.ledger = Ledger()
        self.ns = ns
        self.redis = redis.Redis.from_url(redis_url)
        self._make: Callable[[], RedisLimits] = lambda: RedisLimits.from_url(
            LimitsConfig(reservation_ttl_s=60, lease_requests=LEASE_REQUESTS, lease_s=1.0),
            redis_url, ns, SpendSource(store, lambda: self.ledger), lambda: ["k1"], self.clock)
        self.all: list[RedisLimits] = []

    async def start(self) -> RedisLimits:
        limits = self._make()
        await limits.start()
        self.all.append(limits)
        return limits

    def counter(self) -> tuple[int, int]:
        """The key's (settled, reserved) as Redis holds them."""
        c = self.hash(0)
        return int(c.get(b"s", 0)), int(c.get(b"r", 0))

    def reservations(self) -> dict[str, int]:
        res = self.hash(1)
        return {k.decode()[2:]: int(v) for k, v in res.items() if k.startswith(b"a:")}

    def entries(self) -> dict[bytes, bytes]:
        """Every field of the key's reservations hash: what Redis keeps for it."""
        return self.hash(1)

    def hash(self, index: int) -> dict[bytes, bytes]:
        """One of the key's hashes (0: counters, 1: reservations), as bytes (no decoding)."""
        key = keys_of(self.ns, "k1", period_id("monthly", self.clock()))[index]
        return cast(dict[bytes, bytes], self.redis.hgetall(key))

    async def drain(self) -> None:
        for limits in self.all:
            await limits.drain()


@pytest.fixture
async def workers(tmp_path: Path, redis_url: str, redis_namespace: str) -> AsyncIterator[Workers]:
    w = Workers(await keys_store(tmp_path, "k1"), redis_url, redis_namespace)
    yield w
    for limits in w.all:
        await limits.close()
    w.redis.close()


def key(limit: int) -> Principal:
    return Principal("k1", limit_nusd=limit)


async def a_leased_request(workers: Workers) -> tuple[RedisLimits, Principal, Admission]:
    """A new worker, a key with room for many leases, and one request that took a lease."""
    limits = await workers.start()
    p = key(10_000 * WC)
    return limits, p, await limits.admit(p, "r", WC, 10)


def count_admits(limits: RedisLimits) -> list[str]:
    """The scripts a worker runs on the request path (they still run on Redis)."""
    run_ = limits.counters.run
    ran: list[str] = []

    async def counted(name: str, *args: Any) -> Any:
        ran.append(name)
        return await run_(name, *args)

    limits.counters.run = counted  # type: ignore[method-assign,assignment]
    return ran


async def test_one_call_reserves_a_lease_and_the_next_requests_draw_without_one(
    workers: Workers,
) -> None:
    limits = await workers.start()
    calls = count_admits(limits)
    p = key(10_000 * WC)
    first = await limits.admit(p, "r", WC, 10)
    assert first.leased and calls[-1] == "admit"  # (after creating the key's counter)
    assert workers.counter() == (0, LEASE_REQUESTS * WC)  # the whole lease is reserved
    before = len(calls)
    rest = [await limits.admit(p, "r", WC, 10) for _ in range(LEASE_REQUESTS - 1)]
    assert len(calls) == before, "a draw from the lease went to Redis"
    assert {a.lease_id for a in rest} == {first.lease_id}
    assert len({a.reservation_id for a in [first, *rest]}) == LEASE_REQUESTS  # each its own
    assert workers.counter() == (0, LEASE_REQUESTS * WC)
    # The lease is used up: the next request hands nothing back and asks for a new one.
    nxt = await limits.admit(p, "r", WC, 10)
    assert nxt.leased and nxt.lease_id != first.lease_id
    assert calls[before:] == ["admit"]
    assert workers.counter() == (0, 2 * LEASE_REQUESTS * WC)


async def test_settles_charge_each_actual_cost_and_the_unused_rest_goes_back(
    workers: Workers,
) -> None:
    limits = await workers.start()
    p = key(10_000 * WC)
    drawn = [await limits.admit(p, "r", WC, 10) for _ in range(3)]
    costs = [WC // 3, WC // 2, 0]
    for admission, cost in zip(drawn, costs, strict=True):
        limits.settle(admission, cost, 10)
    await limits.drain()
    # Settled exactly; still reserved: the lease's rest (5 worst cases, none in flight).
    assert workers.counter() == (sum(costs), (LEASE_REQUESTS - 3) * WC)
    assert limits.expire_leases() == 0  # its time is not up
    workers.clock.t += 1.0
    assert limits.expire_leases() == 1
    await limits.drain()
    assert workers.counter() == (sum(costs), 0)
    assert workers.entries() == {}, "an ended lease left its entries"


async def two_draws_then_handed_back(workers: Workers) -> tuple[RedisLimits, Admission, Admission]:
    """A worker draws two requests from a lease whose time is then up: its rest goes back."""
    limits = await workers.start()
    p = key(10_000 * WC)
    a, b = [await limits.admit(p, "r", WC, 10) for _ in range(2)]
    workers.clock.t += 1.0
    limits.expire_leases()
    await limits.drain()
    assert workers.counter() == (0, 2 * WC)  # only the two draws in flight are held
    return limits, a, b


async def test_a_lease_handed_back_with_requests_in_flight_ends_with_their_settles(
    workers: Workers,
) -> None:
    limits, a, b = await two_draws_then_handed_back(workers)
    assert workers.reservations() == {a.lease_id: 2 * WC}
    limits.settle(a, 70_000, 10)
    limits.settle(b, 90_000, 10)
    await limits.drain()
    assert workers.counter() == (160_000, 0)
    assert workers.entries() == {}, "a lease handed back, then settled, left its marks"


async def test_a_lease_takes_at_most_its_share_of_the_headroom(workers: Workers) -> None:
    limits = await workers.start()
    limit = 5 * LEASE_SHARE * WC  # a 64th of the headroom is 5 worst cases, under 8
    admission = await limits.admit(key(limit), "r", WC, 10)
    assert admission.leased
    assert workers.counter() == (0, 5 * WC)


async def test_near_its_limit_a_key_is_admitted_request_by_request(workers: Workers) -> None:
    limits = await workers.start()
    p = key(2 * LEASE_SHARE * WC - 1)  # a 64th of the headroom is under two worst cases
    a = await limits.admit(p, "r", WC, 10)
    b = await limits.admit(p, "r", WC, 10)
    assert not a.leased and not b.leased and a.reservation_id != b.reservation_id
    assert workers.counter() == (0, 2 * WC)


async def test_keys_with_rate_limits_are_not_leased(
    workers: Workers,
) -> None:
    # (An Idempotency-Key no longer reaches the limits: its repeats are answered before
    # admission, so such a request is leased like any other.)
    limits = await workers.start()
    with_rpm = Principal("k1", limit_nusd=10_000 * WC, rpm=1000)
    assert not (await limits.admit(with_rpm, "r", WC, 10)).leased


async def test_while_a_lease_is_being_granted_other_requests_reserve_their_own(
    workers: Workers,
) -> None:
    limits = await workers.start()
    p = key(10_000 * WC)
    got = await asyncio.gather(*(limits.admit(p, "r", WC, 10) for _ in range(5)))
    assert [a.leased for a in got] == [True, False, False, False, False]
    assert workers.counter() == (0, (LEASE_REQUESTS + 4) * WC)


async def test_workers_with_leases_overshoot_by_less_than_one_worst_case(
    workers: Workers,
) -> None:
    """Four workers admit waves of requests at once until the budget is used up; each
    request costs its worst case. Leases change nothing: every draw was reserved."""
    fleet = [await workers.start() for _ in range(4)]
    limit = 3000 * WC + 12_345
    p = key(limit)
    spent = leased = 0
    while True:
        results = await asyncio.gather(*(w.admit(p, "r", WC, 10)
                                         for w in fleet for _ in range(10)),
                                       return_exceptions=True)
        admitted = [r for r in results if isinstance(r, Admission)]
        assert all(isinstance(r, (Admission, QuotaExceeded)) for r in results), results
        leased += sum(a.leased for a in admitted)
        for w, a in zip([w for w in fleet for _ in range(10)], results, strict=True):
            if isinstance(a, Admission):
                w.settle(a, WC, 10)
                spent += WC
        await workers.drain()
        if not admitted:
            if not any(len(w.leases) for w in fleet):
                break  # refused with no budget held in leases: used up
            workers.clock.t += 1.0  # the idle leases' time is up: their rests go back
            for w in fleet:
                w.expire_leases()
            await workers.drain()
    settled, reserved = workers.counter()
    assert settled == spent and reserved == 0
    assert limit <= spent < limit + WC
    assert leased > spent // WC // 2, "leases were hardly used"


async def test_a_crashed_workers_lease_is_charged_at_its_deadline_like_a_reservation(
    workers: Workers,
) -> None:
    crashed, _, a = await a_leased_request(workers)
    survivor = await workers.start()
    workers.clock.t += 61  # past reservation_ttl_s: the whole lease is charged
    assert await survivor.sweep() == 1
    assert workers.counter() == (LEASE_REQUESTS * WC, 0)
    crashed.settle(a, WC + 5, 10)  # it came back after all: only what exceeds the draw
    await crashed.drain()
    assert workers.counter() == (LEASE_REQUESTS * WC + 5, 0)


async def test_leases_taken_out_in_an_outage_go_back_when_redis_answers_again(
    workers: Workers,
) -> None:
    limits, p, a = await a_leased_request(workers)
    limits.outage.failed(redis.ConnectionError("the network dropped"))  # as a failed call does
    assert limits.degraded and len(limits.leases) == 0
    assert not (await limits.admit(p, "r", WC, 10)).leased  # counted in-process
    limits.settle(a, 40_000, 10)  # queued for Redis
    await wait_for(lambda: not limits.degraded)  # the recovery probe finds Redis answering
    await limits.drain()
    settled, reserved = workers.counter()
    assert settled == 40_000 and reserved == 0
    assert workers.reservations() == {}


async def test_closing_hands_every_lease_back(workers: Workers) -> None:
    limits, _, _ = await a_leased_request(workers)
    assert workers.counter() == (0, LEASE_REQUESTS * WC)
    workers.all.remove(limits)
    await limits.close()  # the request in flight keeps its draw
    assert workers.counter() == (0, WC)


async def test_a_return_replayed_after_a_timeout_releases_nothing_twice(
    workers: Workers,
) -> None:
    limits, a, b = await two_draws_then_handed_back(workers)
    # Redis ran the return but its reply came too late: the outage replay sends it again.
    rest = Lease(a.lease_id, "k1", a.period, (LEASE_REQUESTS - 2) * WC, 0.0)
    await limits.counters.give_back(rest)
    assert workers.counter() == (0, 2 * WC)
    limits.settle(a, WC, 10)
    limits.settle(b, WC, 10)
    await limits.drain()
    assert workers.counter() == (2 * WC, 0)
    assert workers.entries() == {}, "an ended lease left its marks in Redis"


async def test_a_lease_whose_grant_got_no_answer_is_handed_back_whole(workers: Workers) -> None:
    limits, p, warm = await a_leased_request(workers)  # creates the counter; its lease goes back
    limits.settle(warm, WC, 10)
    workers.clock.t += 1.0
    limits.expire_leases()
    await limits.drain()
    assert workers.counter() == (WC, 0)
    asking = asyncio.create_task(limits.admit(p, "r", WC, 10))
    await asyncio.sleep(0)  # it starts, writes its call (the first of this loop turn), waits
    assert not asking.done()
    asking.cancel()  # the client went away: Redis grants the lease, nobody hears of it
    with pytest.raises(asyncio.CancelledError):
        await asking
    await limits.drain()
    assert workers.counter() == (WC, 0) and workers.reservations() == {}


async def test_a_counter_lost_with_its_reservations_kept_is_rebuilt_without_them(
    workers: Workers,
) -> None:
    limits, _, a = await a_leased_request(workers)
    workers.redis.delete(keys_of(workers.ns, "k1", a.period)[0])  # evicted: the counter only
    limits.settle(a, 70_000, 10)  # finds no counter: rebuilt, then charged in full
    await limits.drain()
    await limits.drain()  # the settle's retry, then the lease's hand-back
    assert workers.counter() == (70_000, 0)
    assert workers.reservations() == {}
