"""Spend and rate limits shared by every worker and instance through Redis.

Each step is one Lua script (`scripts.py`) on one key's slot: admit (rate buckets +
quota check + reservation), settle (charge, release), sweep (abandoned reservations at
their estimate), rebuild (a missing counter from its durable floor). A missing counter is
rebuilt from `durable.SpendSource`, so a budget never resets with Redis.

When Redis cannot be reached the gateway keeps serving (unless `limits.fail_closed`):
new requests are admitted by an in-process `MemoryLimits` floored at the last values Redis
reported, settles of requests Redis admitted are queued, and when Redis answers again the
spend counted meanwhile is pushed and the queue replayed, before Redis is used again.

Redis answering a script with an error is not an outage: Redis is up and would refuse
the same call again, so the limits stay on Redis. Such a refusal (`ScriptRefused`) is
counted, logged once per script, and the call is given up (a settle) or the key's limit
reported as uncheckable (an admission).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, Final

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)

from ..auth import Principal
from ..config import LimitsConfig
from ..errors import ServiceUnavailable
from . import periods, scripts
from .admission import Admission
from .autopipeline import AutoPipeline
from .durable import SnapshotWriter, SpendSource
from .memory import MemoryLimits, reservation_id
from .responses import bucket_state, quota_exceeded, rate_headers, rate_limited
from .tasks import TaskSet

log = logging.getLogger("proxy.limits")

REDIS_TIMEOUT_S: Final = 0.5  # a hung Redis costs one request this long, then we degrade
RECOVER_S: Final = 0.25  # how often a degraded worker looks for Redis again
_BATCH: Final = 500
REDIS_MAX_CONNECTIONS: Final = 4096  # Redis's own default maxclients is 10,000
# uvloop raises RuntimeError when a write hits a transport that a Redis restart closed.
_ERRORS: Final = (RedisError, OSError, RuntimeError)
# Error replies that mean Redis cannot take writes for now (a replica after a failover,
# out of memory, a cluster resharding), and are outages; any other error reply is Redis
# refusing what we sent it. "BUSY" (another script running too long) has no class of its own.
_UNAVAILABLE: Final = (ReadOnlyError, OutOfMemoryError, ClusterDownError, TryAgainError)


def _refusal(error: BaseException) -> bool:
    """Redis is up and refused the call: a bug in a script or its arguments."""
    return (isinstance(error, ResponseError) and not isinstance(error, _UNAVAILABLE)
            and not str(error).startswith("BUSY"))


class ScriptRefused(Exception):
    """Redis answered a script with an error (already counted and logged)."""

    def __init__(self, script: str) -> None:
        super().__init__(script)
        self.script = script


class _OutageSource(SpendSource):
    """Floors for the in-process stand-in: what Redis last said, settled + reserved."""

    def __init__(self, owner: RedisLimits) -> None:
        super().__init__(owner.source.store, owner.source.ledger)
        self._owner = owner

    async def base(self, key_id: str, period: str) -> int:
        seen = self._owner.seen.get((key_id, period))
        if seen is not None:
            return seen[0] + seen[1]
        return await super().base(key_id, period)


class RedisLimits:
    def __init__(
        self,
        config: LimitsConfig,
        redis_url: str,
        namespace: str,
        source: SpendSource,
        key_ids: Callable[[], Iterable[str]] = lambda: (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.namespace = namespace
        self.source = source
        self.clock = clock
        self._key_ids = key_ids
        # No retries inside redis-py: an error must reach us at once so we can degrade.
        # A pool large enough for every request in flight: at 1,000 concurrent streams the
        # default (100) ran out, and "too many connections" looked like an outage. (A
        # blocking pool also avoids that, but cost 5 % of a request's CPU in the profile.)
        # The hot scripts need the pool only over TLS; see `autopipeline.py`.
        self.redis = redis.Redis.from_url(
            redis_url, max_connections=REDIS_MAX_CONNECTIONS,
            socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        # The hot scripts (admit, settle, rebuild) go on a lean connection of their own.
        self._pipeline = AutoPipeline(self.redis, REDIS_TIMEOUT_S)
        self._admit = self.redis.register_script(scripts.ADMIT)
        self._settle = self.redis.register_script(scripts.SETTLE)
        self._sweep = self.redis.register_script(scripts.SWEEP)
        self._rebuild = self.redis.register_script(scripts.REBUILD)
        self.snapshots = SnapshotWriter(source.store)
        # (key, period) -> [settled, reserved] as Redis last reported them.
        self.seen: dict[tuple[str, str], list[int]] = {}
        self.redis_errors = 0  # for metrics: every failed Redis call
        self.refusals = 0  # the failed calls that Redis refused (see `_refusal`)
        self._refused_logged: set[str] = set()
        self.degraded = False  # for metrics: counting in-process, Redis unreachable
        self._fallback: MemoryLimits | None = None
        self._pending: list[tuple[Admission, int, int]] = []  # settles for Redis to replay
        self._tasks = TaskSet()
        self._settling: set[asyncio.Future[Any]] = set()  # settle calls awaiting Redis
        self._loops = TaskSet()
        self._load_errors = 0

    @property
    def database_errors(self) -> int:
        """For metrics: failed reads of a counter's durable floor, failed snapshot writes."""
        return self._load_errors + self.snapshots.errors

    # --- admit --------------------------------------------------------------------------

    async def admit(
        self,
        principal: Principal,
        request_id: str,
        idempotency_key: str | None,
        worst_case_nusd: int,
        estimated_tokens: int,
    ) -> Admission:
        if self.degraded:
            return await self._admit_locally(principal, idempotency_key, worst_case_nusd,
                                             estimated_tokens)
        now = self.clock()
        period = periods.period_id(principal.period, now)
        rid = reservation_id(idempotency_key)
        ttl_ms = int(self.config.reservation_ttl_s * 1000)
        now_ms = int(now * 1000)
        limit = principal.limit_nusd if principal.limit_nusd is not None else -1
        args: list[str | int] = [rid, worst_case_nusd, limit, now_ms, now_ms + ttl_ms, principal.rpm or 0,
                principal.tpm or 0, estimated_tokens, 2 * ttl_ms]
        keys = scripts.keys_of(self.namespace, principal.key_id, period)
        why = "the database is unreachable"
        try:
            for _ in range(3):
                result: list[int] = await self._run("admit", self._admit, keys, args)
                if result[0] != -1:
                    return self._admitted(principal, period, rid, estimated_tokens, result)
                if not await self._rebuild_counter(principal.key_id, period):
                    break
        except ScriptRefused:
            why = "the limits store refused the check"
        except _ERRORS as e:
            self._failed(e)
            return await self._admit_locally(principal, idempotency_key, worst_case_nusd,
                                             estimated_tokens)
        if principal.limit_nusd is None:  # nothing to enforce: serve, the ledger still counts
            return Admission(principal.key_id, rid, 0, period=period)
        raise ServiceUnavailable(
            f"The key's spend limit could not be checked ({why}).",
            code="limits_unavailable", headers={"retry-after": "1"},
        )

    def _admitted(
        self, principal: Principal, period: str, rid: str, est_tokens: int, result: list[int]
    ) -> Admission:
        rpm, tpm = principal.rpm or 0, principal.tpm or 0
        code = result[0]
        if code == 2:
            states = (bucket_state(rpm, result[3] / 1000) if rpm else None,
                      bucket_state(tpm, result[4] / 1000) if tpm else None)
            which = "requests" if result[1] == 1 else "tokens"
            raise rate_limited(which, result[2] / 1000, rate_headers(*states))
        self._saw(principal.key_id, period, result[1], result[2])
        if code == 1:
            raise quota_exceeded(principal, period)
        headers = rate_headers(bucket_state(rpm, result[3] / 1000) if rpm else None,
                               bucket_state(tpm, result[4] / 1000) if tpm else None)
        return Admission(principal.key_id, rid, result[5], headers, period=period,
                         tokens=min(est_tokens, tpm), tpm=tpm)

    def _saw(self, key_id: str, period: str, settled: int, reserved: int | None = None) -> None:
        seen = self.seen.setdefault((key_id, period), [0, 0])
        seen[0] = settled
        if reserved is not None:
            seen[1] = reserved
        self.snapshots.touch(key_id, period, settled)

    async def _rebuild_counter(self, key_id: str, period: str, delta: int = 0) -> bool:
        """Create a missing counter at its durable floor; False when no floor could be read."""
        seen = self.seen.get((key_id, period), [0, 0])[0]
        try:
            base = max(seen, await self.source.base(key_id, period))
        except Exception as e:  # noqa: BLE001 - the database is away: say so, do not reset
            self._load_errors += 1
            log.error("limits: cannot rebuild the spend counter of key %s (%s)",
                      key_id, type(e).__name__)
            return False
        ttl = periods.counter_ttl_s(period, self.clock())
        settled = await self._run("rebuild", self._rebuild, [self._counter(key_id, period)],
                                  [base, delta, ttl])
        self._saw(key_id, period, int(settled))
        return True

    def _counter(self, key_id: str, period: str) -> str:
        return scripts.keys_of(self.namespace, key_id, period)[0]

    async def _run(
        self, name: str, script: AsyncScript, keys: list[str], args: list[str | int]
    ) -> Any:
        """Run one script; a refusal becomes `ScriptRefused`, which no outage handler catches."""
        try:
            return await self._pipeline.call(script, keys, args)
        except ResponseError as e:
            if not _refusal(e):
                raise
            self._refused(f"the {name} script", e)
            raise ScriptRefused(name) from e

    def _refused(self, what: str, error: BaseException) -> None:
        self.redis_errors += 1
        self.refusals += 1
        if what not in self._refused_logged:  # the same bug would fill the log
            self._refused_logged.add(what)
            log.error("limits: Redis refused %s (%s); a bug, not an outage: Redis stays in "
                      "use (further refusals are counted in redis_errors, not logged)",
                      what, error)

    async def _admit_locally(
        self, principal: Principal, idempotency_key: str | None, worst: int, est_tokens: int
    ) -> Admission:
        if self.config.fail_closed:
            raise ServiceUnavailable(
                "Spend limits cannot be checked right now (Redis is unreachable); "
                "this gateway is configured to refuse requests meanwhile.",
                code="limits_unavailable", headers={"retry-after": "1"},
            )
        assert self._fallback is not None
        admission = await self._fallback.admit(principal, "", idempotency_key, worst, est_tokens)
        admission.local = True
        return admission

    # --- settle -------------------------------------------------------------------------

    def settle(self, admission: Admission, cost_nusd: int, tokens: int) -> None:
        if self.degraded:
            self._tasks.spawn(self._settle_one(admission, cost_nusd, tokens))
            return
        # The common case costs no task: one pipelined call and a callback (a task per
        # request was a tenth of the limits' CPU). A missing counter or a failure goes on
        # in `_settled`.
        keys, args = self._settle_call(admission, cost_nusd, tokens)
        future = self._pipeline.call(self._settle, keys, args)
        self._settling.add(future)
        future.add_done_callback(partial(self._settled, admission, cost_nusd, tokens))

    def _settled(self, admission: Admission, cost: int, tokens: int,
                 future: asyncio.Future[Any]) -> None:
        self._settling.discard(future)
        if future.cancelled():  # closing: the ledger still has the request
            return
        error = future.exception()
        if error is None:
            settled = int(future.result())
            if settled != -1:
                self._saw(admission.key_id, admission.period, settled)
            else:  # the counter is missing; the script changed nothing, so run it again
                self._tasks.spawn(self._settle_one(admission, cost, tokens))
        elif _refusal(error):
            self._refused("the settle script", error)
            self._not_charged(admission, cost)
        elif isinstance(error, _ERRORS):
            self._failed(error)
            self._settle_elsewhere(admission, cost, tokens)
        else:
            log.error("limits: settle failed: %r", error)
            self._not_charged(admission, cost)

    async def _settle_one(self, admission: Admission, cost: int, tokens: int) -> None:
        if not self.degraded:
            try:
                await self._settle_remote(admission, cost, tokens)
                return
            except _ERRORS as e:
                self._failed(e)
        self._settle_elsewhere(admission, cost, tokens)

    def _settle_elsewhere(self, admission: Admission, cost: int, tokens: int) -> None:
        """Redis is away: count in-process, or queue the settle for Redis to replay."""
        if admission.local:
            assert self._fallback is not None
            self._fallback.settle(admission, cost, tokens)
        else:
            self._pending.append((admission, cost, tokens))

    def _settle_call(
        self, admission: Admission, cost: int, tokens: int
    ) -> tuple[list[str], list[str | int]]:
        k = scripts.keys_of(self.namespace, admission.key_id, admission.period)
        args: list[str | int] = [admission.reservation_id, cost,
                                 max(0, admission.tokens - tokens), admission.tpm]
        return [k[0], k[1], k[2], k[4]], args

    async def _settle_remote(self, admission: Admission, cost: int, tokens: int) -> None:
        key_id, period = admission.key_id, admission.period
        keys, args = self._settle_call(admission, cost, tokens)
        try:
            for _ in range(3):
                settled = int(await self._run("settle", self._settle, keys, args))
                if settled != -1:
                    self._saw(key_id, period, settled)
                    return
                if not await self._rebuild_counter(key_id, period):
                    break
        except ScriptRefused:
            pass  # a replay would be refused again
        self._not_charged(admission, cost)

    @staticmethod
    def _not_charged(admission: Admission, cost: int) -> None:
        log.error("limits: could not charge %d nano-USD to key %s; the ledger still has it",
                  cost, admission.key_id)

    # --- outage -------------------------------------------------------------------------

    def _failed(self, error: BaseException) -> None:
        self.redis_errors += 1
        if self.degraded:
            return
        self.degraded = True
        self._fallback = MemoryLimits(self.config, _OutageSource(self), self.clock)
        log.warning("limits: Redis unreachable (%s); counting spend and rate limits in-process "
                    "until it is back%s", type(error).__name__,
                    " (refusing requests: fail_closed)" if self.config.fail_closed else "")
        self._loops.spawn(self._recover())
        self._tasks.spawn(self.snapshots.flush())  # the database keeps what Redis last said

    async def _recover(self) -> None:
        while True:
            await asyncio.sleep(RECOVER_S)
            try:
                # Connections to a restarted server are dead; drop them all, then probe.
                self._pipeline.disconnect()
                await self.redis.connection_pool.disconnect()
                await self.redis.ping()
                pushed = await self._reconcile()
            except _ERRORS:
                self.redis_errors += 1
                continue
            log.info("limits: Redis is back; pushed the in-process spend of %d counters", pushed)
            return

    async def _reconcile(self) -> int:
        """Push what was counted in-process, replay queued settles; then leave the outage."""
        fallback = self._fallback
        assert fallback is not None
        pushed = 0
        while True:  # settles can land while we push: loop until nothing is left
            local = fallback.take_local()
            pending, self._pending = self._pending, []
            if not local and not pending:
                break
            # Counters that only queued settles touch get their floor too, before the replay:
            # a replay onto a missing counter would rebuild it from the ledger, which
            # already holds those requests.
            known = {(k, p) for k, p, _ in local}
            for admission, _, _ in pending:
                if (admission.key_id, admission.period) not in known:
                    known.add((admission.key_id, admission.period))
                    local.append((admission.key_id, admission.period, 0))
            done = 0
            try:
                for key_id, period, delta in local:
                    await self._push(key_id, period, delta)
                    done += 1
                pushed += done
                local, done = [], 0
                for admission, cost, tokens in pending:
                    await self._settle_remote(admission, cost, tokens)
                    done += 1
            except BaseException:
                fallback.give_back(local[done:])
                self._pending[:0] = pending[done:] if not local else pending
                raise
        self.degraded = False
        self._fallback = None
        return pushed

    async def _push(self, key_id: str, period: str, delta: int) -> None:
        # The floor excludes the ledger: it already holds the requests counted in `delta`.
        floor = self.seen.get((key_id, period), [0, 0])[0]
        try:
            floor = max(floor, await self.source.snapshot(key_id, period))
        except Exception as e:  # noqa: BLE001
            self._load_errors += 1
            log.warning("limits: no spend snapshot for key %s (%s)", key_id, type(e).__name__)
        ttl = periods.counter_ttl_s(period, self.clock())
        try:
            settled = await self._run("rebuild", self._rebuild, [self._counter(key_id, period)],
                                      [floor, delta, ttl])
        except ScriptRefused:
            log.error("limits: could not push %d nano-USD counted in-process to key %s; the "
                      "ledger still has it", delta, key_id)
            return
        self._saw(key_id, period, int(settled))

    # --- sweep, spend, lifecycle ----------------------------------------------------------

    async def sweep(self, now: float | None = None) -> int:
        """Charge abandoned reservations at their estimate; returns how many."""
        if self.degraded:
            assert self._fallback is not None
            return await self._fallback.sweep(now)
        now = self.clock() if now is None else now
        current = periods.period_id("monthly", now)
        spans = [periods.TOTAL, current, periods.previous(current) or current]
        targets = [(kid, p) for kid in {*self._key_ids(), *(k for k, _ in self.seen)}
                   for p in spans]
        swept = 0
        for i in range(0, len(targets), _BATCH):
            batch = targets[i:i + _BATCH]
            pipe = self.redis.pipeline(transaction=False)
            for kid, p in batch:
                await self._sweep(keys=scripts.keys_of(self.namespace, kid, p)[:3],
                                  args=[int(now * 1000)], client=pipe)
            results = await pipe.execute(raise_on_error=False)
            for (kid, p), result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    if not _refusal(result):
                        raise result
                    self._refused("the sweep script", result)  # the other keys still sweep
                    continue
                n, settled = result
                if n:
                    swept += n
                    self._saw(kid, p, settled)
        return swept

    async def _sweeper(self) -> None:
        interval = self.config.sweep_interval_s
        while True:
            await asyncio.sleep(interval)
            if self.degraded:
                continue
            try:
                # One sweeper per interval across all workers and instances.
                lock = f"{self.namespace}:lim:sweeper"
                if await self.redis.set(lock, "1", nx=True, px=max(1, int(interval * 900))):
                    await self.sweep()
            except _ERRORS as e:
                if _refusal(e):
                    self._refused("the sweeper's lock", e)
                else:
                    self._failed(e)

    async def spend(self, principals: Sequence[Principal]) -> list[int | None]:
        now = self.clock()
        ids = [(p.key_id, periods.period_id(p.period, now)) for p in principals]
        seen = [self.seen.get(i, [None])[0] for i in ids]
        if self.degraded:
            assert self._fallback is not None
            local = await self._fallback.spend(principals)
            return [x if x is not None else s for x, s in zip(local, seen, strict=True)]
        try:
            pipe = self.redis.pipeline(transaction=False)
            for kid, p in ids:
                pipe.hget(self._counter(kid, p), "s")
            values: list[Any] = await pipe.execute()
        except _ERRORS as e:
            if _refusal(e):
                self._refused("a read of spend counters", e)
            else:
                self._failed(e)
            return seen
        return [int(v) if v is not None else s for v, s in zip(values, seen, strict=True)]

    async def _every(self, seconds: float, job: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(seconds)
            await job()

    async def drain(self) -> None:
        """Wait for the settles in flight (tests; shutdown)."""
        if self._settling:  # their callbacks run before `wait` returns, spawning any retry
            await asyncio.wait(set(self._settling), timeout=10)
        await self._tasks.drain()

    async def start(self) -> None:
        if self.source.store is not None:
            await self.source.store.start()
        self._loops.spawn(self._sweeper())
        self._loops.spawn(self._every(self.config.snapshot_interval_s, self.snapshots.flush))

    async def close(self) -> None:
        await self._loops.cancel()
        await self.drain()
        if self.degraded:
            try:  # one last chance to hand the outage's spend over
                await asyncio.wait_for(self._reconcile(), timeout=2.0)
            except (*_ERRORS, TimeoutError):
                log.warning("limits: closing while Redis is away; the ledger keeps the spend")
        await self.snapshots.flush()
        await self._pipeline.close()
        await self.redis.aclose()
        if self.source.store is not None:
            await self.source.store.close()
