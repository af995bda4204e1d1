"""The spend counters on Redis: the connection, the scripts run on it, what Redis last said.

`RedisCounters` holds everything `RedisLimits` keeps (set up here, in one place) and the
counter operations every part of it uses: run a script (a refusal counted, logged once
per script, and raised as `ScriptRefused`), rebuild a missing counter from its durable
floor (`durable.SpendSource`, so a budget never resets with Redis), charge a settle, and
remember the settled and reserved spend Redis last reported (`seen`), which is what the
in-process stand-in starts from during an outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from ..config import LimitsConfig
from . import periods, scripts
from .admission import Admission
from .autopipeline import AutoPipeline
from .durable import SnapshotWriter, SpendSource
from .leases import ALL, Lease, Leases
from .memory import MemoryLimits
from .redis_failures import ScriptRefused, is_refusal
from .tasks import TaskSet

log = logging.getLogger("proxy.limits")

REDIS_TIMEOUT_S: Final = 0.5  # a hung Redis costs one request this long, then we degrade
REDIS_MAX_CONNECTIONS: Final = 4096  # Redis's own default maxclients is 10,000


class RedisCounters:
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
        self._lease_settle = self.redis.register_script(scripts.LEASE_SETTLE)
        self._lease_return = self.redis.register_script(scripts.LEASE_RETURN)
        self.leases = Leases()
        self.snapshots = SnapshotWriter(source.store)
        # (key, period) -> [settled, reserved] as Redis last reported them.
        self.seen: dict[tuple[str, str], list[int]] = {}
        self.redis_errors = 0  # for metrics: every failed Redis call
        self.refusals = 0  # the failed calls that Redis refused (see `is_refusal`)
        self._refused_logged: set[str] = set()
        self.degraded = False  # for metrics: counting in-process, Redis unreachable
        self._fallback: MemoryLimits | None = None
        self._pending: list[tuple[Admission, int, int]] = []  # settles for Redis to replay
        self._returns: list[Lease] = []  # leases' rests for Redis to take back, likewise
        self._tasks = TaskSet()
        self._settling: set[asyncio.Future[Any]] = set()  # settle calls awaiting Redis
        self._loops = TaskSet()
        self._load_errors = 0

    @property
    def database_errors(self) -> int:
        """For metrics: failed reads of a counter's durable floor, failed snapshot writes."""
        return self._load_errors + self.snapshots.errors

    # --- scripts ------------------------------------------------------------------------

    async def _run(
        self, name: str, script: AsyncScript, keys: list[str], args: list[str | int]
    ) -> Any:
        """Run one script; a refusal becomes `ScriptRefused`, which no outage handler catches."""
        try:
            return await self._pipeline.call(script, keys, args)
        except ResponseError as e:
            if not is_refusal(e):
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

    # --- counters -----------------------------------------------------------------------

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
        settled = await self._run("rebuild", self._rebuild, self._counter_keys(key_id, period),
                                  [base, delta, ttl])
        self._saw(key_id, period, int(settled))
        return True

    def _counter(self, key_id: str, period: str) -> str:
        return scripts.keys_of(self.namespace, key_id, period)[0]

    def _counter_keys(self, key_id: str, period: str) -> list[str]:
        """counter, reservations, due: what REBUILD and the lease scripts touch."""
        return scripts.keys_of(self.namespace, key_id, period)[:3]

    # --- charging a settle --------------------------------------------------------------

    def _settle_call(
        self, admission: Admission, cost: int, tokens: int
    ) -> tuple[AsyncScript, list[str], list[str | int]]:
        k = scripts.keys_of(self.namespace, admission.key_id, admission.period)
        if admission.leased:
            return self._lease_settle, k[:3], [admission.reservation_id, cost,
                                               admission.reserved_nusd]
        args: list[str | int] = [admission.reservation_id, cost,
                                 max(0, admission.tokens - tokens), admission.tpm]
        return self._settle, [k[0], k[1], k[2], k[4]], args

    async def _settle_remote(self, admission: Admission, cost: int, tokens: int) -> None:
        key_id, period = admission.key_id, admission.period
        script, keys, args = self._settle_call(admission, cost, tokens)
        try:
            for _ in range(3):
                settled = int(await self._run("settle", script, keys, args))
                if settled != -1:
                    self._saw(key_id, period, settled)
                    return
                if not await self._rebuild_counter(key_id, period):
                    break
        except ScriptRefused:
            pass  # a replay would be refused again
        self._not_charged(admission, cost)

    # --- handing a lease's rest back -------------------------------------------------------

    def _return_call(self, lease: Lease) -> tuple[list[str], list[str | int]]:
        rest: str | int = "all" if lease.left == ALL else lease.left
        return self._counter_keys(lease.key_id, lease.period), [lease.id, rest]

    async def _give_back_remote(self, lease: Lease) -> None:
        try:
            await self._run("lease return", self._lease_return, *self._return_call(lease))
        except ScriptRefused:
            pass  # counted and logged; the sweep charges its rest: the budget errs safe

    @staticmethod
    def _not_charged(admission: Admission, cost: int) -> None:
        log.error("limits: could not charge %d nano-USD to key %s; the ledger still has it",
                  cost, admission.key_id)
