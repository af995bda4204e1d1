"""Spend and rate limits, one behaviour per test, against both implementations.

The in-process `MemoryLimits` (embedded default, and Redis's stand-in during an outage) and
`RedisLimits` (Lua scripts on the real Redis) must agree, so every test runs on both. Time
is an injectable clock, never a sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from proxy.auth import Principal
from proxy.config import LimitsConfig
from proxy.errors import QuotaExceeded, RateLimited
from proxy.keys.model import KeyRow
from proxy.keys.sqlite import SqliteKeyStore
from proxy.limits import Admission
from proxy.limits.durable import SnapshotWriter, SpendSource
from proxy.limits.memory import MemoryLimits
from proxy.limits.periods import period_id
from proxy.limits.redis import RedisLimits
from proxy.migrate import migrate

JUNE = datetime(2025, 6, 15, 12, 0, 0, tzinfo=UTC).timestamp()
WC = 100_000  # one request's worst case, nano-USD


class Clock:
    def __init__(self, t: float = JUNE) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Ledger:
    """Stands in for the usage ledger's `spend(key_id, since)` (being written separately)."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}

    async def spend(self, key_id: str, since: datetime | None) -> int:
        return self.totals.get(key_id, 0)


async def keys_store(tmp_path: Path, *key_ids: str) -> SqliteKeyStore:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    await migrate(url)
    store = SqliteKeyStore(str(tmp_path / "keys.db"))
    now = datetime.now(UTC)
    for kid in key_ids:
        await store.insert(KeyRow(id=kid, key_hash="h" + kid, key_prefix="sk-px-test",
                                  created_at=now, updated_at=now))
    return store


class Rig:
    def __init__(self, kind: str, store: SqliteKeyStore, redis_url: str, ns: str) -> None:
        self.kind, self.store, self.redis_url, self.ns = kind, store, redis_url, ns
        self.clock = Clock()
        self.ledger = Ledger()
        self.limits: MemoryLimits | RedisLimits = self.make()

    def make(self) -> MemoryLimits | RedisLimits:
        cfg = LimitsConfig(reservation_ttl_s=60)
        source = SpendSource(self.store, lambda: self.ledger)
        if self.kind == "memory":
            return MemoryLimits(cfg, source, self.clock, SnapshotWriter(self.store))
        return RedisLimits.from_url(cfg, self.redis_url, self.ns, source, lambda: ["k1", "k2"],
                                    self.clock)

    async def admit(self, p: Principal, wc: int = WC, tokens: int = 10) -> Admission:
        return await self.limits.admit(p, "req", wc, tokens)

    async def spend(self, p: Principal) -> int | None:
        await self.limits.drain()
        return (await self.limits.spend([p]))[0]


@pytest.fixture(params=["memory", "redis"])
async def rig(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, redis_namespace: str
) -> AsyncIterator[Rig]:
    store = await keys_store(tmp_path, "k1", "k2")
    rig = Rig(request.param, store, redis_url, redis_namespace)
    await rig.limits.start()
    yield rig
    await rig.limits.close()


def key(limit: int | None = None, rpm: int | None = None, tpm: int | None = None) -> Principal:
    return Principal("k1", limit_nusd=limit, rpm=rpm, tpm=tpm)


async def test_concurrent_admissions_overshoot_by_at_most_one_worst_case(rig: Rig) -> None:
    p = key(limit=3 * WC - 1)
    results = await asyncio.gather(*(rig.admit(p) for _ in range(10)), return_exceptions=True)
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    assert len(admitted) == 3 and len(refused) == 7
    assert all(e.headers["x-should-retry"] == "false" for e in refused)
    for a in admitted:
        rig.limits.settle(a, WC, 10)
    spent = await rig.spend(p)
    assert spent == 3 * WC <= p.limit_nusd + WC  # type: ignore[operator]


async def test_settle_charges_the_actual_cost_and_releases_the_rest(rig: Rig) -> None:
    p = key(limit=WC)
    a = await rig.admit(p)
    with pytest.raises(QuotaExceeded):
        await rig.admit(p)  # the first reservation holds the whole budget
    rig.limits.settle(a, 30_000, 10)
    assert await rig.spend(p) == 30_000
    await rig.admit(p)  # 30 % spent, nothing reserved: admitted again


