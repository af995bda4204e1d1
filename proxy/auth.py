"""Who is calling: bearer key → Principal, served from memory.

The admin key (`PROXY_ADMIN_KEY`, or the generated one whose digest is in `data_dir`) is
checked first. Every other key is looked up by its keyed hash in the in-process cache of
`proxy.keys.KeyRegistry`, which holds every live key and is kept current by Redis pub/sub
and a periodic refresh; a steady-state request makes no database call. Expiry is checked
here, at use, so an expired key is refused at once on every worker without any message.

A key the cache does not hold is looked up in the database only if the gateway could have
made it: a key ends in a tag, a keyed MAC of the rest that only holders of the hashing
secret can compute (`KeyTags`). A flood of made-up keys is refused from memory; only a
key created a moment ago on another instance, before its pub/sub message arrived, costs a
lookup.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Final

from aiohttp import web

from .errors import Unauthorized
from .keys.registry import KeyRegistry
from .principal import Principal as Principal  # re-exported: the request path's name for it
from .stats import DependencyErrors

ADMIN_KEY_ID: Final = "admin"
KEY_PREFIX: Final = "sk-px-"
# Digests of keys that authenticated, by key: the HMAC is ~15,000 instructions a request
# (OpenSSL's set-up for each), a dict lookup ~100. Only keys that matched are kept (a flood
# of made-up keys cannot fill it), and the digest is a function of the key alone, so an
# entry is never stale: revocation and expiry are decided by the key registry after it.
DIGEST_MEMO_SIZE: Final = 4096


PRINCIPAL: Final = web.RequestKey("principal", Principal)  # who is calling, set by the edge


def bearer_token(request: web.Request) -> str:
    """The key from `Authorization: Bearer <key>`, or from `x-api-key: <key>` (how the
    Anthropic SDKs and Claude Code send it) when there is no `Authorization` header."""
    header = request.headers.get("Authorization")
    if header is None:
        key = request.headers.get("x-api-key", "").strip()
        if key:
            return key
        header = ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "Missing API key: send it as `Authorization: Bearer <key>` or `x-api-key: <key>`.",
            code="missing_api_key",
        )
    return token.strip()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(secret: bytes, key: str) -> str:
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


class KeyTags:
    """Keys that end in a MAC of their random part, so a guessed key is told apart without
    the database: `sk-px-` + 43 random characters + an 8-character tag (48 bits; a forged
    key passes one time in 2^48, and then only costs one lookup)."""

    _BODY: Final = 43  # secrets.token_urlsafe(32)
    _TAG: Final = 8  # base64url of 6 bytes
    LENGTH: Final = len(KEY_PREFIX) + _BODY + _TAG
    # Distinct from a key digest's input, which always starts with the key prefix.
    _DOMAIN: Final = b"proxy key tag\x00"

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _tag(self, body: str) -> str:
        mac = hmac.new(self._secret, self._DOMAIN + body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:6]).decode()

    def new_key(self) -> str:
        body = secrets.token_urlsafe(32)
        return KEY_PREFIX + body + self._tag(body)

    def may_exist(self, token: str) -> bool:
        """Could this gateway have made the key? (Keys from before tags are all in the
        cache: it loads every live key at start.)"""
        if len(token) != self.LENGTH or not token.startswith(KEY_PREFIX):
            return False
        body = token[len(KEY_PREFIX):-self._TAG]
        return hmac.compare_digest(token[-self._TAG:], self._tag(body))


class Authenticator:
    """The admin key, then the key registry's in-memory cache (when one is wired in)."""

    def __init__(
        self,
        secret: bytes,
        admin_digest: str,
        keys: KeyRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self.tags = KeyTags(secret)
        self._admin_digest = admin_digest
        self._admin = Principal(ADMIN_KEY_ID, role="admin", name="admin")
        self._clock = clock
        self.keys = keys  # None: admin key only (tests, or a gateway without a key store)
        self._digests: dict[str, str] = {}  # DIGEST_MEMO_SIZE at most

    @property
    def redis_errors(self) -> int:
        """For metrics: failed publishes and lost subscriptions of key changes."""
        events = self.keys.events if self.keys is not None else None
        return events.errors if events is not None else 0

    @property
    def database_errors(self) -> int:
        return self.keys.database_errors if self.keys is not None else 0

    def stats(self) -> DependencyErrors:
        return DependencyErrors(self.redis_errors, self.database_errors)

    @property
    def remembered_keys(self) -> int:
        """How many keys' digests are remembered (`DIGEST_MEMO_SIZE` at most)."""
        return len(self._digests)

    @property
    def admin(self) -> Principal:
        return self._admin

    def digest(self, token: str) -> str:
        return key_digest(self._secret, token)

    async def authenticate(self, token: str) -> Principal:
        digest = self._digests.get(token)
        remembered = digest is not None
        if digest is None:
            try:
                digest = key_digest(self._secret, token)
            except UnicodeEncodeError:  # bytes that are not UTF-8 arrive as lone surrogates
                raise Unauthorized("Invalid API key: the `Authorization` header is not "
                                   "valid UTF-8.") from None
        principal: Principal | None = None
        if hmac.compare_digest(digest, self._admin_digest):
            principal = self._admin
        elif self.keys is not None:
            principal = self.keys.cached(digest)
            # A miss is either a wrong key or one created a moment ago on another instance
            # whose pub/sub message has not arrived; only a key this gateway could have
            # made may cost a lookup.
            if principal is None and self.tags.may_exist(token):
                principal = await self.keys.lookup(digest)
        if principal is None:
            raise Unauthorized("Invalid API key.")
        if not remembered:  # it matched a key
            if len(self._digests) >= DIGEST_MEMO_SIZE:
                self._digests.clear()
            self._digests[token] = digest
        if principal.expires_at is not None and self._clock() >= principal.expires_at:
            raise Unauthorized("This API key has expired.", code="expired_api_key")
        return principal

    async def start(self) -> None:
        if self.keys is not None:
            await self.keys.start()

    async def close(self) -> None:
        if self.keys is not None:
            await self.keys.close()
