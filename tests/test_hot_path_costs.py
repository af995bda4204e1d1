"""What issue 16's guarantees cost a request stays small: the `X-Requesty-*` headers are
scanned once a request (the admission journal reuses the handler's bounded result), a
request without them or without an `Idempotency-Key` pays one cheap check, and each watched
request has its own ticket, so its end needs no task lookup."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from ledger_support import usage_record

from proxy import metadata
from proxy.api import common
from proxy.api.common import CLIENT_REQUEST_ID, REQUEST_ID, requesty_headers
from proxy.api.inflight import InFlight
from proxy.catalog import Catalog
from proxy.config import LedgerConfig, load_settings
from proxy.idempotency import Idempotency, MemoryStore
from proxy.ledger.inflight import AdmissionJournal, Admitted
from proxy.ledger.sqlite import sqlite_ledger
from proxy.limits import Admission
from proxy.wire import RequestyMeta

TS = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
PLAIN = {"Host": "gw", "Content-Type": "application/json", "Authorization": "Bearer sk-x",
         "Accept": "*/*", "User-Agent": "bench", "Content-Length": "10"}


def request(headers: dict[str, str], rid: str = "req-1") -> web.Request:
    req = make_mocked_request("POST", "/v1/chat/completions", headers=headers)
    req[REQUEST_ID] = rid
    req[CLIENT_REQUEST_ID] = None
    return req


def begin(flight: InFlight, req: web.Request, headers: dict[str, str] | None = None) -> int:
    """`InFlight.begin` as a handler calls it: with the X-Requesty-* headers it read."""
    model = Catalog(load_settings(None, env={})).get("openai/gpt-4o-mini")
    admission = Admission("k1", "r:1", 50_000, period="2026-06")
    found = requesty_headers(req) if headers is None else headers
    return flight.begin(req, admission, model, model.id, 10, False, RequestyMeta(), TS, "chat",
                        req[REQUEST_ID], req[CLIENT_REQUEST_ID], found)


async def test_the_journal_reuses_the_handlers_requesty_headers_without_a_second_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    scans: list[int] = []
    scan = metadata.requesty_headers

    def counted(headers: object) -> dict[str, str]:
        scans.append(1)
        return scan(headers)  # type: ignore[arg-type]

    monkeypatch.setattr(metadata, "requesty_headers", counted)
    journal = AdmissionJournal(tmp_path, 900.0)
    journal.open()
    flight = InFlight(journal, "global")
    req = request({**PLAIN, "X-Requesty-Team": "search"})
    found = requesty_headers(req)  # the handler, before routing
    assert found == {"team": "search"}
    ticket = begin(flight, req, found)
    journal.drain()
    line = next(tmp_path.glob("inflight-*.jsonl")).read_bytes().splitlines()[0]
    assert msgspec.json.decode(line, type=Admitted).headers == {"team": "search"}
    assert len(scans) == 1
    flight.end(ticket)
    journal.close()


async def test_the_admission_line_carries_the_bounded_headers(
    tmp_path: Path,
) -> None:
    journal = AdmissionJournal(tmp_path, 900.0)
    journal.open()
    flight = InFlight(journal, "global")
    ticket = begin(flight, request({**PLAIN, "x-requesty-env": "prod"}))
    journal.drain()
    line = next(tmp_path.glob("inflight-*.jsonl")).read_bytes().splitlines()[0]
    assert msgspec.json.decode(line, type=Admitted).headers == {"env": "prod"}
    flight.end(ticket)
    journal.close()


@pytest.mark.parametrize("name", ["X-Requesty-Team", "x-requesty-team", "X-REQUESTY-TEAM"])
def test_requesty_headers_are_found_in_any_case_among_others(name: str) -> None:
    assert common.requesty_headers(request({**PLAIN, name: "a"})) == {"team": "a"}


def test_no_requesty_headers_is_an_empty_dict_each_time() -> None:
    first = common.requesty_headers(request(PLAIN))
    first["x"] = "y"  # a caller's dict is its own
    assert common.requesty_headers(request(PLAIN)) == {}
    # a header that only contains the prefix later in its name is not one
    assert common.requesty_headers(request({**PLAIN, "Foo-X-Requesty-A": "b"})) == {}


async def test_without_a_journal_each_watched_request_has_its_own_ticket() -> None:
    flight = InFlight(None, "global")

    async def one(rid: str, go: asyncio.Event) -> int:
        ticket = begin(flight, request(PLAIN, rid))
        await go.wait()
        return ticket

    go = asyncio.Event()
    tasks = [asyncio.create_task(one(f"req-{i}", go)) for i in range(2)]
    while len(flight.watch) < 2:
        await asyncio.sleep(0)
    go.set()
    first, second = await asyncio.gather(*tasks)
    assert first != second
    flight.end(first)
    assert len(flight.watch) == 1
    flight.end(second)
    assert len(flight.watch) == 0


@pytest.mark.parametrize("name", ["Idempotency-Key", "idempotency-key", "IDEMPOTENCY-KEY"])
async def test_the_idempotency_key_is_found_in_any_case(name: str) -> None:
    idem = Idempotency(MemoryStore(1 << 20), retention_s=60, in_flight_s=60)
    once = await idem.begin(request({**PLAIN, name: "k-1"}), "k1", "chat",
                            b'{"model":"m"}')
    assert once is not None and once.key == "k-1"
    assert await idem.begin(request(PLAIN), "k1", "chat", b"{}") is None


def _journal_lines(directory: Path) -> list[bytes]:
    return next(directory.glob("inflight-*.jsonl")).read_bytes().splitlines()


def _admitted(seq: int) -> Admitted:
    return Admitted(seq, f"req-{seq}", TS, "k1", "up/model", "up/model", "up", "global", False,
                    10, f"r:{seq}", 50_000, "2026-06", 0, 0, False)


async def test_a_lone_admission_is_on_disk_at_once_and_its_done_mark_at_the_turns_end(
    tmp_path: Path,
) -> None:
    """The admission needs no batch; the done mark waits for the end of the turn, where
    the ledger writes the record it stands for first."""
    journal = AdmissionJournal(tmp_path, 900.0)
    journal.open()
    journal.admitted(_admitted(1))
    assert len(_journal_lines(tmp_path)) == 1  # before the loop turns
    journal.recorded(1)
    assert len(_journal_lines(tmp_path)) == 1
    await asyncio.sleep(0)
    assert _journal_lines(tmp_path)[1] == b"1"
    journal.close()


async def test_with_requests_in_flight_the_lines_of_one_turn_go_out_together(
    tmp_path: Path,
) -> None:
    journal = AdmissionJournal(tmp_path, 900.0)
    journal.open()
    journal.admitted(_admitted(1))  # alone: written at once
    journal.admitted(_admitted(2))
    journal.admitted(_admitted(3))
    journal.recorded(1)
    assert len(_journal_lines(tmp_path)) == 1  # batched for the end of this turn
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(_journal_lines(tmp_path)) == 4
    journal.recorded(2)
    journal.recorded(3)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert _journal_lines(tmp_path)[4:] == [b"2", b"3"]
    journal.close()


async def test_a_done_mark_never_reaches_the_disk_before_the_record_it_stands_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker killed between the two writes must not leave "recorded" without the record:
    recovery would skip the request and its record would be lost. Here the journal's drain
    is already scheduled (another admission) when the record goes to the ledger, the order
    in which a mark written by that drain would come first."""
    ledger = sqlite_ledger(f"sqlite:///{tmp_path / 'ledger.db'}", LedgerConfig(),
                           tmp_path / "spool")
    await ledger.start()
    journal = AdmissionJournal(tmp_path / "spool", 900.0)
    journal.open()
    seen: list[bool] = []  # at each done mark's write: was the record in a ledger file?
    write = AdmissionJournal._write

    def watched(self: AdmissionJournal, data: bytes) -> None:
        if b"\n2\n" in b"\n" + data:
            seen.append(any(b'"req-2"' in p.read_bytes()
                            for p in (tmp_path / "spool").glob("ledger-*")))
        write(self, data)

    monkeypatch.setattr(AdmissionJournal, "_write", watched)
    try:
        journal.admitted(_admitted(1))  # alone: written at once
        journal.admitted(_admitted(2))  # batched: the journal's drain is scheduled now
        ledger.enqueue(usage_record(request_id="req-2"))  # the ledger's drain after it
        journal.recorded(2)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert seen == [True]
    finally:
        journal.close()
        await ledger.close()
