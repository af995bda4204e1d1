"""The fence for the limits' lean Redis connection (`limits/resp.py`, `limits/autopipeline.py`).

- Where to connect and as whom: the lean connection honours the URL the way redis-py parsed
  it, read from its pool's `connection_class` and `connection_kwargs` (public names, not
  documented API). Fallback: when they are not there, `connection_settings` says None and
  the scripts go through redis-py's own pipelines (slower, same results).
- What an error reply raises: redis-py's exception for it (`ReadOnlyError` for READONLY,
  ...), which the limits tell outages from refusals by. redis-py maps replies in a private
  table (`redis._parsers.base.BaseParser.EXCEPTION_CLASSES`); `reply_error` keeps the same
  map from redis-py's public exception classes, for hiredis's public `Reader`
  (`tests/test_compat.py` compares the two where the private table is still there).

Read in redis-py 5.0.8 and 8.2.0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import redis.asyncio
from redis import exceptions

from . import fence

try:  # redis-py 8 has classes of their own for these; older releases raise their bases
    from redis.exceptions import ExternalAuthProviderError as _ExternalAuth
    from redis.exceptions import MaxClientsReachedError as _MaxClients
    from redis.exceptions import NoSuchFieldsetError as _NoSuchFieldset
except ImportError:  # pragma: no cover - redis-py before 8
    _ExternalAuth = exceptions.ConnectionError  # type: ignore[misc,assignment]
    _MaxClients = exceptions.ConnectionError  # type: ignore[misc,assignment]
    _NoSuchFieldset = exceptions.ResponseError  # type: ignore[misc,assignment]

_ERR_MESSAGES: Final[Mapping[str, type[exceptions.RedisError]]] = {
    "max number of clients reached": _MaxClients,
    "invalid password": exceptions.AuthenticationError,
    "wrong number of arguments for 'auth' command":
        exceptions.AuthenticationWrongNumberOfArgsError,
    "wrong number of arguments for 'AUTH' command":
        exceptions.AuthenticationWrongNumberOfArgsError,
    "Error loading the extension. Please check the server logs.": exceptions.ModuleError,
    "Error unloading module: the module exports one or more module-side data types, can't "
    "unload": exceptions.ModuleError,
    "Error unloading module: no such module with that name": exceptions.ModuleError,
    "Error unloading module: operation not possible.": exceptions.ModuleError,
    "AUTH <password> called without any password configured for the default user. Are you "
    "sure your configuration is correct?": exceptions.AuthenticationError,
    "Client sent AUTH, but no password is set": exceptions.AuthenticationError,
    "problem with LDAP service": _ExternalAuth,
    "no such fieldset": _NoSuchFieldset,
}
_CODES: Final[Mapping[str, type[exceptions.RedisError]]] = {
    "OOM": exceptions.OutOfMemoryError,
    "WRONGPASS": exceptions.AuthenticationError,
    "EXECABORT": exceptions.ExecAbortError,
    "LOADING": exceptions.BusyLoadingError,
    "NOSCRIPT": exceptions.NoScriptError,
    "READONLY": exceptions.ReadOnlyError,
    "NOAUTH": exceptions.AuthenticationError,
    "NOPERM": exceptions.NoPermissionError,
    "ASK": exceptions.AskError,
    "TRYAGAIN": exceptions.TryAgainError,
    "MOVED": exceptions.MovedError,
    "CLUSTERDOWN": exceptions.ClusterDownError,
    "CROSSSLOT": exceptions.ClusterCrossSlotError,
    "MASTERDOWN": exceptions.MasterDownError,
}


def reply_error(message: str) -> exceptions.RedisError:
    """redis-py's exception for an error reply (hiredis's `Reader(replyError=...)`): a known
    code's class with the code cut off the message; any other reply a `ResponseError` with
    the whole message (so "WRONGTYPE ..." and "BUSY ..." keep their code in the text). Unlike
    redis-py 5's own table, READONLY, CLUSTERDOWN and TRYAGAIN always get their classes: the limits
    count them as outages, not refusals."""
    code = message.split(" ", 1)[0]
    rest = message[len(code) + 1:]
    if code == "ERR":
        return _ERR_MESSAGES.get(rest, exceptions.ResponseError)(rest)
    cls = _CODES.get(code)
    if cls is None:
        return exceptions.ResponseError(message)
    try:
        return cls(rest)
    except ValueError:  # ASK and MOVED parse a slot and an address out of theirs
        return exceptions.ResponseError(message)


def connection_settings(client: redis.asyncio.Redis) -> tuple[type, Mapping[str, Any]] | None:
    """The connection class and arguments redis-py's pool makes its connections with;
    None where this release keeps them elsewhere (then use redis-py's own connections)."""
    pool = client.connection_pool
    try:
        return pool.connection_class, pool.connection_kwargs
    except AttributeError:
        return None


def probe() -> list[str]:
    client = redis.asyncio.Redis.from_url("redis://someone:secret@example.invalid:6390/3")
    settings = connection_settings(client)
    if settings is None:
        return ["ConnectionPool.connection_class, connection_kwargs"]
    _, kwargs = settings
    parsed = {k: kwargs.get(k) for k in ("host", "port", "db", "username", "password")}
    if parsed != {"host": "example.invalid", "port": 6390, "db": 3, "username": "someone",
                  "password": "secret"}:
        return [f"ConnectionPool.connection_kwargs as the URL's parts (got {parsed})"]
    return []


FENCE: Final = fence.Fence(
    name="redis lean connection", module="proxy/compat/redis.py", distribution="redis",
    checked=((5, 0), (8, 3)), probe=probe,
    fallback="the limits' scripts go through redis-py's pipelines (more CPU a request)",
)
