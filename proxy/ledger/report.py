"""Usage reports: the query (parsed from HTTP parameters), the result, and how rows combine.

Engines return grouped rows (report_sql.py builds their SQL); `assemble` turns them into a
`UsageReport`. For `group_by` user_id and extra.<field>, records without the field form a
row whose group is None: it is what the ungrouped rows hold minus what the grouped ones do,
period by period. Tags fan out (a record with two tags counts under both), so the
untagged records are counted explicitly (value '') and the totals always come from the
ungrouped rows: the totals equal the sum of the records, to the nano-USD.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from ..errors import InvalidRequest
from .record import UsageRecord
from .schema import tags_of, utc

GROUPS: Final = ("model", "key", "provider", "user_id", "status", "tag")
RESOLUTIONS: Final = ("hour", "day", "month")
DEFAULT_WINDOW: Final = timedelta(days=30)
MAX_WINDOW: Final = timedelta(days=366)
_OLDEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
_NEWEST: Final = datetime(9000, 1, 1, tzinfo=UTC)

Group = str | int | None


@dataclass(frozen=True, slots=True)
class UsageQuery:
    start: datetime  # inclusive, UTC
    end: datetime  # exclusive, UTC
    group_by: str = "model"  # one of GROUPS or "extra.<field>"
    resolution: str | None = None  # one of RESOLUTIONS; None: no time split
    key_id: str | None = None  # None: the whole organization

    @property
    def by_dimension(self) -> bool:
        """Grouped by request metadata rather than a column of the main rollup."""
        return self.group_by in ("user_id", "tag") or self.group_by.startswith("extra.")


@dataclass(slots=True)
class Measures:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_nusd: int = 0
    savings_nusd: int = 0
    cached_requests: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Measures) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens
        self.cost_nusd += other.cost_nusd
        self.savings_nusd += other.savings_nusd
        self.cached_requests += other.cached_requests

    def minus(self, other: Measures) -> Measures:
        return Measures(
            self.requests - other.requests,
            self.prompt_tokens - other.prompt_tokens,
            self.completion_tokens - other.completion_tokens,
            self.cached_tokens - other.cached_tokens,
            self.cost_nusd - other.cost_nusd,
            self.savings_nusd - other.savings_nusd,
            self.cached_requests - other.cached_requests,
        )

    @classmethod
    def of(cls, values: Iterable[Any]) -> Measures:
        """From a result row's seven sums (integers from both engines; None for no rows)."""
        return cls(*[0 if v is None else v for v in values])

    @classmethod
    def of_record(cls, r: UsageRecord) -> Measures:
        return cls(1, r.prompt_tokens, r.completion_tokens, r.cached_tokens, r.cost_nusd,
                   r.savings_nusd, int(r.cache_hit))


@dataclass(slots=True)
class UsageRow:
    group: Group
    period: datetime | None
    measures: Measures


@dataclass(slots=True)
class UsageReport:
    query: UsageQuery
    totals: Measures
    rows: list[UsageRow] = field(default_factory=list)


# --- parameters ------------------------------------------------------------------------


def parse_time(value: str, param: str) -> datetime:
    """RFC 3339 (a time without offset is taken as UTC) or YYYY-MM-DD (midnight UTC)."""
    text = value.strip()
    try:
        if len(text) == 10:
            parsed = datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        elif len(text) > 10 and text[10] in "Tt ":
            parsed = datetime.fromisoformat(text.replace("z", "Z"))
        else:
            raise ValueError(text)
    except ValueError:
        raise InvalidRequest(
            f"`{param}` must be an RFC 3339 time or a YYYY-MM-DD date, got {value!r}.",
            param=param,
        ) from None
    parsed = utc(parsed)
    if not _OLDEST <= parsed < _NEWEST:
        raise InvalidRequest(f"`{param}` is out of range: {value!r}.", param=param)
    return parsed


