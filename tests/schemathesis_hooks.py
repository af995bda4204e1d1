"""Schemathesis hooks for tests/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

Three rules of the API cannot be written in OpenAPI 3.0, so the spec states them in its
descriptions: a usage window lies between 1970 and 9000 with `start` before `end` and at
most 366 days between them, and a key's `expiry` is in the future. A generated request
that breaks one of them is not a valid request, so refusing it is right; this hook moves
such values inside the rule (keeping their format: a date stays a date) for positive
cases only, so `positive_data_acceptance` judges everything else. Negative cases go out
as generated.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import schemathesis
from schemathesis import Case, GenerationMode, HookContext

_USAGE_PATHS: Final = frozenset({"/api-keys/{key_id}/usage", "/organization/usage"})
_OLDEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
_NEWEST: Final = datetime(9000, 1, 1, tzinfo=UTC)
_MAX_WINDOW: Final = timedelta(days=366)
_DEFAULT_WINDOW: Final = timedelta(days=30)


def _parse(text: str) -> datetime | None:
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 with an offset: outside what UTC can hold
        return None


def _format(like: str, when: datetime) -> str:
    if len(like) == 10:
        return when.date().isoformat()
    return when.isoformat().replace("+00:00", "Z")


def _inside(when: datetime | None, fallback: datetime) -> datetime:
    if when is None or not _OLDEST + _MAX_WINDOW <= when < _NEWEST - _MAX_WINDOW:
        return fallback
    return when


def _fix_window(query: dict[str, Any]) -> None:
    start, end = query.get("start"), query.get("end")
    now = datetime.now(UTC)
    if isinstance(end, str) and end:
        query["end"] = _format(end, _inside(_parse(end), now))
        end_at = _parse(query["end"]) or now  # a date-only end is its midnight
        if isinstance(start, str) and start:
            start_at = _parse(start)
            if start_at is None or not end_at - _MAX_WINDOW <= start_at < end_at:
                start_at = end_at - timedelta(days=1)
            query["start"] = _format(start, start_at)
            if len(start) == 10 and _parse(query["start"]) == end_at:
                query["end"] = _format(end, end_at + timedelta(days=1))  # start rounded onto end
    elif isinstance(start, str) and start:
        # `end` defaults to now: the start must fall in the year before it.
        start_at = _parse(start)
        if start_at is None or not now - _MAX_WINDOW + timedelta(days=1) <= start_at < now:
            start_at = now - _DEFAULT_WINDOW
        query["start"] = _format(start, start_at)


def _fix_expiry(body: dict[str, Any]) -> None:
    expiry = body.get("expiry")
    if not isinstance(expiry, str):
        return
    when = _parse(expiry)
    now = datetime.now(UTC)
    if when is None or not now + timedelta(days=1) < when < _NEWEST:
        body["expiry"] = _format(expiry, now + timedelta(days=365))


@schemathesis.hook
def before_call(ctx: HookContext, case: Case, kwargs: dict[str, Any]) -> None:
    # Not `map_case`: values reused from earlier responses are put in after that hook.
    if case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE:
        return
    operation = case.operation
    if operation.path in _USAGE_PATHS and isinstance(case.query, dict):
        _fix_window(case.query)
    elif (operation.path, operation.method.upper()) == ("/api-keys", "POST") and isinstance(
        case.body, dict
    ):
        _fix_expiry(case.body)
