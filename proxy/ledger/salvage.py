"""A record the database refuses, made writable: its money kept, its metadata replaced.

Edge validation keeps request metadata within what the database stores (proxy/metadata.py).
A record refused anyway (a value that reached it some other way, a schema that changed)
must not take its cost out of the ledger while the spend counters charged it. The writer
then writes this copy instead: the client-supplied metadata replaced by a marker tag, the
text the gateway owns stripped of what no database stores (NUL, lone surrogates) and cut to
a length every index takes, counts clamped to what one call can count (so that neither the
record nor the rollup sums it joins overflow 64 bits). Request id, key, time and, for any
cost the spend counters could have charged, tokens and cost stay, so totals and rollups
still add up; the original goes to the quarantine file for an operator.
"""

from __future__ import annotations

from typing import Final

import msgspec

from ..catalog import MAX_CALL_TOKENS
from .record import UsageRecord

# What the usage API shows under group_by=tag for such records.
MARKER_TAG: Final = "proxy:metadata-refused"
_INTEGER: Final = 2**31 - 1
# 9 million USD in nano-USD: past any one call, and a million of them still sum in 64 bits.
_MAX_COST: Final = 2**53
_TEXT_CHARS: Final = 256  # well inside a B-tree row (model and provider are rollup keys)


def _text(value: str) -> str:
    cleaned = value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return cleaned[:_TEXT_CHARS]


def _opt_text(value: str | None) -> str | None:
    return None if value is None else _text(value)


def _count(value: int, top: int = MAX_CALL_TOKENS) -> int:
    return max(0, min(value, top))


def salvaged(record: UsageRecord) -> UsageRecord:
    """The record with its metadata replaced by `MARKER_TAG`, storable by either engine."""
    return msgspec.structs.replace(
        record,
        user_id=None,
        trace_id=None,
        tags=[MARKER_TAG],
        extra={},
        headers={},
        client_request_id=None,
        model_requested=_text(record.model_requested),
        model=_text(record.model),
        provider=_text(record.provider),
        region=_text(record.region),
        finish_reason=_opt_text(record.finish_reason),
        error_code=_opt_text(record.error_code),
        status=_count(record.status, _INTEGER),
        attempts=_count(record.attempts, _INTEGER),
        prompt_tokens=_count(record.prompt_tokens),
        completion_tokens=_count(record.completion_tokens),
        cached_tokens=_count(record.cached_tokens),
        cache_write_tokens=_count(record.cache_write_tokens),
        cost_nusd=_count(record.cost_nusd, _MAX_COST),
        savings_nusd=_count(record.savings_nusd, _MAX_COST),
    )
