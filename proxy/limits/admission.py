"""One admitted request: what was reserved, where, and the headers to send back; and the
ids its reservation is made under."""

from __future__ import annotations

from typing import Final

from ..ids import ProcessIds


# No two admissions share a reservation (and so a limit test).
reservation_id: Final = ProcessIds("r:{random}:", 6).next


class Admission:
    __slots__ = (
        "headers",
        "key_id",
        "lease_id",
        "local",
        "period",
        "reservation_id",
        "reserved_nusd",
        "tokens",
        "tpm",
    )

    def __init__(
        self,
        key_id: str,
        reservation_id: str,
        reserved_nusd: int = 0,
        headers: dict[str, str] | None = None,
        *,
        period: str = "",
        tokens: int = 0,
        tpm: int = 0,
        local: bool = False,
        lease_id: str = "",
    ) -> None:
        self.key_id = key_id
        # This admission's own id, never another's (a lease's draws each have one): its
        # settle leaves a mark under it, so a settle replayed after a lost reply or a
        # crash is recognised and charges nothing twice (`scripts.SETTLE`).
        self.reservation_id = reservation_id
        self.reserved_nusd = reserved_nusd
        self.headers = headers or {}
        self.period = period  # the spend period charged: the one the request was admitted in
        self.tokens = tokens  # tokens taken from the tpm bucket (the estimate), refunded on settle
        self.tpm = tpm
        self.local = local  # admitted by the in-process stand-in while Redis was away
        # Drawn from a lease (`leases.py`): the lease's id; `reserved_nusd` is the draw.
        self.lease_id = lease_id

    @property
    def leased(self) -> bool:
        return bool(self.lease_id)
