"""Key management: /v1/api-keys (admin keys only).

The secret is generated here, returned once in the creation response, and only its keyed
hash and a display prefix are stored. Each change is written to the database, then applied
to this worker's cache and published to every other worker and instance.
"""

from __future__ import annotations

import math
import secrets
from datetime import UTC, date, datetime
from typing import Any, Final

from aiohttp import web
from msgspec import Raw

from ..auth import PRINCIPAL, Principal
from ..catalog import nano_to_usd, usd_to_nano
from ..errors import Forbidden, InvalidRequest, NotFound, ServiceUnavailable
from ..gateway import GATEWAY
from ..keys.model import DEFAULT_OWNER, MAX_OWNER, PERIODS, PREFIX_CHARS, ROLES, KeyRow
from ..keys.registry import KeyRegistry
from ..limits.periods import period_id
from ..wire import decode_body, field
from .common import read_body

_CREATE_FIELDS: Final = (
    "name", "limit", "limit_period", "labels", "expiry", "role", "rpm", "tpm", "owner", "cache",
)
_MAX_LIMIT_USD: Final = 1_000_000  # keeps nano-USD sums exact in Redis's Lua (doubles)
_MAX_NAME: Final = 256
_MAX_LABELS: Final = 64
_MAX_BODY: Final = 64 * 1024


def _registry(request: web.Request) -> KeyRegistry:
    """The registry, once the caller is known to be an admin."""
    principal: Principal = request[PRINCIPAL]
    if not principal.is_admin:
        raise Forbidden("Key management needs an admin key.")
    registry = request.app[GATEWAY].auth.keys
    if registry is None:
        raise ServiceUnavailable("Key management is not configured on this gateway.")
    return registry


async def _body(request: web.Request, allowed: tuple[str, ...]) -> dict[str, Raw]:
    fields = decode_body(await read_body(request, _MAX_BODY))
    for name in fields:
        if name not in allowed:
            raise InvalidRequest(f"Unknown parameter: `{name}`.", param=name)
    return fields


def _limit(fields: dict[str, Raw]) -> int | None:
    usd: float | None = field(fields, "limit", float | None)
    if usd is None:
        return None
    if not math.isfinite(usd) or usd < 0:
        raise InvalidRequest("`limit` must be a non-negative number of USD.", param="limit")
    if usd > _MAX_LIMIT_USD:
        raise InvalidRequest(f"`limit` must be at most {_MAX_LIMIT_USD} USD.", param="limit")
    return usd_to_nano(usd)


def _expiry(fields: dict[str, Raw], now: datetime) -> datetime | None:
    text: str | None = field(fields, "expiry", str | None)
    if text is None:
        return None
    try:
        if len(text) == 10:  # YYYY-MM-DD: the key stops working at 00:00 UTC that day
            when = datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        else:
            when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(
            "`expiry` must be an RFC 3339 date-time (2030-01-31T00:00:00Z) or a date "
            "(2030-01-31).", param="expiry",
        ) from None
    when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    try:
        when = when.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-14:00 is past the year 9999 in UTC
        raise InvalidRequest("`expiry` is out of range: it must be before the year 10000 in "
                             "UTC.", param="expiry") from None
    if when <= now:
        raise InvalidRequest("`expiry` must be in the future.", param="expiry")
    return when


def _choice(fields: dict[str, Raw], name: str, choices: tuple[str, ...]) -> str:
    value: str | None = field(fields, name, str | None)
    if value is None:
        return choices[0]
    if value not in choices:
        raise InvalidRequest(f"`{name}` must be one of {', '.join(choices)}.", param=name)
    return value


def _per_minute(fields: dict[str, Raw], name: str) -> int | None:
    value: int | None = field(fields, name, int | None)
    if value is not None and not 0 < value <= 1_000_000_000:
        raise InvalidRequest(f"`{name}` must be a positive integer.", param=name)
    return value


def _no_nul(value: str, name: str) -> str:
    """PostgreSQL's text cannot hold U+0000: refuse it here, not as a database error."""
    if "\x00" in value:
        raise InvalidRequest(f"`{name}` must not contain the NUL character (\\u0000).",
                             param=name)
    return value


def _owner(fields: dict[str, Raw]) -> str:
    owner: str | None = field(fields, "owner", str | None)
    if owner is None:
        return DEFAULT_OWNER
    if not 0 < len(owner) <= MAX_OWNER:
        raise InvalidRequest(f"`owner` must be 1 to {MAX_OWNER} characters.", param="owner")
    return _no_nul(owner, "owner")


