"""GET /v1/api-keys/{key_id}/usage and GET /v1/organization/usage.

Parameters (all optional): `start`, `end` (RFC 3339 or YYYY-MM-DD; default the last 30
days; end exclusive), `group_by` (model, key, provider, user_id, status, tag,
extra.<field>), `resolution` (hour, day, month), `format` (json, csv). Each breakdown row
names its group under the `group_by` value itself (`"model"`, `"key"`, `"extra.team"`,
...); `null` is "records without that field" (for tag: untagged records). Money is USD at
the edge (`cost`), with the exact integer nano-USD beside it (`cost_nusd`).
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from aiohttp import web

from ..auth import PRINCIPAL
from ..catalog import NANO, nano_to_usd
from ..errors import Forbidden, InvalidRequest, NotFound
from ..gateway import GATEWAY
from ..ledger.report import Measures, UsageQuery, UsageReport, parse_query, parse_time
from .keys import path_key_id

_encode = msgspec.json.Encoder().encode
FORMATS: Final = ("json", "csv")
_CSV_MEASURES: Final = (
    "requests", "tokens", "prompt_tokens", "completion_tokens", "cached_tokens", "cost",
    "cost_nusd", "cached_requests", "savings", "savings_nusd",
)


async def key_usage(request: web.Request) -> web.Response:
    key_id = path_key_id(request)
    principal = request[PRINCIPAL]
    if not (principal.is_admin or principal.key_id == key_id):
        # Not 403: another key's existence is not disclosed.
        raise NotFound(f"API key `{key_id}` not found.")
    return await _answer(request, key_id)


async def org_usage(request: web.Request) -> web.Response:
    if not request[PRINCIPAL].is_admin:
        raise Forbidden("Organization usage needs an admin key.")
    return await _answer(request, None)


async def _answer(request: web.Request, key_id: str | None) -> web.Response:
    query = _query(request, key_id)
    fmt = request.query.get("format") or "json"
    if fmt not in FORMATS:
        raise InvalidRequest(f"`format` must be json or csv, got {fmt!r}.", param="format")
    report = await request.app[GATEWAY].ledger.report(query)
    if fmt == "csv":
        name = f"usage-{key_id or 'organization'}-{query.start:%Y%m%d}-{query.end:%Y%m%d}.csv"
        return web.Response(
            text=to_csv(report), content_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{_safe(name)}"'},
        )
    return web.Response(body=_encode(to_json(report)), content_type="application/json")


def _query(request: web.Request, key_id: str | None) -> UsageQuery:
    try:
        return parse_query(request.query, datetime.now(UTC), key_id)
    except OverflowError:
        # A valid time whose offset moves it past year 1 or 9999 in UTC
        # (0001-01-01T00:00:00+14:00): out of range, named like any other bad parameter.
        for param in ("start", "end"):
            value = request.query.get(param)
            if value:
                try:
                    parse_time(value, param)
                except OverflowError:
                    raise InvalidRequest(f"`{param}` is out of range: {value!r}.",
                                         param=param) from None
        raise


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _measures(m: Measures) -> dict[str, Any]:
    return {
        "requests": m.requests,
        "tokens": m.tokens,
        "prompt_tokens": m.prompt_tokens,
        "completion_tokens": m.completion_tokens,
        "cached_tokens": m.cached_tokens,
        "cost": nano_to_usd(m.cost_nusd),
        "cost_nusd": m.cost_nusd,
        "cached_requests": m.cached_requests,
        "savings": nano_to_usd(m.savings_nusd),
        "savings_nusd": m.savings_nusd,
    }


def to_json(report: UsageReport) -> dict[str, Any]:
    q, t = report.query, report.totals
    body: dict[str, Any] = {
        "total_cost": nano_to_usd(t.cost_nusd),
        "total_requests": t.requests,
        "total_tokens": t.tokens,
        "total_prompt_tokens": t.prompt_tokens,
        "total_completion_tokens": t.completion_tokens,
        "total_cost_nusd": t.cost_nusd,
        "total_cached_tokens": t.cached_tokens,
        "total_cached_requests": t.cached_requests,
        "total_savings": nano_to_usd(t.savings_nusd),
        "total_savings_nusd": t.savings_nusd,
        "start": rfc3339(q.start),
        "end": rfc3339(q.end),
        "group_by": q.group_by,
        "resolution": q.resolution,
    }
    if q.key_id is not None:
        body["key_id"] = q.key_id
    breakdown = []
    for row in report.rows:
        item: dict[str, Any] = {q.group_by: row.group}
        if q.resolution is not None and row.period is not None:
            item["period"] = rfc3339(row.period)
        item.update(_measures(row.measures))
        breakdown.append(item)
    body["breakdown"] = breakdown
    return body


def _usd(nano: int) -> str:
    """Exact decimal USD for spreadsheets (a float would round nano-USD away)."""
    sign = "-" if nano < 0 else ""
    whole, frac = divmod(abs(nano), NANO)
    return f"{sign}{whole}.{frac:09d}"


def to_csv(report: UsageReport) -> str:
    q = report.query
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    head = [q.group_by] + (["period"] if q.resolution else []) + list(_CSV_MEASURES)
    writer.writerow(head)
    for row in report.rows:
        m = _measures(row.measures)
        m["cost"], m["savings"] = _usd(row.measures.cost_nusd), _usd(row.measures.savings_nusd)
        period = [rfc3339(row.period) if row.period else ""] if q.resolution else []
        writer.writerow([_cell(row.group), *period, *(m[c] for c in _CSV_MEASURES)])
    return out.getvalue()


def _cell(value: object) -> object:
    """Group values come from clients (tags, user ids): never let a spreadsheet run one
    as a formula."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in name)
