"""Spend leases: a worker reserves many requests' worst cases in one Redis call, then admits
requests against that reservation in-process, with no round trip before the upstream call.

Every request is still admitted against budget reserved in Redis before it is sent, so the
overshoot bound of per-request reservations holds across workers and instances. What a lease
costs is budget held idle: at most 1/`LEASE_SHARE` of a key's headroom a lease (the admit
script's rule), for at most `limits.lease_s` before the worker hands the rest back; near its
limit a key gets no lease and is admitted request by request.

Only keys with a spend limit and nothing else to check are leased (rpm and tpm buckets count
each request in Redis).

This module is the bookkeeping; `redis_leases.py` asks for leases and hands them back,
`redis_counters.py` runs the scripts that settle against them and take them back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from .admission import Admission, reservation_id

# A lease's `left` when its grant's reply was lost: hand back all Redis holds of it.
ALL: Final = -1


class Lease:
    """One lease of one key and period: what is left to draw, and until when."""

    __slots__ = ("id", "key_id", "left", "period", "until")

    def __init__(self, lease_id: str, key_id: str, period: str, amount: int, until: float) -> None:
        self.id = lease_id
        self.key_id = key_id
        self.period = period
        self.left = amount  # reserved in Redis, not yet drawn by a request
        self.until = until  # no draws after this (clock seconds): the rest goes back


class Leases:
    """This worker's leases, one a key and period, and the grants it is waiting for."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], Lease] = {}
        self._asking: set[tuple[str, str]] = set()  # a grant in flight: others go one by one

    def __len__(self) -> int:
        return len(self._held)

    def draw(self, key_id: str, period: str, amount: int, now: float) -> Admission | None:
        """An admission drawn from the key's lease, or None (no lease, or it cannot serve)."""
        lease = self._held.get((key_id, period))
        if lease is None or lease.left < amount or now >= lease.until:
            return None
        lease.left -= amount
        return Admission(key_id, reservation_id(), amount, period=period, lease_id=lease.id)

    def ask(self, key_id: str, period: str) -> bool:
        """Whether this request may ask for a lease (one grant in flight per key); if so,
        the key's grant is in flight until `asked`."""
        if (key_id, period) in self._asking:
            return False
        self._asking.add((key_id, period))
        return True

    def asked(self, key_id: str, period: str) -> None:
        self._asking.discard((key_id, period))

    def take(self, key_id: str, period: str) -> Lease | None:
        """Take the key's lease out of use (it could not serve a request); the caller
        hands its rest back."""
        return self._held.pop((key_id, period), None)

    def hold(self, lease: Lease) -> None:
        self._held[(lease.key_id, lease.period)] = lease

    def expired(self, now: float) -> Iterator[Lease]:
        """Take out the leases whose time is up (idle keys): their rest goes back."""
        for k, lease in list(self._held.items()):
            if now >= lease.until:
                del self._held[k]
                yield lease

    def take_all(self) -> list[Lease]:
        """Every lease, out of use (closing, or Redis gone): their rest goes back."""
        leases = list(self._held.values())
        self._held.clear()
        return leases
