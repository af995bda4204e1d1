"""The spend counters on Redis: the connection, the scripts run on it, what Redis last said.

`RedisCounters` is the one collaborator of `RedisLimits` (`redis.py`) that talks to Redis.
It runs a script (a refusal counted, logged once per script, and raised as
`ScriptRefused`), rebuilds a missing counter from its durable floor (`durable.SpendSource`,
so a budget never resets with Redis), charges a settle, hands a lease's rest back, sweeps
abandoned reservations, and remembers the settled and reserved spend Redis last reported
(`seen`), which is what the in-process stand-in starts from during an outage
(`redis_outage.py`). It knows nothing of outages: a call Redis could not answer raises one
of `REDIS_FAILURES`, and the caller decides.

What a failed Redis call means: an outage (Redis unreachable, or unable to take writes for
now) sends the limits to the in-process stand-in. A refusal is Redis answering a script with
an error: Redis is up and would refuse the same call again, so the limits stay on Redis and
the call is given up (`ScriptRefused`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
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

from . import periods, scripts
from .admission import Admission
from .autopipeline import AutoPipeline
from .durable import SnapshotWriter, SpendSource
from .leases import ALL, Lease

log = logging.getLogger("proxy.limits")

REDIS_TIMEOUT_S: Final = 0.5  # a hung Redis costs one request this long, then we degrade
REDIS_MAX_CONNECTIONS: Final = 4096  # Redis's own default maxclients is 10,000
_SWEEP_BATCH: Final = 500

# What a failed Redis call raises, outage or refusal.
# uvloop raises RuntimeError when a write hits a transport that a Redis restart closed.
REDIS_FAILURES: Final = (RedisError, OSError, RuntimeError)
# Error replies that mean Redis cannot take writes for now (a replica after a failover,
# out of memory, a cluster resharding), and are outages; any other error reply is Redis
# refusing what we sent it. "BUSY" (another script running too long) has no class of its own.
_UNAVAILABLE: Final = (ReadOnlyError, OutOfMemoryError, ClusterDownError, TryAgainError)


def is_refusal(error: BaseException) -> bool:
    """Redis is up and refused the call: a bug in a script or its arguments."""
    return (isinstance(error, ResponseError) and not isinstance(error, _UNAVAILABLE)
            and not str(error).startswith("BUSY"))


class ScriptRefused(Exception):
    """Redis answered a script with an error (already counted and logged)."""

    def __init__(self, script: str) -> None:
        super().__init__(script)
        self.script = script


# A call ready for the pipeline: the script, its keys, its args.
ScriptCall = tuple[AsyncScript, list[str], list[str | int]]


class RedisCounters:
    """The counters of every key on Redis, and the error counts of the calls made to it."""

    def __init__(
        self,
        redis_url: str,
        namespace: str,
        source: SpendSource,
        snapshots: SnapshotWriter,
        clock: Callable[[], float],
        mark_ms: int,
    ) -> None:
        self.namespace = namespace
        self.source = source
        self.snapshots = snapshots
        self._clock = clock
        self._mark_ms = mark_ms  # how long a settle's mark lives (`scripts.mark_of`)
        # No retries inside redis-py: an error must reach us at once so we can degrade.
        # A pool large enough for every request in flight: at 1,000 concurrent streams the
        # default (100) ran out, and "too many connections" looked like an outage. (A
        # blocking pool also avoids that, but cost 5 % of a request's CPU in the profile.)
        # The hot scripts need the pool only over TLS; see `autopipeline.py`.
        self._redis = redis.Redis.from_url(
            redis_url, max_connections=REDIS_MAX_CONNECTIONS,
            socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        # The hot scripts (admit, settle, rebuild) go on a lean connection of their own.
        self._pipeline = AutoPipeline(self._redis, REDIS_TIMEOUT_S)
        self.admit_script = self._redis.register_script(scripts.ADMIT)
        self._settle = self._redis.register_script(scripts.SETTLE)
        self._sweep = self._redis.register_script(scripts.SWEEP)
        self._rebuild = self._redis.register_script(scripts.REBUILD)
        self._lease_settle = self._redis.register_script(scripts.LEASE_SETTLE)
        self._lease_return = self._redis.register_script(scripts.LEASE_RETURN)
        # (key, period) -> [settled, reserved] as Redis last reported them.
        self._seen: dict[tuple[str, str], list[int]] = {}
        self.redis_errors = 0  # for metrics: every failed Redis call
        self.refusals = 0  # the failed calls that Redis refused (see `is_refusal`)
        self._refused_logged: set[str] = set()
        self.load_errors = 0  # failed reads of a counter's durable floor

    # --- scripts ------------------------------------------------------------------------

    async def run(
        self, name: str, script: AsyncScript, keys: list[str], args: list[str | int]
    ) -> Any:
        """Run one script; a refusal becomes `ScriptRefused`, which no outage handler catches."""
        try:
            return await self._pipeline.call(script, keys, args)
        except ResponseError as e:
            if not is_refusal(e):
                raise
            self.refused(f"the {name} script", e)
            raise ScriptRefused(name) from e

    def refused(self, what: str, error: BaseException) -> None:
        """Count a refusal (and log it, once per `what`)."""
        self.redis_errors += 1
        self.refusals += 1
        if what not in self._refused_logged:  # the same bug would fill the log
            self._refused_logged.add(what)
            log.error("limits: Redis refused %s (%s); a bug, not an outage: Redis stays in "
                      "use (further refusals are counted in redis_errors, not logged)",
                      what, error)

    def failed(self) -> None:
        """Count a call Redis did not answer (an outage's)."""
        self.redis_errors += 1

    # --- what Redis last said -----------------------------------------------------------

    def saw(self, key_id: str, period: str, settled: int, reserved: int | None = None) -> None:
        seen = self._seen.setdefault((key_id, period), [0, 0])
        seen[0] = settled
        if reserved is not None:
            seen[1] = reserved
        self.snapshots.touch(key_id, period, settled)

    def settled(self, key_id: str, period: str) -> int | None:
        """The settled spend Redis last reported for the counter (None: never heard of it)."""
        seen = self._seen.get((key_id, period))
        return seen[0] if seen is not None else None

    def in_use(self, key_id: str, period: str) -> int | None:
        """Settled + reserved as Redis last reported them: an outage's floor."""
        seen = self._seen.get((key_id, period))
        return seen[0] + seen[1] if seen is not None else None

    # --- counters -----------------------------------------------------------------------

    async def rebuild(self, key_id: str, period: str) -> bool:
        """Create a missing counter at its durable floor; False when no floor could be read."""
        seen = self.settled(key_id, period) or 0
        try:
            base = max(seen, await self.source.base(key_id, period))
        except Exception as e:  # noqa: BLE001 - the database is away: say so, do not reset
            self.load_errors += 1
            log.error("limits: cannot rebuild the spend counter of key %s (%s)",
                      key_id, type(e).__name__)
            return False
        ttl = periods.counter_ttl_s(period, self._clock())
        settled = await self.run("rebuild", self._rebuild, self._counter_keys(key_id, period),
                                 [base, 0, ttl])
        self.saw(key_id, period, int(settled))
        return True

    async def push(self, key_id: str, period: str, delta: int, push_id: str) -> None:
        """Add spend counted in-process (an outage's) onto the counter, creating it if lost;
        a push replayed under the same `push_id` adds nothing twice."""
        # The floor excludes the ledger: it already holds the requests counted in `delta`.
        floor = self.settled(key_id, period) or 0
        try:
            floor = max(floor, await self.source.snapshot(key_id, period))
        except Exception as e:  # noqa: BLE001
            self.load_errors += 1
            log.warning("limits: no spend snapshot for key %s (%s)", key_id, type(e).__name__)
        ttl = periods.counter_ttl_s(period, self._clock())
        keys = [*self._counter_keys(key_id, period),
                scripts.mark_of(self.namespace, key_id, push_id)]
        try:
            settled = await self.run("rebuild", self._rebuild, keys,
                                     [floor, delta, ttl, self._mark_ms])
        except ScriptRefused:
            log.error("limits: could not push %d nano-USD counted in-process to key %s; the "
                      "ledger still has it", delta, key_id)
            return
        self.saw(key_id, period, int(settled))

    def keys(self, key_id: str, period: str) -> list[str]:
        """counter, reservations, due, rpm bucket, tpm bucket: what ADMIT touches."""
        return scripts.keys_of(self.namespace, key_id, period)

    def _counter_keys(self, key_id: str, period: str) -> list[str]:
        """counter, reservations, due: what REBUILD and the lease scripts touch."""
        return scripts.keys_of(self.namespace, key_id, period)[:3]

    # --- charging a settle --------------------------------------------------------------

    def send_settle(self, admission: Admission, cost: int, tokens: int) -> asyncio.Future[Any]:
        """The settle script's call, on its way: its reply is the settled spend, or -1
        when the counter is missing (the script then changed nothing)."""
        return self._pipeline.call(*self._settle_call(admission, cost, tokens))

    def _settle_call(self, admission: Admission, cost: int, tokens: int) -> ScriptCall:
        key_id, rid = admission.key_id, admission.reservation_id
        k = scripts.keys_of(self.namespace, key_id, admission.period)
        mark = scripts.mark_of(self.namespace, key_id, rid)
        if admission.lease_id:
            return self._lease_settle, [k[0], k[1], k[2], mark], [
                admission.lease_id, cost, admission.reserved_nusd, self._mark_ms]
        args: list[str | int] = [rid, cost, max(0, admission.tokens - tokens), admission.tpm,
                                 self._mark_ms]
        return self._settle, [k[0], k[1], k[2], k[4], mark], args

    async def settle(self, admission: Admission, cost: int, tokens: int) -> None:
        """Charge a settle, rebuilding a missing counter first; raises `REDIS_FAILURES`."""
        key_id, period = admission.key_id, admission.period
        script, keys, args = self._settle_call(admission, cost, tokens)
        try:
            for _ in range(3):
                settled = int(await self.run("settle", script, keys, args))
                if settled != -1:
                    self.saw(key_id, period, settled)
                    return
                if not await self.rebuild(key_id, period):
                    break
        except ScriptRefused:
            pass  # a replay would be refused again
        not_charged(admission, cost)

    # --- handing a lease's rest back -----------------------------------------------------

    def send_return(self, lease: Lease) -> asyncio.Future[Any]:
        """The lease return script's call, on its way."""
        return self._pipeline.call(self._lease_return, *self._return_call(lease))

    def _return_call(self, lease: Lease) -> tuple[list[str], list[str | int]]:
        rest: str | int = "all" if lease.left == ALL else lease.left
        return self._counter_keys(lease.key_id, lease.period), [lease.id, rest]

    async def give_back(self, lease: Lease) -> None:
        """Hand a lease's rest back and wait for Redis; raises `REDIS_FAILURES`."""
        try:
            await self.run("lease return", self._lease_return, *self._return_call(lease))
        except ScriptRefused:
            pass  # counted and logged; the sweep charges its rest: the budget errs safe

    # --- sweep, reads, the connection ----------------------------------------------------

    async def sweep(self, key_ids: Iterable[str], now: float) -> int:
        """Charge the abandoned reservations of these keys and of every key seen here, in
        the current and the previous month and in total; returns how many."""
        current = periods.period_id("monthly", now)
        spans = [periods.TOTAL, current, periods.previous(current) or current]
        targets = [(kid, p) for kid in {*key_ids, *(k for k, _ in self._seen)} for p in spans]
        swept = 0
        for i in range(0, len(targets), _SWEEP_BATCH):
            batch = targets[i:i + _SWEEP_BATCH]
            pipe = self._redis.pipeline(transaction=False)
            for kid, p in batch:
                await self._sweep(keys=self._counter_keys(kid, p), args=[int(now * 1000)],
                                  client=pipe)
            results = await pipe.execute(raise_on_error=False)
            for (kid, p), result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    if not is_refusal(result):
                        raise result
                    self.refused("the sweep script", result)  # the other keys still sweep
                    continue
                n, settled = result
                if n:
                    swept += n
                    self.saw(kid, p, settled)
        return swept

    async def lock(self, name: str, ttl_ms: int) -> bool:
        """Take a lock of all workers and instances for `ttl_ms`: False when another holds it."""
        return bool(await self._redis.set(f"{self.namespace}:lim:{name}", "1", nx=True,
                                          px=ttl_ms))

    async def read_settled(self, counters: Sequence[tuple[str, str]]) -> list[int | None]:
        """Each counter's settled spend as Redis holds it (None: no counter); raises
        `REDIS_FAILURES`."""
        pipe = self._redis.pipeline(transaction=False)
        for kid, p in counters:
            pipe.hget(self._counter_keys(kid, p)[0], "s")
        values: list[Any] = await pipe.execute()
        return [int(v) if v is not None else None for v in values]

    async def reconnect(self) -> None:
        """Drop every connection (dead after a Redis restart), then probe with a PING."""
        self._pipeline.disconnect()
        await self._redis.connection_pool.disconnect()
        await self._redis.ping()

    async def close(self) -> None:
        await self._pipeline.close()
        await self._redis.aclose()


def not_charged(admission: Admission, cost: int) -> None:
    log.error("limits: could not charge %d nano-USD to key %s; the ledger still has it",
              cost, admission.key_id)
