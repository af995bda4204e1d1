"""Spend limits and rate limits: the interface the request path sees, and the factory.

`admit` runs before anything goes upstream (reserve the worst-case cost, count the
request against rpm/tpm) and raises `QuotaExceeded` or `RateLimited`; every call meets
the limit test and reserves its own worst case (an `Idempotency-Key` repeat never gets
here: `proxy/idempotency` answers it before admission); `settle` runs after
the response and must not make the client wait. `create_limits` picks Redis when
`redis_url` is set (shared by every worker and instance), else the in-process one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from ..auth import Principal
from ..config import Settings
from ..stats import DependencyErrors
from .admission import Admission
from .durable import LedgerSpend, SpendSource, SpendStore

__all__ = ["Admission", "Limits", "create_limits"]


class Limits(Protocol):
    async def admit(
        self,
        principal: Principal,
        request_id: str,
        worst_case_nusd: int,
        estimated_tokens: int,
    ) -> Admission: ...

    def settle(self, admission: Admission, cost_nusd: int, tokens: int) -> None:
        """Charge the actual cost and release the rest of the reservation (in the background)."""

    async def spend(self, principals: Sequence[Principal]) -> list[int | None]:
        """Each key's settled spend in its current period (nano-USD); None when not known here."""

    async def settle_orphan(self, admission: Admission, cost_nusd: int, tokens: int) -> None:
        """Settle a request a dead worker admitted (read back from its admission journal,
        `ledger/inflight.py`); returns once charged, or queued while Redis is away."""

    async def return_lease(self, key_id: str, period: str, lease_id: str) -> None:
        """Hand back all that is left of a dead worker's spend lease."""

    def stats(self) -> DependencyErrors:
        """Failed Redis and database calls, for metrics."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class _KeySource(Protocol):
    """What limits need from the key registry: the durable store and which keys exist."""

    @property
    def store(self) -> SpendStore: ...

    def key_ids(self) -> list[str]: ...


def create_limits(
    settings: Settings, keys: _KeySource | None, ledger: Callable[[], LedgerSpend | None]
) -> Limits:
    """`ledger` is a getter, so the ledger can be swapped in after the limits are built."""
    source = SpendSource(keys.store if keys is not None else None, ledger)
    key_ids: Callable[[], Iterable[str]] = keys.key_ids if keys is not None else (lambda: ())
    if settings.redis_url:
        from .redis import RedisLimits

        return RedisLimits(settings.limits, settings.redis_url, settings.redis_namespace,
                           source, key_ids)
    from .durable import SnapshotWriter
    from .memory import MemoryLimits

    return MemoryLimits(settings.limits, source, snapshots=SnapshotWriter(source.store))
