"""The Redis limits' leases (`leases.py`): asking for one, drawing from it, handing it back.

A request of a leasable key draws from the worker's lease when it can (no Redis call before
the upstream one); when it cannot, the lease goes back and the request's admit script asks
for a new one, unless another request of the key is already asking (then it reserves its
own, as without leases). Unused rests go back when a lease runs low, when its `lease_s` is
up (a loop looks every `lease_s`), on close, and, after an outage, when Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

from ..auth import Principal
from .admission import Admission
from .leases import ALL, Lease
from .redis_failures import REDIS_FAILURES, is_refusal
from .redis_outage import RedisOutage

log = logging.getLogger("proxy.limits")


class RedisLeases(RedisOutage):
    def _leasable(self, principal: Principal) -> bool:
        return (principal.limit_nusd is not None and not principal.rpm and not principal.tpm
                and self.config.lease_requests > 0)

    def _ask_for_lease(self, key_id: str, period: str, worst: int) -> int:
        """The most this request's admit may reserve as a lease (0: its own reservation).
        The key's lease, which could not serve it, goes back."""
        self._retire(key_id, period)
        if not worst or not self.leases.ask(key_id, period):
            return 0
        return worst * self.config.lease_requests

    def _granted(
        self, key_id: str, period: str, lease_id: str, result: list[int], worst: int
    ) -> Admission:
        """A lease came with the admission: this request draws from it first. (Drawing
        stops well before the sweep could charge the lease as abandoned.)"""
        self._saw(key_id, period, result[1], result[2])
        lease_s = min(self.config.lease_s, self.config.reservation_ttl_s / 4)
        self.leases.hold(Lease(lease_id, key_id, period, result[5] - worst,
                               self.clock() + lease_s))
        return Admission(key_id, lease_id, worst, period=period, leased=True)

    def _grant_lost(self, key_id: str, period: str, lease_id: str) -> None:
        """An admit that asked for a lease got no answer (a timeout, a cancelled request):
        Redis may have granted it, and nobody will draw from it. Hand all of it back."""
        self._give_back(Lease(lease_id, key_id, period, ALL, 0.0))

    # --- handing back ----------------------------------------------------------------------

    def _retire(self, key_id: str, period: str) -> None:
        """Take the key's lease out of use and hand its rest back. (Also when Redis may have
        lost it with the key's counter: a return of a lease Redis does not have does nothing.)"""
        lease = self.leases.take(key_id, period)
        if lease is not None:
            self._give_back(lease)

    def _give_back(self, lease: Lease) -> None:
        """Hand a lease's unused rest back to the key's budget, without waiting for it."""
        if not lease.left:  # drawn to the last nano-USD: its settles end it
            return
        if self.degraded:
            self._returns.append(lease)
            return
        future = self._pipeline.call(self._lease_return, *self._return_call(lease))
        self._settling.add(future)
        future.add_done_callback(partial(self._given_back, lease))

    def _given_back(self, lease: Lease, future: asyncio.Future[Any]) -> None:
        self._settling.discard(future)
        if future.cancelled():  # closing: the sweep charges the rest, the budget errs safe
            return
        error = future.exception()
        if error is None:
            return
        if is_refusal(error):
            self._refused("the lease return script", error)
        elif isinstance(error, REDIS_FAILURES):
            self._returns.append(lease)  # replayed when Redis is back
            self._failed(error)
        else:
            log.error("limits: handing back a lease failed: %r", error)

    def expire_leases(self) -> int:
        """The rests of leases whose time is up go back (keys gone quiet); returns how many."""
        expired = list(self.leases.expired(self.clock()))
        for lease in expired:
            self._give_back(lease)
        return len(expired)

    async def _expire_leases(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease_s)
            self.expire_leases()

    def _give_back_all(self) -> None:
        for lease in self.leases.take_all():
            self._give_back(lease)
