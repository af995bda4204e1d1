"""The ledger's tables as both engines see them: record rows, rollups, and the SQL dialects.

One description of the rollups (`ROLLUPS`) generates the upserts for PostgreSQL and SQLite,
so the two engines cannot drift apart; `sql/0001_ledger.sql` and its sqlite twin create the
tables. PostgreSQL keeps times as timestamptz; SQLite as integer microseconds since the
epoch, UTC.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import msgspec

from .record import UsageRecord

COLUMNS: Final = (
    "request_id", "ts", "key_id", "model_requested", "model", "provider", "region", "status",
    "finish_reason", "error_code", "prompt_tokens", "completion_tokens", "cached_tokens",
    "cache_write_tokens", "cost_nusd", "savings_nusd", "latency_ms", "ttft_ms", "stream",
    "cache_hit", "attempts", "estimated", "user_id", "trace_id", "tags", "extra", "headers",
    "client_request_id", "route",
)
MEASURES: Final = (
    "requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_nusd",
    "savings_nusd", "cached_requests",
)
# The record columns the rollups read.
ROLLUP_INPUTS: Final = (
    "ts", "key_id", "model", "provider", "status", "prompt_tokens", "completion_tokens",
    "cached_tokens", "cost_nusd", "savings_nusd", "cache_hit", "user_id", "tags", "extra",
    "headers",
)
# How each measure is computed from records (`r`) ...
RAW_MEASURES: Final = (
    "count(*)", "sum(r.prompt_tokens)", "sum(r.completion_tokens)", "sum(r.cached_tokens)",
    "sum(r.cost_nusd)", "sum(r.savings_nusd)", "sum(CASE WHEN r.cache_hit THEN 1 ELSE 0 END)",
)
# ... and from rollup rows.
ROLLUP_MEASURES: Final = tuple(f"sum({m})" for m in MEASURES)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_json = msgspec.json.Encoder()
_EMPTY_JSON: Final = "{}"


def utc(ts: datetime) -> datetime:
    """Records are UTC; a naive time is taken as UTC rather than as the server's zone."""
    tz = ts.tzinfo
    if tz is UTC:
        return ts
    return ts.replace(tzinfo=UTC) if tz is None else ts.astimezone(UTC)


def tags_of(record: UsageRecord) -> list[str]:
    """Tags as a set in first-seen order: a tag counts once per record, and '' is no tag
    (the rollups use '' to mean "untagged")."""
    tags = record.tags
    if not tags:
        return []
    if len(tags) == 1:  # the common case, without building a dict
        return tags if tags[0] else []
    return list(dict.fromkeys(t for t in tags if t))


def _json_text(d: dict[str, str]) -> str:
    return _json.encode(d).decode() if d else _EMPTY_JSON


def pg_row(r: UsageRecord) -> tuple[object, ...]:
    return (
        r.request_id, utc(r.ts), r.key_id, r.model_requested, r.model, r.provider, r.region,
        r.status, r.finish_reason, r.error_code, r.prompt_tokens, r.completion_tokens,
        r.cached_tokens, r.cache_write_tokens, r.cost_nusd, r.savings_nusd, r.latency_ms,
        r.ttft_ms, r.stream, r.cache_hit, r.attempts, r.estimated, r.user_id, r.trace_id,
        tags_of(r), _json_text(r.extra), _json_text(r.headers), r.client_request_id, r.route,
    )


def to_micros(ts: datetime) -> int:
    delta = utc(ts) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000)


