"""The admission journal: the requests a worker has admitted and not yet recorded.

A request is written here when its spend limit admits it and marked done when its usage
record is handed to the ledger, so a worker killed in between (SIGKILL, the OOM killer, a
crash) leaves on disk what its requests had reserved and what they would have cost at
least. `inflight_recovery.py` turns such admissions into usage records and settles their
reservations at the next start of any worker on the same spool directory.

One file per worker, `<spool_dir>/inflight-<time>-<pid>-<random>-<n>.jsonl`, held under an
exclusive `flock` for as long as the worker lives (a file nobody holds belongs to a dead
worker). Lines, all JSON:

- `["A", seq, request_id, …]`: an admission (`Admitted`);
- `seq`: that request's record went to the ledger;
- `["L", lease_id, key_id, period]`: a spend lease this worker drew from (`limits/leases.py`);
  its unused rest goes back at recovery.

Cost on the request path: two list appends and a dict entry (the lines of one event-loop
iteration are encoded together, in one msgspec call, and go out in one `write`, never
fsynced); an admission with no other request in flight goes out at once: a batch would
hold only it. A done mark always waits for the end of the iteration, after the ledger
has written the record it stands for (`recorded`). A `write` lands in
the OS page cache, which outlives the process: enough for a killed worker, not for a
machine that loses power (then the limits' sweeper charges the reservations after
`limits.reservation_ttl_s`, as without this journal). The file is rotated at
`ROTATE_BYTES`: the admissions still open are copied into a new file first.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import logging
import os
import secrets
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Final

import msgspec

from ..stats import AdmissionStats

log = logging.getLogger("proxy.ledger")

PREFIX: Final = "inflight-"
SUFFIX: Final = ".jsonl"
ROTATE_BYTES: Final = 8 * 1024 * 1024
_LOCK_NAME: Final = "inflight.lock"  # one recovery at a time per spool directory


class Admitted(msgspec.Struct, array_like=True, tag="A"):
    """One admitted request: its record as it stands if the worker dies, and its admission."""

    seq: int
    request_id: str
    ts: datetime
    key_id: str
    model_requested: str
    model: str
    provider: str
    region: str
    stream: bool
    prompt_tokens: int  # the gateway's estimate of the prompt (priced at recovery)
    reservation_id: str  # the admission's own (its settle's mark); see `lease_id`
    reserved_nusd: int
    period: str
    tokens: int  # taken from the tpm bucket
    tpm: int
    leased: bool  # bool(lease_id) on lines written since draws have ids: kept for older lines
    user_id: str | None = None
    trace_id: str | None = None
    tags: list[str] = []
    extra: dict[str, str] = {}
    headers: dict[str, str] = {}
    client_request_id: str | None = None
    route: str = "chat"  # the client dialect's (a line written before it had none: chat)
    # The lease drawn from. A leased line written before it had one has "": its
    # `reservation_id` is then the lease's, and its settle has no mark of its own.
    lease_id: str = ""


class LeaseUsed(msgspec.Struct, array_like=True, tag="L"):
    lease_id: str
    key_id: str
    period: str


_encoder = msgspec.json.Encoder()
_encode = _encoder.encode
_encode_lines = _encoder.encode_lines  # a list of lines in one call: `[...]\n[...]\n3\n`
_decode_line = msgspec.json.Decoder(Admitted | LeaseUsed | int).decode


class AdmissionJournal:
    """This worker's admission file: append on the request path, rotate, remove at close."""

    def __init__(self, directory: Path, lease_memory_s: float) -> None:
        self.directory = directory
        self.owner = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._lease_memory_s = lease_memory_s  # past this the sweeper has a lease anyway
        self.seqs: Iterator[int] = itertools.count(1)  # `next(journal.seqs)`: no frame
        self._files = itertools.count(1)
        self._open: dict[int, Admitted] = {}  # seq -> its admission, until recorded
        self._leases: dict[str, tuple[LeaseUsed, float]] = {}  # id -> (line, first seen)
        # This iteration's lines, encoded together when they are written (a done mark is
        # its seq: an int encodes as the line `seq`).
        self._pending: list[Admitted | LeaseUsed | int] = []
        self._drain_scheduled = False
        self._done: list[int] = []  # done marks, written after the ledger's lines
        self._done_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1
        self._path: Path | None = None
        self._size = 0
        self.errors = 0

    def stats(self) -> AdmissionStats:
        return AdmissionStats(write_errors=self.errors)

    # --- the request path ----------------------------------------------------------------

    def admitted(self, entry: Admitted) -> None:
        """Journal an admission (`entry.seq` from `next(journal.seqs)`), and the spend lease
        it drew from the first time one is drawn from."""
        if entry.lease_id and entry.lease_id not in self._leases:
            self.lease_used(entry.lease_id, entry.key_id, entry.period)
        alone = not self._open and not self._drain_scheduled and self._fd >= 0
        self._open[entry.seq] = entry
        if alone:  # nothing else in flight, so no batch to wait for: written now
            self._write(_encode(entry) + b"\n")
            return
        self._pending.append(entry)
        if not self._drain_scheduled:  # inline, not `_schedule()`: this runs per request
            self._drain_scheduled = True
            (self._loop or self._bind_loop()).call_soon(self._drain_admitted)

    def lease_used(self, lease_id: str, key_id: str, period: str) -> None:
        """A leased admission: the lease is journaled once, the first time it is drawn."""
        if lease_id in self._leases:
            return
        line = LeaseUsed(lease_id, key_id, period)
        self._leases[lease_id] = (line, time.monotonic())
        self._pending.append(line)
        if not self._drain_scheduled:
            self._schedule()

    def recorded(self, seq: int) -> None:
        """The request's record went to the ledger (`Ledger.enqueue`, just before): its done
        mark is written by a drain scheduled now, so after the ledger's own drain of this
        iteration, which `enqueue` scheduled first. Written earlier, a worker killed in
        between would leave a done mark and no record: recovery would skip the request."""
        if self._open.pop(seq, None) is None:
            return
        self._done.append(seq)
        if not self._done_scheduled:
            self._done_scheduled = True
            (self._loop or self._bind_loop()).call_soon(self.drain)

    def _schedule(self) -> None:
        self._drain_scheduled = True
        (self._loop or self._bind_loop()).call_soon(self._drain_admitted)

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def drain(self) -> None:
        """Write this iteration's lines, done marks included, in one system call."""
        self._done_scheduled = False
        if self._done:
            self._pending += self._done
            self._done.clear()
        self._drain_admitted()

    def _drain_admitted(self) -> None:
        """Write this iteration's admission (and lease) lines; done marks wait for `drain`."""
        self._drain_scheduled = False
        pending = self._pending
        if not pending:
            return
        if self._fd < 0:  # not open (an app never started) or closed: nothing to keep
            pending.clear()
            return
        data = _encode_lines(pending)
        pending.clear()
        self._write(data)

    def _write(self, data: bytes) -> None:
        """Append to the file (the lines in order: only when no drain is pending, or by it)."""
        try:
            written = os.write(self._fd, data)
            if written < len(data):  # rare (a full disk, a signal): write the rest
                _write_all(self._fd, data[written:])
        except OSError as e:
            self._failed(e)
            return
        self._size += len(data)
        if self._size >= ROTATE_BYTES:
            self.rotate()

    # --- the file --------------------------------------------------------------------------

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fd, self._path = self._create(b"")
        self._size = 0

    def rotate(self) -> None:
        """A new file with the admissions still open (and recent leases); the old one goes.
        Until the old one is unlinked both hold the same open admissions: recovery merges
        the files of one worker by sequence number, so nothing counts twice."""
        now = time.monotonic()
        self._leases = {k: v for k, v in self._leases.items()
                        if now - v[1] < self._lease_memory_s}
        data = _encode_lines([*(line for line, _ in self._leases.values()),
                              *self._open.values()])
        old_fd, old_path = self._fd, self._path
        try:
            self._fd, self._path = self._create(data)
        except OSError as e:
            self._failed(e)
            return
        self._size = len(data)
        if old_path is not None:
            _unlink(old_path)
        if old_fd >= 0:
            os.close(old_fd)

    def _create(self, data: bytes) -> tuple[int, Path]:
        """Locked before it has its name: a scan never sees it unlocked."""
        name = f"{PREFIX}{time.time_ns():020d}-{self.owner}-{next(self._files):06d}{SUFFIX}"
        tmp = self.directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if data:
                _write_all(fd, data)
            path = self.directory / name
            os.rename(tmp, path)
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            raise
        return fd, path

    def close(self) -> None:
        """SIGTERM path: every request recorded, the file goes; else it stays for recovery."""
        self.drain()
        if self._fd < 0:
            return
        if not self._open and self._path is not None:
            _unlink(self._path)
        elif self._open:
            log.warning("ledger: %d admitted request(s) without a record at close; %s keeps "
                        "them for the next start", len(self._open), self._path)
        os.close(self._fd)
        self._fd = -1

    def _failed(self, e: OSError) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % 1000 == 0:
            log.error("ledger: cannot write the admission journal in %s (%s): a worker killed "
                      "now would leave its requests to the sweeper", self.directory, e)


# --- the files of dead workers -------------------------------------------------------------


class Orphans:
    """The files of dead workers, locked by this process until `finish`, and what they hold
    that was never recorded."""

    def __init__(self, directory: Path, lock_fd: int) -> None:
        self.directory = directory
        self._lock_fd = lock_fd
        self._files: list[tuple[Path, int]] = []
        self._marks: dict[str, int] = {}  # owner -> fd of one of its files, for done marks
        self.admissions: list[tuple[str, Admitted]] = []  # (owner, admission), oldest first
        self.leases: list[LeaseUsed] = []
        self.bad_lines = 0

    def __len__(self) -> int:
        return len(self._files)

    @property
    def paths(self) -> list[Path]:
        return [path for path, _ in self._files]

    def _read(self) -> None:
        admitted: dict[tuple[str, int], Admitted] = {}
        done: set[tuple[str, int]] = set()
        leases: dict[str, LeaseUsed] = {}
        for path, fd in self._files:
            owner = _owner(path.name)
            self._marks[owner] = fd
            for line in _lines(path):
                try:
                    item = _decode_line(line)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    self.bad_lines += 1  # a write cut short: nothing to charge from it
                    continue
                if isinstance(item, int):
                    done.add((owner, item))
                elif isinstance(item, Admitted):
                    admitted.setdefault((owner, item.seq), item)
                else:
                    leases.setdefault(item.lease_id, item)
        self.admissions = [(k[0], a) for k, a in admitted.items() if k not in done]
        self.leases = list(leases.values())

    def recorded(self, owner: str, seq: int) -> None:
        """Settled and recorded: a recovery cut short must not charge it again."""
        fd = self._marks.get(owner)
        if fd is not None:
            _write_all(fd, b"%d\n" % seq)

    def finish(self) -> None:
        for path, fd in self._files:
            _unlink(path)
            os.close(fd)
        self._files.clear()
        self.release()

    def release(self) -> None:
        """Keep the files (an error): the next scan takes them again."""
        for _, fd in self._files:
            os.close(fd)
        self._files.clear()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def claim_orphans(directory: Path) -> Orphans | None:
    """Lock and read the admission files of dead workers; None when there are none, or when
    another worker is recovering them right now."""
    try:
        listed = os.listdir(directory)
    except FileNotFoundError:
        return None
    names = sorted(n for n in listed if n.startswith(PREFIX) and n.endswith(SUFFIX))
    for name in listed:
        if name.startswith("." + PREFIX) and name.endswith(".tmp"):
            _remove_unheld(directory / name)
    if not names:
        return None
    lock_fd = os.open(directory / _LOCK_NAME, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        return None
    orphans = Orphans(directory, lock_fd)
    for name in names:
        claimed = _claim(directory / name)
        if claimed is not None:
            orphans._files.append(claimed)
    if not orphans._files:
        orphans.release()
        return None
    orphans._read()
    return orphans


def _claim(path: Path) -> tuple[Path, int] | None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None  # a live worker's
    try:
        # Rotated away (unlinked) between our open and our lock: a ghost.
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            raise FileNotFoundError(path)
    except FileNotFoundError:
        os.close(fd)
        return None
    return path, fd


def _remove_unheld(path: Path) -> None:
    """A file a worker died creating (its open admissions are still in the file it was
    replacing): gone, unless a live worker is creating it right now."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _unlink(path)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)


def _owner(name: str) -> str:
    """`inflight-<time>-<pid>-<random>-<n>.jsonl` -> `<pid>-<random>`."""
    parts = name[len(PREFIX):-len(SUFFIX)].split("-")
    return "-".join(parts[1:-1])


def _lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield line


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
