"""The Redis limits' leases (`leases.py`): asking for one, drawing from it, handing it back.

A request of a leasable key draws from the worker's lease when it can (no Redis call before
the upstream one); when it cannot, the lease goes back and the request's admit script asks
for a new one, unless another request of the key is already asking (then it reserves its
own, as without leases). Unused rests go back when a lease runs low, when its `lease_s` is
up (`expire`, every `lease_s`), on close, and, after an outage, when Redis is back
(`redis_outage.py` queues them meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from ..config import LimitsConfig
from ..principal import Principal
from .admission import Admission
from .leases import ALL, Lease, Leases
from .redis_counters import REDIS_FAILURES, RedisCounters, is_refusal
from .redis_outage import Outage

log = logging.getLogger("proxy.limits")


class RedisLeases:
    """This worker's leases on Redis: the bookkeeping (`Leases`) and the hand-backs."""

    def __init__(
        self,
        config: LimitsConfig,
        held: Leases,
        counters: RedisCounters,
        outage: Outage,
        clock: Callable[[], float],
    ) -> None:
        self._config = config
        self._held = held
        self._counters = counters
        self._outage = outage
        self._clock = clock
        self._returning: set[asyncio.Future[Any]] = set()  # hand-backs awaiting Redis
        # An admission drawn from the key's lease, or None (no lease, or it cannot serve):
        # the bookkeeping's own method, so a draw on the request path is one call.
        self.draw: Callable[[str, str, int, float], Admission | None] = held.draw

    def __len__(self) -> int:
        return len(self._held)

    def leasable(self, principal: Principal) -> bool:
        """Only a key with a spend limit and nothing else to check (rpm and tpm buckets
        count each request in Redis)."""
        return (principal.limit_nusd is not None and not principal.rpm and not principal.tpm
                and self._config.lease_requests > 0)

    def ask(self, key_id: str, period: str, worst: int) -> int:
        """The most this request's admit may reserve as a lease (0: its own reservation).
        The key's lease, which could not serve it, goes back. Unless 0, the key's grant is
        in flight until `asked`."""
        self.retire(key_id, period)
        if not worst or not self._held.ask(key_id, period):
            return 0
        return worst * self._config.lease_requests

    def asked(self, key_id: str, period: str) -> None:
        self._held.asked(key_id, period)

    def granted(
        self, key_id: str, period: str, lease_id: str, rid: str, result: list[int], worst: int
    ) -> Admission:
        """A lease came with the admission: this request draws from it first. (Drawing
        stops well before the sweep could charge the lease as abandoned.)"""
        self._counters.saw(key_id, period, result[1], result[2])
        lease_s = min(self._config.lease_s, self._config.reservation_ttl_s / 4)
        self._held.hold(Lease(lease_id, key_id, period, result[5] - worst,
                              self._clock() + lease_s))
        return Admission(key_id, rid, worst, period=period, lease_id=lease_id)

    def grant_lost(self, key_id: str, period: str, lease_id: str) -> None:
        """An admit that asked for a lease got no answer (a timeout, a cancelled request):
        Redis may have granted it, and nobody will draw from it. Hand all of it back."""
        self.give_back(Lease(lease_id, key_id, period, ALL, 0.0))

    # --- handing back ----------------------------------------------------------------------

    def retire(self, key_id: str, period: str) -> None:
        """Take the key's lease out of use and hand its rest back. (Also when Redis may have
        lost it with the key's counter: a return of a lease Redis does not have does nothing.)"""
        lease = self._held.take(key_id, period)
        if lease is not None:
            self.give_back(lease)

    def give_back(self, lease: Lease) -> None:
        """Hand a lease's unused rest back to the key's budget, without waiting for it."""
        if not lease.left:  # drawn to the last nano-USD: its settles end it
            return
        if self._outage.active:
            self._outage.queue_return(lease)
            return
        future = self._counters.send_return(lease)
        self._returning.add(future)
        future.add_done_callback(partial(self._given_back, lease))

    def _given_back(self, lease: Lease, future: asyncio.Future[Any]) -> None:
        self._returning.discard(future)
        if future.cancelled():  # closing: the sweep charges the rest, the budget errs safe
            return
        error = future.exception()
        if error is None:
            return
        if is_refusal(error):
            self._counters.refused("the lease return script", error)
        elif isinstance(error, REDIS_FAILURES):
            self._outage.queue_return(lease)  # replayed when Redis is back
            self._outage.failed(error)
        else:
            log.error("limits: handing back a lease failed: %r", error)

    def expire(self) -> int:
        """The rests of leases whose time is up go back (keys gone quiet); returns how many."""
        expired = list(self._held.expired(self._clock()))
        for lease in expired:
            self.give_back(lease)
        return len(expired)

    def give_back_all(self) -> None:
        for lease in self._held.take_all():
            self.give_back(lease)

    def waiting(self) -> set[asyncio.Future[Any]]:
        """The hand-backs sent and not answered yet (for `drain`)."""
        return set(self._returning)