def sqlite_row(r: UsageRecord) -> tuple[object, ...]:
    return (
        r.request_id, to_micros(r.ts), r.key_id, r.model_requested, r.model, r.provider,
        r.region, r.status, r.finish_reason, r.error_code, r.prompt_tokens,
        r.completion_tokens, r.cached_tokens, r.cache_write_tokens, r.cost_nusd,
        r.savings_nusd, r.latency_ms, r.ttft_ms, int(r.stream), int(r.cache_hit), r.attempts,
        int(r.estimated), r.user_id, r.trace_id, json.dumps(tags_of(r)),
        _json_text(r.extra), _json_text(r.headers), r.client_request_id, r.route,
    )


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the engines, as SQL fragments over a record alias `r`."""

    name: str
    hour: str  # format with {c}: a time truncated to its hour
    day: str
    month: str
    null_time: str
    tags: str  # set-returning join yielding one `t.value` per tag ('' when untagged)
    extras: str  # set-returning join yielding `e.key`, `e.value` for headers and extra

    def trunc(self, unit: str | None, column: str) -> str:
        if unit is None:
            return self.null_time
        templates = {"hour": self.hour, "day": self.day, "month": self.month}
        return templates[unit].format(c=column)

    def join(self, name: str) -> str:
        """The set-returning join a rollup names (`tags`, `extras`)."""
        return {"tags": self.tags, "extras": self.extras}[name]

    def placeholder(self, n: int) -> str:
        return f"${n}" if self.name == "postgres" else f":p{n}"


POSTGRES: Final = Dialect(
    name="postgres",
    # The writer's and reporter's sessions run with TimeZone=UTC, so these are UTC buckets.
    hour="date_trunc('hour', {c})",
    day="date_trunc('day', {c})",
    month="date_trunc('month', {c})",
    null_time="NULL::timestamptz",
    tags="CROSS JOIN LATERAL unnest(CASE WHEN cardinality(r.tags) = 0 "
    "THEN ARRAY['']::text[] ELSE r.tags END) AS t(value)",
    # Body metadata wins over a header of the same name; most records carry no headers,
    # and skipping the concatenation for them is a measurable share of a flush.
    extras="CROSS JOIN LATERAL jsonb_each_text(CASE WHEN r.headers = '{}'::jsonb "
    "THEN r.extra ELSE r.headers || r.extra END) AS e",
)
SQLITE: Final = Dialect(
    name="sqlite",
    hour="(({c}) / 3600000000 * 3600000000)",
    day="(({c}) / 86400000000 * 86400000000)",
    month="(CAST(strftime('%s', ({c}) / 1000000, 'unixepoch', 'start of month') AS INTEGER)"
    " * 1000000)",
    null_time="NULL",
    tags="""CROSS JOIN json_each(CASE WHEN r.tags = '[]' THEN '[""]' ELSE r.tags END) AS t""",
    extras="CROSS JOIN json_each(json_patch(r.headers, r.extra)) AS e",
)


@dataclass(frozen=True, slots=True)
class Rollup:
    table: str
    keys: tuple[tuple[str, str], ...]  # (column, expression over the record alias r)
    join: str = ""  # dialect attribute naming a set-returning join
    where: str = "TRUE"


def _rollups(d: Dialect) -> tuple[Rollup, ...]:
    hour, day = d.hour.format(c="r.ts"), d.day.format(c="r.ts")
    return (
        Rollup("usage_hourly", (("key_id", "r.key_id"), ("hour", hour), ("model", "r.model"),
                                ("provider", "r.provider"), ("status", "r.status"))),
        Rollup("usage_key_hourly", (("hour", hour), ("key_id", "r.key_id"))),
        Rollup("usage_key_daily", (("day", day), ("key_id", "r.key_id"))),
        # Keyless rollups last: concurrent writers (split by key) meet only on these rows,
        # so each waits for the other's commit only for the short end of its transaction.
        Rollup("usage_org_hourly", (("hour", hour), ("model", "r.model"),
                                    ("provider", "r.provider"), ("status", "r.status"))),
        Rollup("usage_dim_hourly", (("dim", "'user_id'"), ("hour", hour),
                                    ("value", "r.user_id")), where="r.user_id IS NOT NULL"),
        Rollup("usage_dim_hourly", (("dim", "'tag'"), ("hour", hour), ("value", "t.value")),
               join="tags"),
        Rollup("usage_dim_hourly", (("dim", "'extra.' || e.key"), ("hour", hour),
                                    ("value", "e.value")),
               join="extras", where="e.value IS NOT NULL"),
    )


def upserts(d: Dialect, source: str) -> list[str]:
    """One `INSERT ... SELECT ... ON CONFLICT DO UPDATE` per rollup, reading the records just
    inserted from `source` (aliased r). Rows go in key order so that concurrent writers
    (several workers) lock rollup rows in the same order and do not deadlock."""
    out = []
    for ru in _rollups(d):
        key_cols = [c for c, _ in ru.keys]
        cols = ", ".join([*key_cols, *MEASURES])
        exprs = ", ".join([e for _, e in ru.keys] + list(RAW_MEASURES))
        positions = ", ".join(str(i + 1) for i in range(len(ru.keys)))
        join = d.join(ru.join) if ru.join else ""
        sets = ", ".join(f"{m} = {ru.table}.{m} + excluded.{m}" for m in MEASURES)
        # The table's primary key, whatever order the SELECT lists the columns in.
        conflict = {
            "usage_hourly": "key_id, hour, model, provider, status",
            "usage_org_hourly": "hour, model, provider, status",
            "usage_key_hourly": "hour, key_id",
            "usage_key_daily": "day, key_id",
            "usage_dim_hourly": "dim, hour, value",
        }[ru.table]
        out.append(
            f"INSERT INTO {ru.table} ({cols}) SELECT {exprs} FROM {source} AS r {join} "
            f"WHERE {ru.where} GROUP BY {positions} ORDER BY {positions} "
            f"ON CONFLICT ({conflict}) DO UPDATE SET {sets}"
        )
    return out
