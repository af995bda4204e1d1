"""Requests in flight, from admission to record: journaled and watched.

`InFlight.begin` runs right after a request's spend limit admits it: the admission goes
to the worker's admission journal (`ledger/inflight.py`), so that a killed worker's
requests still become records and release their reservations at the next start
(`ledger/inflight_recovery.py`), and the client's connection is watched, so that a
client that leaves cancels the upstream call (`client_watch.py`). `InFlight.end` runs
after the record is handed to the ledger. Dead workers' journals are recovered at start
and every `ORPHAN_SCAN_S` (a worker of `serve --workers N` that dies is not restarted).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Final

from aiohttp import web

from ..catalog import Model, Usage
from ..gateway import GATEWAY
from ..ledger.inflight import AdmissionJournal, Admitted
from ..ledger.inflight_recovery import recover
from ..limits import Admission
from ..wire import RequestyMeta
from .client_watch import ClientWatch

log = logging.getLogger("proxy")

ORPHAN_SCAN_S: Final = 30.0


class InFlight:
    __slots__ = ("_journal", "_region", "_tasks", "_tickets", "watch")

    def __init__(self, journal: AdmissionJournal | None, region: str,
                 watch: ClientWatch | None = None) -> None:
        self._journal = journal  # None: the ledger keeps nothing either (store = "memory")
        self._region = region
        self.watch = watch or ClientWatch()
        self._tasks: list[asyncio.Task[None]] = []
        self._tickets = itertools.count(1)  # without a journal (whose sequence they are)

    # --- the request path --------------------------------------------------------------

    def begin(
        self, request: web.Request, admission: Admission, model: Model, model_requested: str,
        prompt_tokens: int, stream: bool, meta: RequestyMeta, arrived: datetime, route: str,
        request_id: str, client_request_id: str | None, headers: dict[str, str],
    ) -> int:
        """Journal the admission and watch the client; returns the ticket for `end`.
        `route`: the record's (chat, messages, responses, completions, embeddings); the
        ids and X-Requesty-* headers as the handler read them (no second read here)."""
        journal = self._journal
        seq = next(self._tickets if journal is None else journal.seqs)
        self.watch.watch(seq, request)
        if journal is None:
            return seq
        journal.admitted(Admitted(  # and the lease, when it is the first draw from it
            seq, request_id, arrived, admission.key_id, model_requested, model.id,
            model.provider, self._region, stream, prompt_tokens, admission.reservation_id,
            admission.reserved_nusd, admission.period, admission.tokens, admission.tpm,
            admission.leased, meta.user_id, meta.trace_id, meta.tags, meta.extra,
            headers, client_request_id, route, admission.lease_id,
        ))
        return seq

    def end(self, ticket: int) -> None:
        """The request's record is with the ledger (and its spend settled)."""
        self.watch.unwatch(ticket)
        if self._journal is not None:
            self._journal.recorded(ticket)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, app: web.Application) -> None:
        self._tasks.append(asyncio.create_task(self.watch.run(), name="client-watch"))
        if self._journal is None:
            return
        self._journal.open()
        await self.recover(app)
        self._tasks.append(asyncio.create_task(self._scan(app), name="inflight-scan"))

    async def recover(self, app: web.Application) -> int:
        """Record and settle what dead workers left; returns how many requests."""
        if self._journal is None:
            return 0
        gw = app[GATEWAY]

        def price(model_id: str, prompt_tokens: int) -> int:
            return gw.catalog.get(model_id).cost(Usage(prompt_tokens=prompt_tokens))

        return await recover(self._journal.directory, gw.ledger, gw.limits, price)

    async def _scan(self, app: web.Application) -> None:
        while True:
            await asyncio.sleep(ORPHAN_SCAN_S)
            try:
                await self.recover(app)
            except Exception as e:  # noqa: BLE001 - next scan tries again
                log.error("inflight: recovering dead workers' requests failed (%s)",
                          type(e).__name__)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._journal is not None:
            self._journal.close()


INFLIGHT: Final = web.AppKey("inflight", InFlight)


async def inflight_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """After the gateway's own lifecycle: recovery needs the ledger and limits started,
    and the journal closes (every request recorded) before they do."""
    flight = app[INFLIGHT]
    await flight.start(app)
    yield
    await flight.close()
