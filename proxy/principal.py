"""Who is calling, once authenticated: the key and what it may do.

Its own module because both sides of authentication use it: `auth.py` (which hands it to
the request path, and re-exports it) and `keys/` (which builds it from a key's row), and
neither of those should import the other for a type.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    role: str = "user"  # "user" or "admin"
    name: str = ""
    labels: tuple[str, ...] = field(default=())
    # The tenant that owns the key: response-cache entries are never shared across owners.
    owner: str = "default"
    cache: bool = False  # every request of the key uses the response cache
    # Spend limit in nano-USD per period ("monthly": the calendar month in UTC, or "total").
    limit_nusd: int | None = None
    period: str = "monthly"
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute
    expires_at: float | None = None  # Unix seconds

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"
