"""A settle or push that reached Redis but whose reply did not reach the gateway is replayed,
and a dead worker's admissions are settled again at recovery; each charges once. An
admission whose reply never came has its reservation released, not left to the sweeper.

The real Redis, behind a TCP relay of the test's own that can lose the replies on one
connection from the moment a given command goes through it: Redis runs the call, the
gateway hears nothing, times out, counts in-process and replays when Redis answers again.
Before settle marks (`scripts.py`) each replay charged the request a second time, so the
key was refused early.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
import redis
from yarl import URL
from polling import wait_for
from test_limits_semantics import WC, Clock, Ledger, keys_store

from proxy.auth import Principal
from proxy.config import LimitsConfig
from proxy.ledger import MemoryLedger
from proxy.ledger.inflight import Admitted
from proxy.ledger.inflight_recovery import recover
from proxy.limits.durable import SpendSource
from proxy.limits.periods import period_id
from proxy.limits.redis import RedisLimits
from proxy.limits import scripts
from proxy.limits.scripts import keys_of
from test_inflight_journal import price, run_and_kill


class ReplyLosingRelay:
    """A TCP relay to Redis. `lose_after(marker)`: on the next connection whose command
    bytes contain `marker`, Redis still gets the command but every reply from then on is
    dropped (that connection is useless to the client from then on; later ones relay)."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._marker: bytes | None = None
        self.lost = 0  # replies dropped, in chunks
        self._server: asyncio.Server | None = None
        self.port = 0

    def lose_after(self, marker: bytes) -> None:
        self._marker = marker

    async def __aenter__(self) -> ReplyLosingRelay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
                     ) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self._target_port)
        losing = False

        async def upstream() -> None:
            nonlocal losing
            while data := await client_r.read(65536):
                if self._marker is not None and self._marker in data:
                    self._marker, losing = None, True
                server_w.write(data)
            server_w.close()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                if losing:
                    self.lost += 1
                    continue
                client_w.write(data)
            client_w.close()

        with contextlib.suppress(OSError, asyncio.CancelledError):
            await asyncio.gather(upstream(), downstream())
        client_w.close()
        server_w.close()


class Setup:
    def __init__(self, relay: ReplyLosingRelay, limits: RedisLimits, direct: redis.Redis,
                 ns: str, clock: Clock) -> None:
        self.relay = relay
        self.limits = limits
        self.redis = direct
        self.ns = ns
        self.clock = clock

    def counter(self) -> tuple[int, int]:
        """(settled, reserved) of k1 as Redis holds them, read past the relay."""
        key = keys_of(self.ns, "k1", period_id("monthly", self.clock()))[0]
        c = self.redis.hgetall(key)
        return int(c.get(b"s", 0)), int(c.get(b"r", 0))

    def lease_rest(self, lease_id: str) -> int:
        key = keys_of(self.ns, "k1", period_id("monthly", self.clock()))[1]
        return int(self.redis.hget(key, f"a:{lease_id}") or 0)


@pytest.fixture
async def setup(tmp_path: Path, redis_url: str, redis_namespace: str
                ) -> AsyncIterator[Setup]:
    direct = redis.Redis.from_url(redis_url)
    port = URL(redis_url).port
    assert port is not None
    async with ReplyLosingRelay(port) as relay:
        clock = Clock()
        ledger = Ledger()
        store = await keys_store(tmp_path, "k1")
        limits = RedisLimits.from_url(
            LimitsConfig(reservation_ttl_s=60, lease_requests=8, lease_s=5.0),
            f"redis://127.0.0.1:{relay.port}/0", redis_namespace,
            SpendSource(store, lambda: ledger), lambda: ["k1"], clock)
        await limits.start()
        yield Setup(relay, limits, direct, redis_namespace, clock)
        await limits.close()
    direct.close()


async def a_key_that_spent(setup: Setup, cost: int) -> Principal:
    """k1 with its own reservations (an rpm: no leases), its counter created by a request
    that cost `cost`."""
    p = Principal("k1", limit_nusd=100 * WC, rpm=1000)
    first = await setup.limits.admit(p, "req", WC, 10)
    setup.limits.settle(first, cost, 10)
    await setup.limits.drain()
    assert setup.counter() == (cost, 0)
    return p


async def test_a_settle_whose_reply_was_lost_is_replayed_and_charged_once(setup: Setup) -> None:
    limits = setup.limits
    p = Principal("k1", limit_nusd=100 * WC, rpm=1000)  # rpm: its own reservation, no lease
    admission = await limits.admit(p, "req", WC, 10)
    assert not admission.leased and setup.counter() == (0, WC)
    setup.relay.lose_after(f":d:{admission.reservation_id}".encode())
    limits.settle(admission, 70_000, 10)  # Redis charges it; the reply never comes
    await wait_for(lambda: limits.degraded, what="the lost reply did not time out")
    assert setup.relay.lost >= 1
    assert setup.counter() == (70_000, 0)  # Redis ran it
    await wait_for(lambda: not limits.degraded, what="Redis was not used again")
    await limits.drain()
    assert setup.counter() == (70_000, 0), "the replayed settle charged the request twice"


async def test_a_lease_draw_settled_again_at_recovery_charges_and_shrinks_once(
    setup: Setup,
) -> None:
    limits = setup.limits
    p = Principal("k1", limit_nusd=10_000 * WC)
    a = await limits.admit(p, "r1", WC, 10)
    b = await limits.admit(p, "r2", WC, 10)
    assert a.leased and b.lease_id == a.lease_id and a.reservation_id != b.reservation_id
    assert setup.counter() == (0, 8 * WC)
    limits.settle(a, 40_000, 10)
    await limits.drain()
    assert setup.counter() == (40_000, 7 * WC) and setup.lease_rest(a.lease_id) == 7 * WC
    # The worker died before its journal said so: recovery settles `a` again.
    await limits.settle_orphan(a, 30_000, 10)
    assert setup.counter() == (40_000, 7 * WC) and setup.lease_rest(a.lease_id) == 7 * WC
    await limits.settle_orphan(b, 30_000, 10)  # never settled: this one charges
    assert setup.counter() == (70_000, 6 * WC)


async def test_spend_counted_in_an_outage_is_pushed_once_when_the_push_reply_is_lost(
    setup: Setup,
) -> None:
    limits = setup.limits
    p = await a_key_that_spent(setup, 10_000)
    setup.relay.lose_after(b":d:")  # the first push (the only call that carries a mark)
    limits.outage.failed(redis.ConnectionError("the network dropped"))  # as a failed call does
    local = await limits.admit(p, "req", WC, 10)
    assert local.local
    limits.settle(local, 25_000, 10)  # counted in-process
    await wait_for(lambda: setup.relay.lost >= 1, what="the push's reply was not lost")
    await wait_for(lambda: not limits.degraded, timeout=15, what="Redis was not used again")
    await limits.drain()
    assert setup.counter() == (35_000, 0), "the replayed push added the outage's spend twice"


async def test_an_admission_whose_reply_was_lost_has_its_reservation_released_not_swept(
    setup: Setup,
) -> None:
    limits = setup.limits
    p = await a_key_that_spent(setup, 10_000)
    setup.relay.lose_after(hashlib.sha1(scripts.ADMIT.encode()).hexdigest().encode())
    admission = await limits.admit(p, "req", WC, 10)  # Redis reserves; no reply: in-process
    assert admission.local and limits.degraded and setup.relay.lost >= 1
    assert setup.counter() == (10_000, WC)  # what Redis did, unheard
    limits.settle(admission, 20_000, 10)
    await wait_for(lambda: not limits.degraded, what="Redis was not used again")
    await limits.drain()
    assert setup.counter() == (30_000, 0), "the unheard reservation was left for the sweeper"
    setup.clock.t += 61  # past reservation_ttl_s
    assert await limits.sweep() == 0


async def test_an_admission_cancelled_in_flight_has_its_reservation_released(
    setup: Setup,
) -> None:
    limits = setup.limits
    p = await a_key_that_spent(setup, 10_000)
    asking = asyncio.create_task(limits.admit(p, "req", WC, 10))
    await asyncio.sleep(0)  # it starts, writes its call (the first of this loop turn), waits
    assert not asking.done()
    asking.cancel()  # the client went away: Redis reserves, nobody hears of it
    with pytest.raises(asyncio.CancelledError):
        await asking
    # A call behind it on the same connection: once answered, Redis has run the admit.
    assert await limits.counters.rebuild("k1", period_id("monthly", setup.clock()))
    await limits.drain()
    assert setup.counter() == (10_000, 0), "the cancelled admission's reservation was kept"
    assert not limits.degraded


@pytest.mark.slow  # a subprocess, SIGKILLed
async def test_recovery_of_a_worker_that_settled_before_it_died_charges_nothing_twice(
    setup: Setup, tmp_path: Path,
) -> None:
    limits = setup.limits
    p = Principal("k1", limit_nusd=100 * WC, rpm=1000)
    settled = await limits.admit(p, "req-1", WC, 10)
    unsettled = await limits.admit(p, "req-2", WC, 10)
    lines = [msgspec.json.encode(Admitted(
        seq, f"req-{seq}", datetime.now(UTC), "k1", "up/model", "up/model", "up", "global",
        False, 50, adm.reservation_id, adm.reserved_nusd, adm.period, adm.tokens, adm.tpm,
        adm.leased, lease_id=adm.lease_id)) for seq, adm in ((1, settled), (2, unsettled))]
    # The worker settled req-1 and was killed before its journal marked either done.
    limits.settle(settled, 70_000, 10)
    await limits.drain()
    await run_and_kill(tmp_path, "".join(
        f"j.admitted(msgspec.json.decode({line!r}, type=Admitted))\n" for line in lines),
        imports="import msgspec\nfrom proxy.ledger.inflight import Admitted")
    ledger = MemoryLedger()
    assert await recover(tmp_path, ledger, limits, price) == 2
    assert setup.counter() == (70_000 + price("up/model", 50), 0), (
        "the request the worker had settled was charged again")
    assert sorted(r.request_id for r in ledger.records) == ["req-1", "req-2"]
