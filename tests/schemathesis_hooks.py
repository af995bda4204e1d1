"""Schemathesis hooks for tests/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

Some rules of the API cannot be written in OpenAPI 3.0, so the spec states them in its
descriptions: a usage window lies between 1970 and 9000, with `start` before `end` and at
most 366 days between them (`end` defaults to now, `start` to 30 days before `end`), and
a new key's `expiry` is in the future. A generated request that breaks one of them is not
a valid request, and its 400 naming that parameter is the right answer: this hook drops
exactly those "schema-valid request rejected" reports. Every request still goes out as
generated, so any other refusal, and any 5xx, is still reported.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from collections.abc import Mapping
from typing import Any, Final

import schemathesis
from schemathesis import Case, HookContext, Response
from schemathesis.core.failures import Failure
from schemathesis.openapi.checks import RejectedPositiveData

_USAGE_PATHS: Final = frozenset({"/api-keys/{key_id}/usage", "/organization/usage"})
_OLDEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
_NEWEST: Final = datetime(9000, 1, 1, tzinfo=UTC)
_MAX_WINDOW: Final = timedelta(days=366)
_DEFAULT_WINDOW: Final = timedelta(days=30)


def _parse(text: str) -> datetime | None:
    """As the gateway reads a time; None when it is not one UTC can hold."""
    text = text.strip()
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # year 1 or 9999 with an offset
        return None


def breaks_window_rule(query: Mapping[str, object], now: datetime) -> bool:
    start, end = query.get("start"), query.get("end")
    end_at = _parse(end) if isinstance(end, str) and end else now
    if end_at is None:
        return True
    start_at = _parse(start) if isinstance(start, str) and start else end_at - _DEFAULT_WINDOW
    if start_at is None:
        return True
    in_range = all(_OLDEST <= t < _NEWEST for t in (start_at, end_at))
    return not (in_range and start_at < end_at <= start_at + _MAX_WINDOW)


def breaks_expiry_rule(body: Mapping[str, object], now: datetime) -> bool:
    expiry = body.get("expiry")
    if not isinstance(expiry, str):
        return False
    when = _parse(expiry)
    return when is None or when <= now


# A key's state comes from the requests before this one, which no schema can describe.
_IDEMPOTENCY_STATE: Final = frozenset({"idempotency_in_progress", "idempotency_key_reused"})


_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def breaks_extra_key_rule(body: Mapping[str, object]) -> bool:
    """OpenAPI 3.0 has no `propertyNames`: an `extra` key's bounds live in the description."""
    meta = body.get("requesty")
    extra = meta.get("extra") if isinstance(meta, dict) else None
    return isinstance(extra, dict) and any(
        not 0 < len(k) <= 64 or _CONTROL.search(k) for k in extra)


def _refused_code(response: Response) -> object:
    try:
        return json.loads(response.content)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def _refused_param(response: Response) -> object:
    try:
        return json.loads(response.content)["error"]["param"]
    except (ValueError, KeyError, TypeError):
        return None


def _sent_idempotency_key(case: Case[Any]) -> bool:
    return any(name.lower() == "idempotency-key" for name in case.headers or ())


@schemathesis.hook
def filter_failure(ctx: HookContext, failure: Failure, case: Case[Any], response: Response) -> bool:
    """False (drop the report) only for a 400 that enforces one of the rules above, or a
    409/422 for an `Idempotency-Key` that an earlier generated request already used."""
    if not isinstance(failure, RejectedPositiveData):
        return True
    if response.status_code in (409, 422):
        if case.operation.path.startswith("/messages"):
            # Anthropic's error shape has no code: a 409 or 422 there is an idempotency
            # answer only when the request carried an Idempotency-Key.
            return not _sent_idempotency_key(case)
        return _refused_code(response) not in _IDEMPOTENCY_STATE
    if response.status_code != 400:
        return True
    param, now = _refused_param(response), datetime.now(UTC)
    operation = case.operation
    if (operation.path, param) == ("/completions", "model"):
        # Whether a model's provider serves legacy completions is a fact of the catalog the
        # spec cannot state (the suite's catalog is all simulated: none does).
        return False
    if param == "requesty.extra" and isinstance(case.body, dict):
        return not breaks_extra_key_rule(case.body)
    if operation.path in _USAGE_PATHS and param in ("start", "end"):
        return not (isinstance(case.query, dict) and breaks_window_rule(case.query, now))
    if (operation.path, operation.method.upper(), param) == ("/api-keys", "POST", "expiry"):
        return not (isinstance(case.body, dict) and breaks_expiry_rule(case.body, now))
    return True
