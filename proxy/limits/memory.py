"""Spend and rate limits in-process: the embedded default, and Redis's stand-in during an outage.

Same semantics as the Redis scripts (`scripts.py`), so a test of one is a test of both:
admission refuses once settled + reserved spend has reached the limit, then reserves the
request's worst-case cost (so concurrent requests overshoot by at most one request);
settling charges the actual cost and releases the reservation; a reservation whose request
never settles is charged at its estimate by the sweeper. Every admission meets the limit
test and reserves its own worst case: nothing (an idempotency key included) shares one.
rpm and tpm are per-minute token buckets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from ..config import LimitsConfig
from ..stats import DependencyErrors
from ..principal import Principal
from . import periods
from .admission import Admission, reservation_id
from .durable import SnapshotWriter, SpendSource
from .responses import bucket_state, quota_exceeded, rate_headers, rate_limited
from .tasks import TaskSet, every


class _Reservation:
    __slots__ = ("amount", "deadline")

    def __init__(self, amount: int, deadline: float) -> None:
        self.amount = amount
        self.deadline = deadline


class _Counter:
    __slots__ = ("local", "reservations", "reserved", "settled", "swept")

    def __init__(self, base: int) -> None:
        self.settled = base  # spend charged in the period, base included
        self.reserved = 0  # worst-case costs of requests in flight
        self.local = 0  # charged here since the counter was loaded (what an outage must push)
        self.reservations: dict[str, _Reservation] = {}
        self.swept: dict[str, tuple[int, float]] = {}  # id -> (amount charged, when)


class _Bucket:
    __slots__ = ("at", "level")

    def __init__(self, level: float, at: float) -> None:
        self.level = level
        self.at = at

    def refill(self, cap: int, now: float) -> float:
        if now > self.at:
            self.level = min(float(cap), self.level + (now - self.at) * cap / 60.0)
        self.at = now
        return self.level


class MemoryLimits:
    def __init__(
        self,
        config: LimitsConfig,
        source: SpendSource,
        clock: Callable[[], float] = time.time,
        snapshots: SnapshotWriter | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.clock = clock
        self.snapshots = snapshots or SnapshotWriter(None)
        self._counters: dict[tuple[str, str], _Counter] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[_Counter]] = {}
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._tasks = TaskSet()
        self._loops = TaskSet()
        self._load_errors = 0

    @property
    def database_errors(self) -> int:
        """For metrics: failed reads of a counter's durable floor, failed snapshot writes."""
        return self._load_errors + self.snapshots.errors

    def stats(self) -> DependencyErrors:
        return DependencyErrors(database_errors=self.database_errors)

    async def counter(self, key_id: str, period: str) -> _Counter:
        """The counter, loaded once from its durable sources however many requests wait."""
        key = (key_id, period)
        counter = self._counters.get(key)
        if counter is not None:
            return counter
        pending = self._loading.get(key)
        if pending is None:
            pending = self._loading[key] = asyncio.get_running_loop().create_future()
            try:
                counter = self._counters[key] = _Counter(await self.source.base(key_id, period))
                pending.set_result(counter)
            except BaseException as e:
                self._load_errors += isinstance(e, Exception)
                pending.set_exception(e)
                pending.exception()  # retrieved: the waiters (if any) get it from the future
                raise
            finally:
                del self._loading[key]
            return counter
        return await asyncio.shield(pending)

    def _bucket(self, key_id: str, kind: str, cap: int, now: float) -> _Bucket:
        bucket = self._buckets.get((key_id, kind))
        if bucket is None:
            bucket = self._buckets[(key_id, kind)] = _Bucket(float(cap), now)
        return bucket

    async def admit(
        self,
        principal: Principal,
        request_id: str,
        worst_case_nusd: int,
        estimated_tokens: int,
    ) -> Admission:
        period = periods.period_id(principal.period, self.clock())
        counter = await self.counter(principal.key_id, period)
        now = self.clock()  # after the await: the buckets must see the time they are used at
        rpm, tpm = principal.rpm or 0, principal.tpm or 0
        need = min(estimated_tokens, tpm)
        req_bucket = self._bucket(principal.key_id, "r", rpm, now) if rpm else None
        tok_bucket = self._bucket(principal.key_id, "t", tpm, now) if tpm else None
        r_level = req_bucket.refill(rpm, now) if req_bucket else 0.0
        t_level = tok_bucket.refill(tpm, now) if tok_bucket else 0.0
        if req_bucket and r_level < 1:
            raise rate_limited("requests", (1 - r_level) * 60 / rpm, rate_headers(
                bucket_state(rpm, r_level), bucket_state(tpm, t_level) if tpm else None))
        if tok_bucket and t_level < need:
            raise rate_limited("tokens", (need - t_level) * 60 / tpm, rate_headers(
                bucket_state(rpm, r_level) if rpm else None, bucket_state(tpm, t_level)))
        limit = principal.limit_nusd
        if limit is not None and counter.settled + counter.reserved >= limit:
            raise quota_exceeded(principal, period)
        rid = reservation_id()
        amount = worst_case_nusd
        counter.reserved += amount
        counter.reservations[rid] = _Reservation(amount, now + self.config.reservation_ttl_s)
        if req_bucket:
            req_bucket.level -= 1
        if tok_bucket:
            tok_bucket.level -= need
        headers = rate_headers(
            bucket_state(rpm, req_bucket.level) if req_bucket else None,
            bucket_state(tpm, tok_bucket.level) if tok_bucket else None,
        )
        return Admission(principal.key_id, rid, amount, headers, period=period, tokens=need,
                         tpm=tpm)

    def settle(self, admission: Admission, cost_nusd: int, tokens: int) -> None:
        counter = self._counters.get((admission.key_id, admission.period))
        if counter is not None:
            self._apply(counter, admission, cost_nusd, tokens)
        else:  # only after a restart of the counter (an outage's fresh stand-in)
            self._tasks.spawn(self.settle_now(admission, cost_nusd, tokens))

    async def settle_now(self, admission: Admission, cost_nusd: int, tokens: int) -> None:
        counter = await self.counter(admission.key_id, admission.period)
        self._apply(counter, admission, cost_nusd, tokens)

    async def settle_orphan(self, admission: Admission, cost_nusd: int, tokens: int) -> None:
        # The dead process's reservations died with it: this only charges the cost, onto
        # the counter loaded from its durable floor (which the lost record is not in yet).
        await self.settle_now(admission, cost_nusd, tokens)

    async def return_lease(self, key_id: str, period: str, lease_id: str) -> None:
        """Leases are Redis's alone."""

    def _apply(self, counter: _Counter, admission: Admission, cost: int, tokens: int) -> None:
        rid = admission.reservation_id
        res = counter.reservations.pop(rid, None)
        if res is not None:
            counter.reserved -= res.amount
        elif rid in counter.swept:
            # Swept as abandoned and charged its estimate; it came back after all.
            cost = max(0, cost - counter.swept.pop(rid)[0])
        counter.settled += cost
        counter.local += cost
        self.snapshots.touch(admission.key_id, admission.period, counter.settled)
        refund = admission.tokens - tokens
        bucket = self._buckets.get((admission.key_id, "t"))
        if refund > 0 and bucket is not None and admission.tpm:
            bucket.level = min(float(admission.tpm), bucket.level + refund)

    async def sweep(self, now: float | None = None) -> int:
        """Charge abandoned reservations at their estimate; returns how many."""
        now = self.clock() if now is None else now
        swept = 0
        current = periods.period_id("monthly", now)
        oldest = periods.previous(current) or current
        for (key_id, period), counter in list(self._counters.items()):
            for rid, res in list(counter.reservations.items()):
                if res.deadline <= now:
                    del counter.reservations[rid]
                    counter.reserved -= res.amount
                    counter.settled += res.amount
                    counter.local += res.amount
                    counter.swept[rid] = (res.amount, now)
                    self.snapshots.touch(key_id, period, counter.settled)
                    swept += 1
            for rid, (_, at) in list(counter.swept.items()):
                if now - at > self.config.reservation_ttl_s:
                    del counter.swept[rid]
            if period != periods.TOTAL and period < oldest and not counter.reservations:
                del self._counters[(key_id, period)]
        return swept

    async def spend(self, principals: Sequence[Principal]) -> list[int | None]:
        now = self.clock()
        out: list[int | None] = []
        for p in principals:
            counter = self._counters.get((p.key_id, periods.period_id(p.period, now)))
            out.append(counter.settled if counter is not None else None)
        return out

    def take_local(self) -> list[tuple[str, str, int]]:
        """Hand over (and zero) what was charged here: an outage's spend, to push to Redis."""
        items = []
        for (key_id, period), counter in self._counters.items():
            if counter.local:
                items.append((key_id, period, counter.local))
                counter.local = 0
        return items

    async def drain(self) -> None:
        """Wait for the settles in flight (tests; shutdown)."""
        await self._tasks.drain()

    async def start(self) -> None:
        if self.source.store is not None:
            await self.source.store.start()
        self._loops.spawn(every(self.config.sweep_interval_s, self.sweep))
        self._loops.spawn(every(self.config.snapshot_interval_s, self.snapshots.flush))

    async def close(self) -> None:
        await self._loops.cancel()
        await self._tasks.drain()
        await self.snapshots.flush()  # the embedded gateway's counters live on in the snapshot
        if self.source.store is not None:
            await self.source.store.close()
