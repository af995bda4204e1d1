"""Spend limits and rate limits: the interface the request path sees.

`admit` runs before anything goes upstream (reserve the worst-case cost, count the
request against rpm/tpm) and raises `QuotaExceeded` or `RateLimited`; `settle` runs after
the response and must not make the client wait.
"""

from __future__ import annotations

from typing import Protocol

from ..auth import Principal


class Admission:
    """One admitted request: what was reserved, and headers to send back."""

    __slots__ = ("key_id", "reservation_id", "reserved_nusd", "headers")

    def __init__(
        self,
        key_id: str,
        reservation_id: str,
        reserved_nusd: int = 0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.key_id = key_id
        self.reservation_id = reservation_id
        self.reserved_nusd = reserved_nusd
        self.headers = headers or {}


class Limits(Protocol):
    async def admit(
        self,
        principal: Principal,
        request_id: str,
        idempotency_key: str | None,
        worst_case_nusd: int,
        estimated_tokens: int,
    ) -> Admission: ...

    def settle(self, admission: Admission, cost_nusd: int, tokens: int) -> None:
        """Charge the actual cost and release the rest of the reservation (in the background)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class NoLimits:
    """Admits everything: the placeholder until spend and rate limits are wired in."""

    async def admit(
        self,
        principal: Principal,
        request_id: str,
        idempotency_key: str | None,
        worst_case_nusd: int,
        estimated_tokens: int,
    ) -> Admission:
        return Admission(principal.key_id, request_id)

    def settle(self, admission: Admission, cost_nusd: int, tokens: int) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass
