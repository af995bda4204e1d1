"""One stored API key (no secret in it), and how it becomes a `Principal`."""

from __future__ import annotations

from datetime import datetime
from typing import Final

import msgspec

from ..principal import Principal

ROLES: Final = ("user", "admin")
PERIODS: Final = ("monthly", "total")
PREFIX_CHARS: Final = 10  # "sk-px-" and four characters: enough to tell keys apart in a list
DEFAULT_OWNER: Final = "default"  # a self-hosted organization's one tenant; the admin key's
MAX_OWNER: Final = 128


class KeyRow(msgspec.Struct, frozen=True, kw_only=True):
    """A row of `api_keys`; also the body of a pub/sub invalidation message."""

    id: str
    name: str = ""
    key_hash: str  # HMAC-SHA-256 of the secret with the server's key secret
    key_prefix: str
    role: str = "user"
    limit_nusd: int | None = None
    limit_period: str = "monthly"
    rpm: int | None = None
    tpm: int | None = None
    labels: tuple[str, ...] = ()
    # The tenant that owns the key (response-cache entries are scoped to it), and whether
    # every request of the key is cached (sql/0003_key_owner_cache.sql).
    owner: str = DEFAULT_OWNER
    cache: bool = False
    expiry: datetime | None = None
    created_at: datetime
    updated_at: datetime
    deleted: bool = False
    # Durable floor of the spend counter for `spend_period` (see sql/0002_api_keys.sql).
    spend_period: str | None = None
    spend_nusd: int = 0

    def principal(self) -> Principal:
        return Principal(
            key_id=self.id,
            role=self.role,
            name=self.name,
            labels=self.labels,
            owner=self.owner,
            cache=self.cache,
            limit_nusd=self.limit_nusd,
            period=self.limit_period,
            rpm=self.rpm,
            tpm=self.tpm,
            expires_at=self.expiry.timestamp() if self.expiry is not None else None,
        )


encode_row = msgspec.json.Encoder().encode
decode_row = msgspec.json.Decoder(KeyRow).decode
