"""One admitted request: what was reserved, where, and the headers to send back."""

from __future__ import annotations


class Admission:
    __slots__ = (
        "headers",
        "key_id",
        "leased",
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
        leased: bool = False,
    ) -> None:
        self.key_id = key_id
        self.reservation_id = reservation_id
        self.reserved_nusd = reserved_nusd
        self.headers = headers or {}
        self.period = period  # the spend period charged: the one the request was admitted in
        self.tokens = tokens  # tokens taken from the tpm bucket (the estimate), refunded on settle
        self.tpm = tpm
        self.local = local  # admitted by the in-process stand-in while Redis was away
        # Drawn from a lease (`leases.py`): `reservation_id` is the lease's, `reserved_nusd`
        # the draw.
        self.leased = leased
