"""Spend periods: the calendar month in UTC ("2025-06"), or "total" for a lifetime limit."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Final

TOTAL: Final = "total"
_KEEP_AFTER_S: Final = 35 * 86400  # a month's counter outlives its month (late settles, reports)


def period_id(kind: str, now: float) -> str:
    if kind == TOTAL:
        return TOTAL
    t = time.gmtime(now)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}"


def period_start(period: str) -> datetime | None:
    """When the period began (what to sum the ledger from); None for "total"."""
    if period == TOTAL:
        return None
    year, month = period.split("-")
    return datetime(int(year), int(month), 1, tzinfo=UTC)


def previous(period: str) -> str | None:
    if period == TOTAL:
        return None
    year, month = (int(p) for p in period.split("-"))
    return f"{year - 1:04d}-12" if month == 1 else f"{year:04d}-{month - 1:02d}"


def counter_ttl_s(period: str, now: float) -> int:
    """Seconds a counter is kept in Redis; 0 means for ever ("total")."""
    if period == TOTAL:
        return 0
    start = period_start(period)
    assert start is not None
    nxt = datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)
    return max(60, int(nxt.timestamp() - now) + _KEEP_AFTER_S)