def parse_query(params: Mapping[str, str], now: datetime, key_id: str | None) -> UsageQuery:
    """Validate the report parameters; each problem is a 400 naming its parameter."""
    end = parse_time(params["end"], "end") if params.get("end") else now
    start = parse_time(params["start"], "start") if params.get("start") else end - DEFAULT_WINDOW
    if end <= start:
        raise InvalidRequest("`end` must be after `start` (the window is [start, end)).",
                             param="end")
    if end - start > MAX_WINDOW:
        raise InvalidRequest(
            f"The window from `start` to `end` is {(end - start).days} days; at most "
            f"{MAX_WINDOW.days} days are allowed.",
            param="end",
        )
    group_by = params.get("group_by") or "model"
    if group_by not in GROUPS and not (group_by.startswith("extra.") and len(group_by) > 6):
        raise InvalidRequest(
            f"`group_by` must be one of {', '.join(GROUPS)} or extra.<field>, "
            f"got {group_by!r}.",
            param="group_by",
        )
    resolution = params.get("resolution") or None
    if resolution is not None and resolution not in RESOLUTIONS:
        raise InvalidRequest(
            f"`resolution` must be one of {', '.join(RESOLUTIONS)}, got {resolution!r}.",
            param="resolution",
        )
    return UsageQuery(start, end, group_by, resolution, key_id)


# --- time buckets ----------------------------------------------------------------------


def floor_hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def ceil_hour(t: datetime) -> datetime:
    floor = floor_hour(t)
    return floor if floor == t else floor + timedelta(hours=1)


def floor_day(t: datetime) -> datetime:
    return t.replace(hour=0, minute=0, second=0, microsecond=0)


def ceil_day(t: datetime) -> datetime:
    floor = floor_day(t)
    return floor if floor == t else floor + timedelta(days=1)


def truncate(t: datetime, resolution: str | None) -> datetime | None:
    if resolution is None:
        return None
    if resolution == "hour":
        return floor_hour(t)
    if resolution == "day":
        return floor_day(t)
    return floor_day(t).replace(day=1)


# --- combining engine rows -------------------------------------------------------------


def assemble(
    query: UsageQuery,
    grouped: Iterable[UsageRow],
    ungrouped: Iterable[UsageRow] | None = None,
) -> UsageReport:
    """The report from the engine's rows: `grouped` by the query's group; `ungrouped`
    (group None, same periods) for metadata dimensions only."""
    rows = list(grouped)
    totals = Measures()
    if ungrouped is None:
        for row in rows:
            totals.add(row.measures)
    else:
        per_period: dict[datetime | None, Measures] = {}
        for row in ungrouped:
            totals.add(row.measures)
            per_period.setdefault(row.period, Measures()).add(row.measures)
        if query.group_by == "tag":
            for row in rows:
                if row.group == "":
                    row.group = None  # the untagged records
        else:
            for row in rows:
                per_period[row.period] = per_period.get(row.period, Measures()).minus(
                    row.measures)
            rows.extend(UsageRow(None, period, rest)
                        for period, rest in per_period.items() if rest.requests)
    rows.sort(key=_order)
    return UsageReport(query, totals, rows)


def _order(row: UsageRow) -> tuple[object, ...]:
    period = row.period.timestamp() if row.period is not None else 0.0
    # Biggest spend first within a period; ties broken by the group so the order is stable.
    return (period, -row.measures.cost_nusd, -row.measures.requests, row.group is None,
            str(row.group))


def aggregate(records: Iterable[UsageRecord], query: UsageQuery) -> UsageReport:
    """The same report computed in Python over records in memory (MemoryLedger)."""
    grouped: dict[tuple[Group, datetime | None], Measures] = {}
    ungrouped: dict[datetime | None, Measures] = {}
    for r in records:
        ts = utc(r.ts)
        if not query.start <= ts < query.end:
            continue
        if query.key_id is not None and r.key_id != query.key_id:
            continue
        period = truncate(ts, query.resolution)
        m = Measures.of_record(r)
        ungrouped.setdefault(period, Measures()).add(m)
        for g in _groups_of(r, query.group_by):
            grouped.setdefault((g, period), Measures()).add(m)
    rows = [UsageRow(g, p, m) for (g, p), m in grouped.items()]
    if not query.by_dimension:
        return assemble(query, rows)
    return assemble(query, rows, [UsageRow(None, p, m) for p, m in ungrouped.items()])


def _groups_of(r: UsageRecord, group_by: str) -> list[Group]:
    if group_by == "model":
        return [r.model]
    if group_by == "key":
        return [r.key_id]
    if group_by == "provider":
        return [r.provider]
    if group_by == "status":
        return [r.status]
    if group_by == "user_id":
        return [r.user_id] if r.user_id is not None else []
    if group_by == "tag":
        return list(tags_of(r)) or [""]
    name = group_by[6:]
    value = r.extra.get(name, r.headers.get(name))
    return [value] if value is not None else []
