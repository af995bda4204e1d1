"""The Redis limits' side of recovering a dead worker's requests (`ledger/inflight_recovery.py`).

A dead worker's admissions still hold their reservations (or their draws on its leases)
in Redis; without this they would wait for the sweeper, which charges each at its worst
case after `reservation_ttl_s`. Recovery settles each one at its estimated cost and hands
back what is left of the worker's leases: the counter then equals the ledger at once.
"""

from __future__ import annotations

from .admission import Admission
from .leases import ALL, Lease
from .redis_failures import REDIS_FAILURES
from .redis_leases import RedisLeases


class RedisOrphans(RedisLeases):
    async def settle_orphan(self, admission: Admission, cost_nusd: int, tokens: int) -> None:
        if not self.degraded:
            try:
                await self._settle_remote(admission, cost_nusd, tokens)
                return
            except REDIS_FAILURES as e:
                self._failed(e)
        # Redis away: queued with the outage's settles and replayed when it is back.
        self._settle_elsewhere(admission, cost_nusd, tokens)

    async def return_lease(self, key_id: str, period: str, lease_id: str) -> None:
        # ALL: whatever Redis still holds of it; its draws are settled by now. A lease already
        # handed back or swept is not there: the script does nothing.
        lease = Lease(lease_id, key_id, period, ALL, 0.0)
        if self.degraded:
            self._returns.append(lease)
            return
        try:
            await self._give_back_remote(lease)
        except REDIS_FAILURES as e:
            self._failed(e)
            self._returns.append(lease)