async def test_every_admission_meets_the_limit_test_with_a_reservation_of_its_own(
    rig: Rig,
) -> None:
    # Nothing shares a reservation (an Idempotency-Key's repeats never reach the limits):
    # while one request holds the whole budget, every other one is refused.
    p = key(limit=WC)
    first = await rig.admit(p)
    for _ in range(3):
        with pytest.raises(QuotaExceeded):
            await rig.admit(p)
    rig.limits.settle(first, 1_000, 10)
    assert await rig.spend(p) == 1_000
    again = await rig.admit(p)
    assert again.reserved_nusd == WC and again.reservation_id != first.reservation_id


async def test_abandoned_reservation_is_swept_at_its_estimate_not_zero(rig: Rig) -> None:
    p = key(limit=10 * WC)
    abandoned = await rig.admit(p, wc=70_000)
    rig.clock.t += 30
    await rig.admit(p, wc=5_000)  # still in flight when the sweep runs: left alone
    assert await rig.limits.sweep() == 0
    rig.clock.t += 31  # past the 60 s TTL of the first one only
    assert await rig.limits.sweep() == 1
    assert await rig.spend(p) == 70_000
    rig.limits.settle(abandoned, 50_000, 10)
    assert await rig.spend(p) == 70_000  # a late settle below the estimate adds nothing
    assert await rig.limits.sweep() == 0


async def test_rpm_bucket_sets_openai_headers_and_refuses_with_retry_after(rig: Rig) -> None:
    p = key(rpm=2)
    a = await rig.admit(p)
    assert a.headers["x-ratelimit-limit-requests"] == "2"
    assert a.headers["x-ratelimit-remaining-requests"] == "1"
    b = await rig.admit(p)
    assert b.headers["x-ratelimit-remaining-requests"] == "0"
    assert b.headers["x-ratelimit-reset-requests"] == "1m0s"
    with pytest.raises(RateLimited) as refused:
        await rig.admit(p)
    assert refused.value.headers["retry-after"] == "30"  # one request per 30 s at 2 rpm
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-should-retry" not in refused.value.headers
    rig.clock.t += 30
    await rig.admit(p)


async def test_tpm_bucket_refunds_unused_estimate_on_settle(rig: Rig) -> None:
    p = key(tpm=100)
    a = await rig.admit(p, tokens=60)
    assert a.headers["x-ratelimit-remaining-tokens"] == "40"
    with pytest.raises(RateLimited) as refused:
        await rig.admit(p, tokens=60)
    assert refused.value.code == "rate_limit_exceeded"
    assert int(refused.value.headers["retry-after-ms"]) == 12_000  # 20 tokens at 100/min
    rig.limits.settle(a, 10, 10)
    await rig.limits.drain()
    b = await rig.admit(p, tokens=60)
    assert b.headers["x-ratelimit-remaining-tokens"] == "30"


async def test_monthly_budget_starts_again_in_a_new_month_but_total_does_not(rig: Rig) -> None:
    monthly, total = key(limit=WC), Principal("k2", limit_nusd=WC, period="total")
    for p in (monthly, total):
        rig.limits.settle(await rig.admit(p), WC, 10)
        await rig.limits.drain()
        with pytest.raises(QuotaExceeded):
            await rig.admit(p)
    rig.clock.t = datetime(2025, 7, 1, 0, 1, tzinfo=UTC).timestamp()
    await rig.admit(monthly)
    with pytest.raises(QuotaExceeded):
        await rig.admit(total)


async def test_lost_counter_is_rebuilt_from_the_larger_of_snapshot_and_ledger(rig: Rig) -> None:
    p = key(limit=10 * WC)
    period = period_id("monthly", rig.clock())
    await rig.store.save_spend([("k1", period, 4 * WC)])
    rig.ledger.totals["k1"] = 3 * WC
    a = await rig.admit(p)
    rig.limits.settle(a, WC, 10)
    assert await rig.spend(p) == 5 * WC
    # The counter's value reaches the durable snapshot...
    await rig.limits.snapshots.flush()
    assert await rig.store.spend_snapshot("k1", period) == 5 * WC
    # ...so a restart (memory) or Redis losing its keys does not reset the budget.
    await rig.limits.close()
    if rig.kind == "redis":
        client = redis.Redis.from_url(rig.redis_url)
        client.delete(*client.keys(f"{rig.ns}:*"))
        client.close()
    rig.ledger.totals["k1"] = 6 * WC  # the ledger knows more than the snapshot: it wins
    rig.limits = rig.make()
    await rig.limits.start()
    await rig.admit(p)
    assert await rig.spend(p) == 6 * WC
