"""What the admission journal and the client watch cost a request (`proxy/ledger/inflight.py`,
`proxy/api/inflight.py`): CPU microseconds a request, in process, on one core. Process time,
not wall time: on a machine shared with other work it is inflated far less.

    PYTHONPATH=. python loadtest/bench_inflight.py [--n 200000]

Rows: the journal alone (encode the admission, mark it recorded) with one `write` a request
(concurrency 1: every request its own event-loop iteration) and one a 16 requests (a busy
worker's iteration holds many); then the whole `InFlight.begin` + `end` the handlers call
(journal, `X-Requesty-*` headers, pricing the prompt, the client watch), same two cases.
The journal is in a temporary directory on the same file system as the spool would be.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from aiohttp.test_utils import make_mocked_request

from proxy.api.common import CLIENT_REQUEST_ID, REQUEST_ID, requesty_headers
from proxy.api.inflight import InFlight
from proxy.catalog import Catalog
from proxy.config import load_settings
from proxy.ledger.inflight import AdmissionJournal, Admitted
from proxy.limits import Admission
from proxy.wire import RequestyMeta

TS = datetime.now(UTC)


def _entry(seq: int) -> Admitted:
    return Admitted(seq, f"5f0c2a9e8b1d{seq:010x}", TS, "key_0123456789abcdef0123",
                    "openai/gpt-4o-mini", "openai/gpt-4o-mini", "openai", "global", True, 42,
                    "r:5f0c2a9e8b1d:1a2c", 1_234_567, "2026-12", 0, 0, True,
                    lease_id="r:5f0c2a9e8b1d:1a2b")


def bench_journal(directory: Path, n: int, per_write: int) -> float:
    journal = AdmissionJournal(directory, 900.0)
    journal.open()
    t0 = time.process_time()
    for i in range(1, n + 1):
        journal.admitted(_entry(i))
        journal.recorded(i)
        if i % per_write == 0:
            journal.drain()
    elapsed = time.process_time() - t0
    journal.close()
    return elapsed / n * 1e6


def bench_inflight(directory: Path, n: int, per_write: int) -> float:
    journal = AdmissionJournal(directory, 900.0)
    flight = InFlight(journal, "global")
    journal.open()  # what the app's startup does
    request = make_mocked_request("POST", "/v1/chat/completions", headers={
        "Authorization": "Bearer sk-x", "Content-Type": "application/json",
        "X-Requesty-Team": "search", "User-Agent": "bench"})
    request[REQUEST_ID] = "5f0c2a9e8b1d0000000001"
    request[CLIENT_REQUEST_ID] = None
    model = Catalog(load_settings(None, env={})).get("openai/gpt-4o-mini")
    admission = Admission("key_0123456789abcdef0123", "r:5f0c2a9e8b1d:1a2c", 1_234_567,
                          period="2026-12", lease_id="r:5f0c2a9e8b1d:1a2b")
    meta = RequestyMeta(user_id="alice", tags=["prod"])
    t0 = time.process_time()
    for i in range(1, n + 1):
        ticket = flight.begin(request, admission, model, "openai/gpt-4o-mini", 42, True, meta,
                              TS, "chat", request[REQUEST_ID], request[CLIENT_REQUEST_ID],
                              requesty_headers(request))
        flight.end(ticket)
        if i % per_write == 0:
            journal.drain()
    elapsed = time.process_time() - t0
    journal.close()
    return elapsed / n * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name, bench in (("journal", bench_journal), ("begin+end", bench_inflight)):
            for per_write in (1, 16):
                best = min(bench(Path(tmp), args.n, per_write) for _ in range(3))
                print(f"{name:10s} one write a {per_write:2d} request(s): {best:.2f} µs a request")
                await asyncio.sleep(0)  # let the scheduled drains run (no-ops by now)


if __name__ == "__main__":
    asyncio.run(main())
