"""The SQL of a usage report, for either engine: rollups for whole hours (or days), raw
records for the partial hours at the window's edges.

A window [start, end) is cut into spans: the partial hour after `start` and the one before
`end` come from usage_records (a rollup row of those hours also holds records outside the
window); whole hours come from an hourly rollup; for an organization report grouped by key,
whole days come from usage_key_daily. Each span is one subquery; the report is their
UNION ALL, summed by group and period.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from .report import UsageQuery, ceil_day, ceil_hour, floor_day, floor_hour
from .schema import MEASURES, RAW_MEASURES, ROLLUP_MEASURES, Dialect, to_micros

_COLUMN: Final = {"model": "model", "provider": "provider", "status": "status", "key": "key_id"}


@dataclass(frozen=True, slots=True)
class Span:
    source: str  # "raw", "hour" or "day"
    lo: datetime
    hi: datetime


def spans(start: datetime, end: datetime, daily: bool) -> list[Span]:
    """[start, end) cut into raw edges, whole hours and (when `daily`) whole days."""
    hs, he = ceil_hour(start), floor_hour(end)
    if hs >= he:
        return [Span("raw", start, end)]
    out = []
    if start < hs:
        out.append(Span("raw", start, hs))
    ds, de = ceil_day(hs), floor_day(he)
    if daily and ds < de:
        if hs < ds:
            out.append(Span("hour", hs, ds))
        out.append(Span("day", ds, de))
        if de < he:
            out.append(Span("hour", de, he))
    else:
        out.append(Span("hour", hs, he))
    if he < end:
        out.append(Span("raw", he, end))
    return out


class Params:
    """Bind values, numbered for PostgreSQL ($1) or named for SQLite (:p1)."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.values: list[object] = []

    def add(self, value: object) -> str:
        if isinstance(value, datetime) and self.dialect.name == "sqlite":
            value = to_micros(value)
        self.values.append(value)
        return self.dialect.placeholder(len(self.values))

    def bound(self) -> list[object] | dict[str, object]:
        if self.dialect.name == "sqlite":
            return {f"p{i + 1}": v for i, v in enumerate(self.values)}
        return self.values


@dataclass(frozen=True, slots=True)
class Statement:
    sql: str
    params: list[object] | dict[str, object]


@dataclass(frozen=True, slots=True)
class _Source:
    hourly: str | None  # None: no rollup serves this report; read the records
    daily: str | None
    group: str | None  # rollup column holding the group; None: not grouped


def _source(q: UsageQuery, grouped: bool) -> _Source:
    if grouped and q.by_dimension:
        # The metadata rollup has no key column (see sql/0001_ledger.sql): one key's
        # metadata report reads that key's records through (key_id, ts).
        return _Source("usage_dim_hourly" if q.key_id is None else None, None, "value")
    column = _COLUMN.get(q.group_by) if grouped else None
    if q.key_id is not None:
        return _Source("usage_hourly", None, column)
    if column == "key_id":
        return _Source("usage_key_hourly", "usage_key_daily" if q.resolution != "hour" else None,
                       column)
    return _Source("usage_org_hourly", None, column)


def report(d: Dialect, q: UsageQuery, grouped: bool = True) -> Statement:
    """Rows of (group, period, *MEASURES). With grouped=False, the group is NULL: the
    per-period totals that a metadata-dimension report needs beside its groups."""
    ps = Params(d)
    src = _source(q, grouped)
    parts = []
    cuts = (spans(q.start, q.end, daily=src.daily is not None) if src.hourly is not None
            else [Span("raw", q.start, q.end)])
    for span in cuts:
        if span.source == "raw":
            parts.append(_raw(d, ps, q, span, grouped))
        else:
            parts.append(_rollup(d, ps, q, span, src))
    # bigint out: PostgreSQL's sum(bigint) is numeric, which clients decode far slower.
    sums = ", ".join(f"CAST(sum({m}) AS bigint) AS {m}" for m in MEASURES)
    sql = (f"SELECT g, p, {sums} FROM ({' UNION ALL '.join(parts)}) AS x "
           "GROUP BY g, p")
    return Statement(sql, ps.bound())


def _select(group: str | None, period: str, measures: tuple[str, ...]) -> tuple[str, str]:
    """The SELECT list and the GROUP BY clause (constants are not grouped by)."""
    cols = ", ".join(f"{m} AS {name}" for m, name in zip(measures, MEASURES, strict=True))
    keys = [e for e in (group, period) if e is not None and not e.startswith("NULL")]
    group_by = f" GROUP BY {', '.join(keys)}" if keys else ""
    return f"{group or 'NULL'} AS g, {period} AS p, {cols}", group_by


def _rollup(d: Dialect, ps: Params, q: UsageQuery, span: Span, src: _Source) -> str:
    table, bucket = (src.hourly, "hour") if span.source == "hour" else (src.daily, "day")
    where = [f"{bucket} >= {ps.add(span.lo)}", f"{bucket} < {ps.add(span.hi)}"]
    if q.key_id is not None:
        where.append(f"key_id = {ps.add(q.key_id)}")
    if table == "usage_dim_hourly":
        where.append(f"dim = {ps.add(q.group_by)}")
    select, group_by = _select(src.group, d.trunc(q.resolution, bucket), ROLLUP_MEASURES)
    return f"SELECT {select} FROM {table} WHERE {' AND '.join(where)}{group_by}"


def _raw(d: Dialect, ps: Params, q: UsageQuery, span: Span, grouped: bool) -> str:
    where = [f"r.ts >= {ps.add(span.lo)}", f"r.ts < {ps.add(span.hi)}"]
    if q.key_id is not None:
        where.append(f"r.key_id = {ps.add(q.key_id)}")
    join, group = "", None
    if grouped:
        if q.group_by == "user_id":
            group = "r.user_id"
            where.append("r.user_id IS NOT NULL")
        elif q.group_by == "tag":
            join, group = d.tags, "t.value"
        elif q.by_dimension:
            join, group = d.extras, "e.value"
            where.append(f"e.key = {ps.add(q.group_by[6:])}")
        else:
            group = f"r.{_COLUMN[q.group_by]}"
    select, group_by = _select(group, d.trunc(q.resolution, "r.ts"), RAW_MEASURES)
    return f"SELECT {select} FROM usage_records AS r {join} WHERE {' AND '.join(where)}{group_by}"


def spend(d: Dialect, key_id: str, since: datetime | None) -> Statement:
    """One row, two sums: whole hours from usage_hourly (its rows from `since`'s next hour
    on hold every record from then to now), the rest of `since`'s hour from the records."""
    ps = Params(d)
    key = ps.add(key_id)
    if since is None:
        return Statement(
            f"SELECT (SELECT sum(cost_nusd) FROM usage_hourly WHERE key_id = {key}), 0",
            ps.bound(),
        )
    hour = ceil_hour(since)
    h = ps.add(hour)
    s = ps.add(since)
    return Statement(
        f"SELECT (SELECT sum(cost_nusd) FROM usage_hourly WHERE key_id = {key} AND hour >= {h}),"
        f" (SELECT sum(cost_nusd) FROM usage_records WHERE key_id = {key} AND ts >= {s}"
        f" AND ts < {h})",
        ps.bound(),
    )
