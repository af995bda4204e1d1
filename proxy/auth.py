"""Who is calling: bearer key → Principal.

The core knows only the admin key. The keys issue replaces `Authenticator` with one
backed by the keys table and an in-process cache; `Principal` is the stable interface
handlers use (`request[PRINCIPAL]`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web

from .errors import Unauthorized

ADMIN_KEY_ID: Final = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    role: str = "user"  # "user" or "admin"
    name: str = ""
    labels: tuple[str, ...] = field(default=())
    # The tenant that owns the key: response-cache entries are never shared across owners.
    owner: str = "default"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


PRINCIPAL: Final = "proxy.principal"  # request-scoped key (aiohttp requests take str keys)


def bearer_token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "Missing API key: send it as `Authorization: Bearer <key>`.", code="missing_api_key"
        )
    return token.strip()


def generate_key() -> str:
    return "sk-px-" + secrets.token_urlsafe(32)


def key_digest(secret: bytes, key: str) -> str:
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


class Authenticator:
    """Admin-key-only authentication (the core's)."""

    def __init__(self, secret: bytes, admin_digest: str) -> None:
        self._secret = secret
        self._admin_digest = admin_digest
        self._admin = Principal(ADMIN_KEY_ID, role="admin", name="admin")

    async def authenticate(self, token: str) -> Principal:
        if hmac.compare_digest(key_digest(self._secret, token), self._admin_digest):
            return self._admin
        raise Unauthorized("Invalid API key.")

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass
