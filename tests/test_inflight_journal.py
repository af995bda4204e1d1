"""The admission journal's files: a dead worker's open admissions are recovered once each
(a kill in the middle of a rotation included), a live worker's never, a recovery cut short
does not charge again what it already charged, and a clean close leaves no file."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from proxy.auth import Principal
from proxy.config import LimitsConfig
from proxy.ledger import MemoryLedger
from proxy.ledger.inflight import AdmissionJournal, Admitted, claim_orphans
from proxy.ledger.inflight_recovery import admission_of, lost_record, recover
from proxy.limits import Admission
from proxy.limits.durable import SpendSource
from proxy.limits.memory import MemoryLimits
from proxy.limits.periods import period_id

ROOT = Path(__file__).resolve().parent.parent
TS = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def entry(seq: int, key_id: str = "k1") -> Admitted:
    return Admitted(seq, f"req-{seq}", TS, key_id, "up/model", "up/model", "up", "global",
                    False, 10, f"r:{seq}", 50_000, period_id("monthly", time.time()), 0, 0,
                    False)


def price(model_id: str, prompt_tokens: int) -> int:
    """100 nano-USD a prompt token."""
    return prompt_tokens * 100


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("inflight-*.jsonl"))


async def run_and_kill(directory: Path, body: str, imports: str = "") -> None:
    """Run `body` (with a journal `j` open on `directory`) in a process, then SIGKILL it."""
    script = textwrap.dedent("""
        import asyncio, shutil, sys, time
        from pathlib import Path
        from tests.test_inflight_journal import entry
        from proxy.ledger.inflight import AdmissionJournal
        {imports}

        async def main():
            j = AdmissionJournal(Path(sys.argv[1]), 900.0)
            j.open()
        {body}
            j.drain()
            print("ready", flush=True)
            time.sleep(60)

        asyncio.run(main())
    """).replace("{body}", textwrap.indent(textwrap.dedent(body), "    ")
                 ).replace("{imports}", imports)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(directory), cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None
    assert (await asyncio.wait_for(child.stdout.readline(), 30)).strip() == b"ready"
    os.kill(child.pid, signal.SIGKILL)
    await child.wait()


@pytest.mark.slow  # a subprocess, SIGKILLed
async def test_a_worker_killed_mid_rotation_has_each_open_admission_recovered_once(
    tmp_path: Path,
) -> None:
    # The kill lands after the new file got its name and before the old one was unlinked:
    # both files hold admissions 3, 4 and 5, and only the old one knows 1 and 2 were done.
    await run_and_kill(tmp_path, """
        for seq in range(1, 6):
            j.admitted(entry(seq))
        j.recorded(1)
        j.recorded(2)
        j.drain()
        old = sorted(Path(sys.argv[1]).glob("inflight-*.jsonl"))[0]
        kept = old.read_bytes()
        j.rotate()
        old.write_bytes(kept)
        j.recorded(3)
    """)
    assert len(files(tmp_path)) == 2
    ledger, limits = MemoryLedger(), MemoryLimits(LimitsConfig(), SpendSource(None, lambda: None))
    assert await recover(tmp_path, ledger, limits, price) == 2
    assert sorted(r.request_id for r in ledger.records) == ["req-4", "req-5"]
    assert {(r.status, r.error_code, r.estimated, r.cost_nusd) for r in ledger.records} == {
        (502, "worker_lost", True, 1_000)}
    assert await limits.spend([Principal("k1")]) == [2_000]
    assert files(tmp_path) == []
    assert await recover(tmp_path, ledger, limits, price) == 0


@pytest.mark.slow  # a subprocess, SIGKILLed
async def test_a_file_a_dead_worker_was_creating_is_removed_and_nothing_recovered_from_it(
    tmp_path: Path,
) -> None:
    # Killed after writing the rotation's new file, before giving it its name: the old file
    # still has everything.
    await run_and_kill(tmp_path, """
        j.admitted(entry(1))
        j.drain()
        old = sorted(Path(sys.argv[1]).glob("inflight-*.jsonl"))[0]
        kept = old.read_bytes()
        j.rotate()
        new = sorted(Path(sys.argv[1]).glob("inflight-*.jsonl"))[-1]
        new.rename(new.with_name("." + new.name + ".tmp"))
        old.write_bytes(kept)
    """)
    ledger, limits = MemoryLedger(), MemoryLimits(LimitsConfig(), SpendSource(None, lambda: None))
    assert await recover(tmp_path, ledger, limits, price) == 1
    assert [r.request_id for r in ledger.records] == ["req-1"]
    assert list(tmp_path.glob(".inflight-*")) == []
    assert files(tmp_path) == []


async def test_a_live_workers_admissions_are_never_recovered(tmp_path: Path) -> None:
    live = AdmissionJournal(tmp_path, 900.0)
    live.open()
    live.admitted(entry(1))
    live.drain()
    assert claim_orphans(tmp_path) is None
    live.close()
    assert len(files(tmp_path)) == 1  # one admission open: kept for the next start


async def test_a_clean_close_with_every_request_recorded_leaves_no_journal(tmp_path: Path
                                                                           ) -> None:
    journal = AdmissionJournal(tmp_path, 900.0)
    journal.open()
    for seq in (1, 2):
        journal.admitted(entry(seq))
    journal.recorded(1)
    journal.recorded(2)
    journal.close()
    assert files(tmp_path) == []


class StopsAfter(MemoryLimits):
    """The in-process limits, stopped (as a process is) at the n-th settle of a recovery."""

    def __init__(self, n: int) -> None:
        super().__init__(LimitsConfig(), SpendSource(None, lambda: None))
        self.left = n
        self.settled: list[str] = []

    async def settle_orphan(self, admission: Admission, cost_nusd: int, tokens: int) -> None:
        if self.left == 0:
            raise asyncio.CancelledError
        self.left -= 1
        self.settled.append(admission.reservation_id)
        await super().settle_orphan(admission, cost_nusd, tokens)


@pytest.mark.slow  # a subprocess, SIGKILLed
async def test_a_recovery_cut_short_does_not_charge_again_what_it_charged(tmp_path: Path
                                                                          ) -> None:
    await run_and_kill(tmp_path, """
        for seq in range(1, 6):
            j.admitted(entry(seq))
    """)
    ledger = MemoryLedger()
    first = StopsAfter(2)
    try:
        await recover(tmp_path, ledger, first, price)
    except asyncio.CancelledError:
        pass
    assert first.settled == ["r:1", "r:2"]
    assert len(files(tmp_path)) == 1  # left for the next recovery
    second = StopsAfter(10)
    assert await recover(tmp_path, ledger, second, price) == 3
    assert second.settled == ["r:3", "r:4", "r:5"]
    assert sorted(r.request_id for r in ledger.records) == [f"req-{i}" for i in range(1, 6)]
    assert files(tmp_path) == []


def test_a_recovered_record_keeps_its_route_and_a_line_without_one_is_chat() -> None:
    """The record of a lost `/v1/messages` request says `messages` (the usage API groups by
    route); a line journaled before admissions carried their route decodes as chat."""
    died = datetime.now(UTC)
    admitted = entry(1)
    admitted.route = "messages"
    line = msgspec.json.encode(admitted)
    assert lost_record(msgspec.json.decode(line, type=Admitted), 5, died).route == "messages"
    older = msgspec.json.encode(entry(2))[: -len(b',"chat",""]')] + b"]"
    assert not older.endswith(b'"chat"]')
    assert lost_record(msgspec.json.decode(older, type=Admitted), 5, died).route == "chat"


def test_a_leased_line_from_before_draws_had_ids_is_settled_against_its_lease() -> None:
    """A line journaled when a draw's `reservation_id` was its lease's (no `lease_id`):
    recovery settles it against that lease, under an id of its own."""
    leased = entry(1)
    leased.reservation_id, leased.leased = "r:lease", True
    line = msgspec.json.encode(leased)
    assert line.endswith(b',""]')  # `lease_id` is the last field, and empty
    older = line[: -len(b',""]')] + b"]"
    admission = admission_of(msgspec.json.decode(older, type=Admitted))
    assert admission.lease_id == "r:lease" and admission.reservation_id not in ("", "r:lease")
    leased.lease_id, leased.reservation_id = "r:lease", "r:draw"
    admission = admission_of(msgspec.json.decode(msgspec.json.encode(leased), type=Admitted))
    assert (admission.lease_id, admission.reservation_id) == ("r:lease", "r:draw")
