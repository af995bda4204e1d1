"""The ledger record of one request, for the cloud providers' tests (Azure, Bedrock)."""

from __future__ import annotations

import asyncpg
from ledger_gateway import until

# Records leave the gateway every 20 ms, so that a test's poll ends quickly.
FAST_LEDGER = """
[ledger]
flush_interval_ms = 20
"""


async def ledger_row(pg: str, request_id: str) -> asyncpg.Record:
    """The usage record of `request_id` (the response's `x-request-id`), once written."""
    found: list[asyncpg.Record] = []

    async def written() -> bool:
        conn = await asyncpg.connect(pg)
        try:
            row = await conn.fetchrow(
                "SELECT * FROM usage_records WHERE request_id = $1", request_id)
        finally:
            await conn.close()
        if row is not None:
            found.append(row)
        return row is not None

    await until(written)
    return found[0]