def _new_row(fields: dict[str, Raw], key: str, digest: str) -> KeyRow:
    now = datetime.now(UTC)
    name: str = field(fields, "name", str | None) or ""
    if len(name) > _MAX_NAME:
        raise InvalidRequest(f"`name` must be at most {_MAX_NAME} characters.", param="name")
    _no_nul(name, "name")
    labels: list[str] = field(fields, "labels", list[str] | None) or []
    if len(labels) > _MAX_LABELS or any(len(label) > _MAX_NAME for label in labels):
        raise InvalidRequest(f"`labels` takes at most {_MAX_LABELS} labels of at most "
                             f"{_MAX_NAME} characters.", param="labels")
    for label in labels:
        _no_nul(label, "labels")
    return KeyRow(
        id="key_" + secrets.token_hex(10),
        name=name,
        key_hash=digest,
        key_prefix=key[:PREFIX_CHARS],
        role=_choice(fields, "role", ROLES),
        limit_nusd=_limit(fields),
        limit_period=_choice(fields, "limit_period", PERIODS),
        rpm=_per_minute(fields, "rpm"),
        tpm=_per_minute(fields, "tpm"),
        labels=tuple(labels),
        owner=_owner(fields),
        cache=field(fields, "cache", bool | None) or False,
        expiry=_expiry(fields, now),
        created_at=now,
        updated_at=now,
    )


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z") if when else None


async def _views(request: web.Request, rows: list[KeyRow]) -> list[dict[str, Any]]:
    """Rows as the API shows them, with `spend` in the current period (one batch of reads)."""
    gw = request.app[GATEWAY]
    principals = [row.principal() for row in rows]
    try:
        live = await gw.limits.spend(principals)
    except Exception:  # noqa: BLE001 - spend is a convenience; the key data is the answer
        live = [None] * len(rows)
    now = datetime.now(UTC).timestamp()
    out = []
    for row, spend in zip(rows, live, strict=True):
        period = period_id(row.limit_period, now)
        if spend is None:  # not counted here yet: the durable snapshot for this period
            spend = row.spend_nusd if row.spend_period == period else 0
        view: dict[str, Any] = {
            "id": row.id,
            "object": "api_key",
            "name": row.name,
            "key_prefix": row.key_prefix,
            "role": row.role,
            "limit_period": row.limit_period,
            "rpm": row.rpm,
            "tpm": row.tpm,
            "labels": list(row.labels),
            "owner": row.owner,
            "cache": row.cache,
            "created_at": _iso(row.created_at),
            "spend": nano_to_usd(spend),
            "spend_period": period,
        }
        # No limit, no expiry: the fields are absent, not null (the seed spec types them
        # number and date-time, not nullable).
        if row.limit_nusd is not None:
            view["limit"] = nano_to_usd(row.limit_nusd)
        if row.expiry is not None:
            view["expiry"] = _iso(row.expiry)
        out.append(view)
    return out


async def _one(request: web.Request, row: KeyRow, key: str | None = None) -> web.Response:
    view = (await _views(request, [row]))[0]
    if key is not None:
        view["key"] = key  # the only time the secret is ever shown
    return web.json_response(view)


def path_key_id(request: web.Request) -> str:
    """The `{key_id}` of the path; one the database could not store is no key (404), not a
    database error."""
    key_id = request.match_info["key_id"]
    if "\x00" in key_id or not key_id.isprintable():
        raise NotFound("No API key with that id.")
    return key_id


async def _existing(registry: KeyRegistry, key_id: str) -> KeyRow:
    row = await registry.store.get(key_id)
    if row is None:
        raise NotFound(f"No API key with id `{key_id}`.")
    return row


async def list_keys(request: web.Request) -> web.Response:
    registry = _registry(request)
    rows = await registry.store.live_keys()
    return web.json_response({"object": "list", "data": await _views(request, rows)})


async def create_key(request: web.Request) -> web.Response:
    registry = _registry(request)
    fields = await _body(request, _CREATE_FIELDS)
    auth = request.app[GATEWAY].auth
    key = auth.tags.new_key()  # tagged: see `auth.KeyTags`
    row = _new_row(fields, key, auth.digest(key))
    return await _one(request, await registry.create(row), key)


async def get_key(request: web.Request) -> web.Response:
    registry = _registry(request)
    return await _one(request, await _existing(registry, path_key_id(request)))


async def delete_key(request: web.Request) -> web.Response:
    registry = _registry(request)
    key_id = path_key_id(request)
    if not await registry.delete(key_id):
        raise NotFound(f"No API key with id `{key_id}`.")
    return web.json_response({"id": key_id, "object": "api_key", "deleted": True})


async def update_limit(request: web.Request) -> web.Response:
    registry = _registry(request)
    key_id = path_key_id(request)
    fields = await _body(request, ("limit",))
    if "limit" not in fields:
        raise InvalidRequest("Missing required parameter: `limit` (a number of USD, or null "
                             "for no limit).", param="limit")
    row = await registry.set_limit(key_id, _limit(fields))
    if row is None:
        raise NotFound(f"No API key with id `{key_id}`.")
    return await _one(request, row)
