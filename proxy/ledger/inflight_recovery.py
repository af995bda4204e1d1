"""Requests a dead worker admitted and never recorded become usage records, and their
reservations are settled, so the spend counters and the ledger stay equal.

Each admission read back from a dead worker's journal (`inflight.py`) is charged its
prompt estimate (the least the provider bills for a request it received; what it
generated after is unknown) through the limits, which also releases its reservation;
then its record goes to the ledger: status 502, `error_code` "worker_lost",
`estimated` true. A lease the worker drew from goes back after its draws are settled.
The order (charge, record, mark done) keeps a recovery cut short from charging twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from ..limits import Admission, Limits
from ..limits.admission import reservation_id
from . import Ledger
from .inflight import Admitted, Orphans, claim_orphans
from .record import UsageRecord

log = logging.getLogger("proxy.ledger")

STATUS_WORKER_LOST: Final = 502
ERROR_WORKER_LOST: Final = "worker_lost"


# (model id, prompt tokens) -> nano-USD: the catalog's price of the prompt estimate.
Pricing = Callable[[str, int], int]


def lost_record(entry: Admitted, cost_nusd: int, died: datetime) -> UsageRecord:
    """The record of a request whose worker died: what the journal knew at admission."""
    return UsageRecord(
        request_id=entry.request_id,
        ts=entry.ts,
        key_id=entry.key_id,
        model_requested=entry.model_requested,
        model=entry.model,
        provider=entry.provider,
        region=entry.region,
        status=STATUS_WORKER_LOST,
        error_code=ERROR_WORKER_LOST,
        prompt_tokens=entry.prompt_tokens,
        cost_nusd=cost_nusd,
        # Up to the worker's last journal write: about when it died.
        latency_ms=max(0.0, (died - entry.ts).total_seconds() * 1000),
        stream=entry.stream,
        estimated=True,
        user_id=entry.user_id,
        trace_id=entry.trace_id,
        tags=entry.tags,
        extra=entry.extra,
        headers=entry.headers,
        client_request_id=entry.client_request_id,
        route=entry.route,
    )


async def recover(directory: Path, ledger: Ledger, limits: Limits, price: Pricing) -> int:
    """Record and settle what dead workers left in `directory`; returns how many requests."""
    try:
        orphans = claim_orphans(directory)
    except OSError as e:
        log.error("ledger: cannot read the admission journals in %s (%s)", directory, e)
        return 0
    if orphans is None:
        return 0
    try:
        n = await _settle(orphans, ledger, limits, price)
    except BaseException:
        orphans.release()  # the next scan takes them again; what was done is marked
        raise
    orphans.finish()
    return n


async def _settle(orphans: Orphans, ledger: Ledger, limits: Limits, price: Pricing) -> int:
    died = _last_write(orphans)
    # The dead worker may have handed a request's record to its ledger and died before its
    # done mark: that record, in the worker's spool, must reach the database before this
    # `worker_lost` one, which the database then skips (request ids are unique). At a start
    # the ledger has claimed the spool already; a live sibling's scan has not.
    ledger.claim_orphans()
    for owner, entry in orphans.admissions:
        cost = _priced(price, entry)
        try:
            await limits.settle_orphan(admission_of(entry), cost, entry.prompt_tokens)
        except Exception as e:  # noqa: BLE001 - the record still goes: the ledger is the truth
            log.error("ledger: could not settle the reservation of lost request %s (%s)",
                      entry.request_id, type(e).__name__)
        ledger.enqueue(lost_record(entry, cost, died))
        await asyncio.sleep(0)  # the ledger journals its lines at the end of the iteration
        orphans.recorded(owner, entry.seq)
    for lease in orphans.leases:
        try:
            await limits.return_lease(lease.key_id, lease.period, lease.lease_id)
        except Exception as e:  # noqa: BLE001 - the sweeper charges it later: errs safe
            log.error("ledger: could not hand back lease %s (%s)", lease.lease_id,
                      type(e).__name__)
    if orphans.admissions or orphans.bad_lines:
        log.warning("ledger: %d request(s) of stopped workers recorded as lost (status %d), "
                    "%d lease(s) handed back, %d unreadable journal line(s)",
                    len(orphans.admissions), STATUS_WORKER_LOST, len(orphans.leases),
                    orphans.bad_lines)
    return len(orphans.admissions)


def admission_of(entry: Admitted) -> Admission:
    """The admission as the dead worker held it: its settle carries the same mark, so one
    the worker had already made before it died charges nothing twice."""
    rid, lease_id = entry.reservation_id, entry.lease_id
    if entry.leased and not lease_id:  # a line from before draws had ids of their own
        rid, lease_id = reservation_id(), rid
    return Admission(entry.key_id, rid, entry.reserved_nusd, period=entry.period,
                     tokens=entry.tokens, tpm=entry.tpm, lease_id=lease_id)


def _priced(price: Pricing, entry: Admitted) -> int:
    try:
        return price(entry.model, entry.prompt_tokens)
    except Exception as e:  # noqa: BLE001 - a model gone from the catalog: recorded at 0
        log.error("ledger: cannot price lost request %s on %s (%s); recorded at 0",
                  entry.request_id, entry.model, e)
        return 0


def _last_write(orphans: Orphans) -> datetime:
    latest = 0.0
    for path in orphans.paths:
        try:
            latest = max(latest, os.stat(path).st_mtime)
        except OSError:
            continue
    return datetime.fromtimestamp(latest, UTC) if latest else datetime.now(UTC)
