"""A write-ahead log on local disk: what a producer holds until it is safe elsewhere.

An ingress replica appends every accepted write here and answers 202 only once the record is
fsynced; the record leaves the log once the lake holds its `event_id` (a *durable* entry).
A record the broker could not take (a reco-log record, a dead letter replayed, the CLI's
events) is kept only until the broker acknowledges it (a *spool* entry): the log is also the
producer's spool, one mechanism for both.

On disk: segment files `seg-<ns>-<rand>.wal` in one folder per owner (`claim`), each a run
of records `<length u32><crc32 u32><payload>`; the payload is a JSON line of metadata
(topic, key, event id, time) followed by the value's bytes. A record is durable once an
fsync that started after it was written returns; concurrent appenders share one fsync
(group commit: a syncer thread fsyncs everything written so far, and whoever arrived while
it ran waits for the next round). A crash mid-write leaves a torn last record: reading
stops at the first record whose length or checksum does not hold (it was never fsynced,
so never acknowledged). The log is bounded (`max_bytes`): an append past it is refused
(`WalFull`, 503 at the API) rather than accepted and lost. A sealed segment whose records
are all done is deleted.

Each folder's owner holds an `flock` on its `.lock` for its whole life; a sibling folder
whose lock is free belongs to a process that is gone (a killed replica), and `adopt` moves
its segments in here, where their records are sent again unless the lake already holds
them. No Kafka and no lake in here: `backend.data.kafka.EventProducer` drives it.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from backend.core.errors import RecoError

log = logging.getLogger(__name__)
HEADER = struct.Struct("<II")  # payload length, CRC-32 of the payload
MAX_RECORD = 16 << 20  # a length above this is a torn or corrupt header, not a record
LOCK = ".lock"
SUFFIX = ".wal"


class WalFull(RecoError):
    """The log cannot take the write (at its size bound: the lake is behind, or the broker
    away for long; or its disk failed): refused, not lost. Retry after `Retry-After`."""

    status_code = 503

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "5"})


class WalBusy(RecoError):
    """Another live process owns this log's folder."""


class State(Enum):
    UNSENT = 0  # to be sent (again)
    INFLIGHT = 1  # handed to the broker client, no outcome yet
    SENT = 2  # acknowledged by the broker; a durable entry waits for the lake


@dataclass(eq=False, slots=True)
class Segment:
    path: Path
    size: int = 0
    live: int = 0  # entries not done yet


@dataclass(eq=False, slots=True)
class Entry:
    """A record in the log that is not done yet (the value stays on disk: `read`)."""

    seq: int
    segment: Segment
    offset: int  # of the record's header in the segment file
    size: int  # header and payload
    topic: str
    event_id: str | None  # None: a spool entry, done once the broker acknowledged it
    at: float  # wall-clock time of the append (of the first append, for an adopted one)
    state: State = State.UNSENT
    due: float = 0.0  # monotonic: an acknowledged durable entry not landed by then is resent
    tries: int = 0
    acked_by: str | None = None  # which broker (cluster) acknowledged it, if one did

    @property
    def durable(self) -> bool:
        return self.event_id is not None


@dataclass(frozen=True)
class Record:
    topic: str
    key: bytes | None
    value: bytes
    event_id: str | None
    at: float


def encode(topic: str, key: bytes | None, value: bytes, event_id: str | None,
           at: float) -> bytes:
    meta = json.dumps({"t": topic, "k": None if key is None else key.decode(),
                       "id": event_id, "ms": int(at * 1000)}, separators=(",", ":")).encode()
    payload = meta + b"\n" + value
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def decode(payload: bytes) -> Record:
    meta, _, value = payload.partition(b"\n")
    m = json.loads(meta)
    key = m["k"].encode() if m["k"] is not None else None
    return Record(m["t"], key, value, m["id"], m["ms"] / 1000)


def scan(data: bytes) -> Iterator[tuple[int, int, Record]]:
    """(offset, size, record) of each whole record in a segment's bytes, in order; stops at
    the first torn or corrupt one (logged when bytes are left over)."""
    pos = 0
    while pos + HEADER.size <= len(data):
        length, crc = HEADER.unpack_from(data, pos)
        end = pos + HEADER.size + length
        if length == 0 or length > MAX_RECORD or end > len(data):
            break
        payload = data[pos + HEADER.size:end]
        if zlib.crc32(payload) != crc:
            break
        try:
            record = decode(payload)
        except (ValueError, KeyError, UnicodeDecodeError):
            break
        yield pos, end - pos, record
        pos = end
    if pos < len(data):
        log.warning("write-ahead log record torn or corrupt, rest ignored bytes=%d",
                    len(data) - pos)


def read_segment(path: Path) -> list[Record]:
    """Every whole record of a segment file (for inspection; the log reads its own)."""
    return [r for _, _, r in scan(Path(path).read_bytes())]


@dataclass(eq=False)
class _Waiter:
    seq: int
    done: Callable[[BaseException | None], None]


@dataclass
class _Sync:
    """The syncer's shared state (guarded by the log's condition)."""

    written: int = 0  # seq of the last record written to a file
    synced: int = 0  # seq up to which everything is fsynced
    waiters: list[_Waiter] = field(default_factory=list)
    kicked: bool = False
    retired: list[int] = field(default_factory=list)  # fds of rolled segments, to close
    dir_dirty: bool = False  # a segment was created or moved in: fsync the folder
    failed: OSError | None = None  # an fsync failed: nothing written after is trusted


class WriteAheadLog:
    """One owner's log in `root` (see the module docstring). Thread-safe."""

    def __init__(self, root: Path, max_bytes: int = 64 << 20, segment_bytes: int = 4 << 20,
                 resend_seconds: float = 300.0, adopting: bool = False) -> None:
        """`resend_seconds`: an acknowledged durable entry the lake does not hold this long
        after is sent again, then after twice as long, up to an hour (the end-to-end
        retry behind any loss the producer cannot see); `adopting`: the parent folder
        holds only logs, whose orphans `adopt` takes over."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.segment_bytes = max_bytes, segment_bytes
        self.resend_seconds = resend_seconds
        self.adopting = adopting
        lock_fd = _lock(self.root)
        if lock_fd is None:
            raise WalBusy(f"{self.root}: owned by a live process")
        self._lock_fd: int = lock_fd
        os.write(lock_fd, f"{os.getpid()}\n".encode())
        self._cond = threading.Condition()
        self._sync = _Sync()
        self._seq = 0
        self._entries: dict[int, Entry] = {}  # by seq: insertion order is log order
        self._by_id: dict[tuple[str, str], list[Entry]] = {}
        self._segments: list[Segment] = []
        self._active: Segment | None = None
        self._fd: int | None = None
        self._bytes = 0
        self._unsent = 0
        self._durable = 0
        self._closed = False
        self._dir_fd = os.open(self.root, os.O_RDONLY)
        for path in sorted(self.root.glob(f"*{SUFFIX}")):  # left by an earlier owner
            self._load(path)
        self._syncer = threading.Thread(target=self._sync_loop, name="wal-syncer", daemon=True)
        self._syncer.start()

    @classmethod
    def claim(cls, parent: Path, name: str, max_bytes: int = 64 << 20,
              segment_bytes: int = 4 << 20, resend_seconds: float = 300.0) -> WriteAheadLog:
        """The log `parent/name` for one process among several (replicas of a deployment,
        CLI runs), its lock held for the life of the process; the logs of gone owners
        among its siblings are adopted at once and by every later `adopt`."""
        wal = cls(Path(parent) / name, max_bytes, segment_bytes, resend_seconds, adopting=True)
        wal.adopt()
        return wal

    # -- figures ---------------------------------------------------------------------------

    @property
    def unsent(self) -> int:
        """Entries waiting to be sent (the broker away, or lost what it had)."""
        return self._unsent

    @property
    def pending(self) -> int:
        """Entries not done: durable ones not yet in the lake, spool ones not yet sent."""
        return len(self._entries)

    @property
    def durable_pending(self) -> int:
        return self._durable

    @property
    def size(self) -> int:
        """Bytes of the segment files held."""
        return self._bytes

    # -- appending -------------------------------------------------------------------------

    def append(self, topic: str, key: bytes | None, value: bytes,
               event_id: str | None = None, state: State = State.UNSENT) -> Entry:
        """Write a record and start its fsync (durable once `sync`/`durable` return). Raises
        WalFull at the bound."""
        at = time.time()
        record = encode(topic, key, value, event_id, at)
        with self._cond:
            if self._closed:
                raise WalFull(f"write-ahead log {self.root.name} is closed")
            if self._sync.failed is not None:
                raise WalFull(f"write-ahead log {self.root.name} failed: {self._sync.failed}")
            if self._bytes + len(record) > self.max_bytes:
                raise WalFull(f"write-ahead log full ({self._bytes} of {self.max_bytes} bytes "
                              "not yet in the lake): retry later")
            if self._active is None or (self._active.size
                                        and self._active.size + len(record) > self.segment_bytes):
                self._roll()
            assert self._active is not None and self._fd is not None
            seg, offset = self._active, self._active.size
            _write_all(self._fd, record)
            seg.size += len(record)
            self._bytes += len(record)
            self._seq += 1
            entry = Entry(self._seq, seg, offset, len(record), topic, event_id, at, state)
            self._track(entry)
            self._sync.written = self._seq
            self._sync.kicked = True  # the fsync starts now, while the caller goes on
            self._cond.notify_all()
            return entry

    def _roll(self) -> None:
        """A new active segment (the old one is sealed; the syncer fsyncs and closes it)."""
        if self._fd is not None:
            self._sync.retired.append(self._fd)
        old = self._active
        path = self.root / f"seg-{time.time_ns():020d}-{uuid.uuid4().hex[:6]}{SUFFIX}"
        self._fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_APPEND, 0o600)
        self._active = Segment(path)
        self._segments.append(self._active)
        self._sync.dir_dirty = True
        if old is not None and old.live == 0:
            self._delete(old)

    def _track(self, entry: Entry) -> None:
        self._entries[entry.seq] = entry
        entry.segment.live += 1
        if entry.state is State.UNSENT:
            self._unsent += 1
        if entry.event_id is not None:
            self._durable += 1
            self._by_id.setdefault((entry.topic, entry.event_id), []).append(entry)

    # -- durability (group commit) ---------------------------------------------------------

    def sync(self, seq: int | None = None, timeout: float | None = None) -> None:
        """Block until every record up to `seq` (default: all written) is on disk."""
        done = threading.Event()
        error: list[BaseException | None] = [None]

        def finish(exc: BaseException | None) -> None:
            error[0] = exc
            done.set()

        if self._wait(self._sync.written if seq is None else seq, finish):
            if not done.wait(timeout):
                raise TimeoutError("write-ahead log sync timed out")
        if error[0] is not None:
            raise error[0]

    async def durable(self, seq: int) -> None:
        """Return once record `seq` is on disk: one fsync serves every record written
        before it started, whoever waits for them."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def finish(exc: BaseException | None) -> None:
            loop.call_soon_threadsafe(_settle, fut, exc)

        if self._wait(seq, finish):
            await fut

    def flush_soon(self) -> None:
        """Have the syncer fsync what was written, without waiting for it."""
        with self._cond:
            self._sync.kicked = True
            self._cond.notify_all()

    def _wait(self, seq: int, done: Callable[[BaseException | None], None]) -> bool:
        """Register a waiter for `seq`; False (and `done` not called) if it is durable."""
        with self._cond:
            if self._sync.failed is not None:
                raise WalFull(f"write-ahead log {self.root.name} failed: {self._sync.failed}")
            if seq <= self._sync.synced:
                return False
            self._sync.waiters.append(_Waiter(seq, done))
            self._cond.notify_all()
            return True

    def _sync_loop(self) -> None:
        s = self._sync
        while True:
            with self._cond:
                while not (s.waiters or s.kicked or self._closed):
                    self._cond.wait()
                if self._closed and not s.waiters and not s.kicked:
                    return
                s.kicked = False
                target = s.written
                fds = [*s.retired, *([self._fd] if self._fd is not None else [])]
                retired, s.retired = s.retired, []
                dirty, s.dir_dirty = s.dir_dirty, False
            error: OSError | None = None
            try:
                for fd in fds:
                    os.fdatasync(fd)
                if dirty:
                    os.fsync(self._dir_fd)
            except OSError as exc:
                error = exc
                log.error("write-ahead log fsync failed folder=%s error=%s", self.root, exc)
            for fd in retired:
                os.close(fd)
            with self._cond:
                if error is None:
                    s.synced = max(s.synced, target)
                else:
                    s.failed = error
                ready = [w for w in s.waiters if w.seq <= s.synced or error is not None]
                s.waiters = [w for w in s.waiters if w not in ready]
            for w in ready:
                w.done(None if error is None else WalFull(
                    f"write-ahead log {self.root.name} failed: {error}"))

    # -- outcomes --------------------------------------------------------------------------

    def landed(self, ids: Iterable[tuple[str, str]]) -> int:
        """(topic, event_id) pairs the lake holds: their durable entries are done. Returns
        how many entries left the log."""
        n = 0
        with self._cond:
            for key in ids:
                for entry in self._by_id.pop(key, ()):
                    self._done(entry)
                    n += 1
        return n

    def mark(self, entries: Iterable[Entry], state: State, acked_by: str | None = None) -> None:
        """Entries' new state (spool entries are done once SENT; durable ones then wait for
        the lake, and are resent if it does not hold them `resend_seconds` later).
        `acked_by`: the broker (cluster id) that acknowledged them."""
        with self._cond:
            for e in entries:
                if e.seq not in self._entries:
                    continue  # done meanwhile (landed)
                if state is State.SENT and e.event_id is None:
                    self._done(e)
                    continue
                self._set(e, state)
                if state is State.SENT:
                    e.acked_by = acked_by
                    e.due = time.monotonic() + min(3600.0, self.resend_seconds * 2 ** e.tries)

    def _set(self, e: Entry, state: State) -> None:
        self._unsent += (state is State.UNSENT) - (e.state is State.UNSENT)
        e.state = state

    def unsend(self, durable_only: bool = False, states: tuple[State, ...] = (
            State.INFLIGHT, State.SENT)) -> int:
        """Every entry in `states` to be sent again (the broker that had them is gone, or the
        client that held them was closed); returns how many."""
        n = 0
        with self._cond:
            for e in self._entries.values():
                if e.state in states and (e.durable or not durable_only):
                    self._set(e, State.UNSENT)
                    n += 1
        return n

    def unsend_unless(self, acked_by: str, inflight: bool = True) -> int:
        """Durable entries another broker acknowledged (or, with `inflight`, that are in
        flight) to be sent again: the broker now answering is `acked_by`, and a broker that
        was replaced lost what it held. Returns how many."""
        n = 0
        with self._cond:
            for e in self._entries.values():
                if e.event_id is None:
                    continue
                if (e.state is State.SENT and e.acked_by != acked_by) or (
                        inflight and e.state is State.INFLIGHT):
                    self._set(e, State.UNSENT)
                    n += 1
        return n

    def expire(self) -> int:
        """Acknowledged durable entries past their due time: to be sent again (the lake
        does not hold them; something lost them on the way), the next wait twice as long."""
        now, n = time.monotonic(), 0
        with self._cond:
            for e in self._entries.values():
                if e.state is State.SENT and e.due <= now:
                    e.tries += 1
                    self._set(e, State.UNSENT)
                    n += 1
        return n

    def take_unsent(self, limit: int = 1000) -> list[Entry]:
        """Up to `limit` unsent entries, oldest first, now INFLIGHT."""
        out: list[Entry] = []
        with self._cond:
            if not self._unsent:
                return out
            for e in self._entries.values():
                if e.state is State.UNSENT:
                    self._set(e, State.INFLIGHT)
                    out.append(e)
                    if len(out) >= limit:
                        break
        return out

    def waiting(self) -> tuple[dict[str, set[str]], float | None]:
        """The event ids of durable entries not yet landed, by topic, and the oldest one's
        append time."""
        wanted: dict[str, set[str]] = {}
        oldest: float | None = None
        with self._cond:
            for topic, event_id in self._by_id:
                wanted.setdefault(topic, set()).add(event_id)
            for e in self._entries.values():
                if e.event_id is not None:
                    oldest = e.at if oldest is None else min(oldest, e.at)
        return wanted, oldest

    def _done(self, entry: Entry) -> None:
        if self._entries.pop(entry.seq, None) is None:
            return
        if entry.state is State.UNSENT:
            self._unsent -= 1
        if entry.event_id is not None:
            self._durable -= 1
            same = self._by_id.get((entry.topic, entry.event_id))
            if same is not None:
                same[:] = [e for e in same if e is not entry]
                if not same:
                    del self._by_id[(entry.topic, entry.event_id)]
        seg = entry.segment
        seg.live -= 1
        if seg.live == 0 and seg is not self._active:
            self._delete(seg)

    def _delete(self, seg: Segment) -> None:
        seg.path.unlink(missing_ok=True)
        self._bytes -= seg.size
        self._segments.remove(seg)

    # -- reading ---------------------------------------------------------------------------

    def read(self, entries: list[Entry]) -> list[Record]:
        """The records of `entries`, in order (each segment file opened once)."""
        out: list[Record] = []
        handles: dict[Path, int] = {}
        try:
            for e in entries:
                fd = handles.get(e.segment.path)
                if fd is None:
                    fd = handles[e.segment.path] = os.open(e.segment.path, os.O_RDONLY)
                data = os.pread(fd, e.size, e.offset)
                out.append(decode(data[HEADER.size:]))
        finally:
            for fd in handles.values():
                os.close(fd)
        return out

    # -- orphans ---------------------------------------------------------------------------

    def adopt(self) -> int:
        """Take over the segments of sibling logs whose owner is gone (their lock is free):
        moved in here, their records to be sent again. Returns the records adopted."""
        if not self.adopting:
            return 0
        n = 0
        for other in sorted(self.root.parent.iterdir()):
            if other == self.root or not (other / LOCK).exists():
                continue
            fd = _lock(other)
            if fd is None:  # its owner is alive
                continue
            try:
                files = sorted(other.glob(f"*{SUFFIX}"))
                for f in files:
                    target = self.root / f.name
                    os.replace(f, target)
                    with self._cond:
                        self._sync.dir_dirty = True
                    n += self._load(target)
                (other / LOCK).unlink(missing_ok=True)
            finally:
                os.close(fd)
            try:
                other.rmdir()
            except OSError:  # something else in there: leave it
                pass
            log.warning("adopted the write-ahead log of a gone owner from=%s segments=%d "
                        "records=%d", other.name, len(files), n)
        if n:
            self.flush_soon()  # the moves themselves, durable in this folder
        return n

    def _load(self, path: Path) -> int:
        """Index a sealed segment's records (all unsent); a segment of none is deleted."""
        data = path.read_bytes()
        seg = Segment(path, size=len(data))
        with self._cond:
            self._segments.append(seg)
            self._bytes += seg.size
            for offset, size, r in scan(data):
                self._seq += 1
                self._track(Entry(self._seq, seg, offset, size, r.topic, r.event_id, r.at))
            n = seg.live
            if n == 0:
                self._delete(seg)
        return n

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Fsync what was written and release the folder (its records stay for the next
        owner, or an adopter)."""
        with self._cond:
            if self._closed:
                return
            self._sync.kicked = True
            self._closed = True
            self._cond.notify_all()
        self._syncer.join(timeout=30)
        with self._cond:
            for fd in [*self._sync.retired, *([self._fd] if self._fd is not None else [])]:
                os.close(fd)
            self._sync.retired, self._fd = [], None
            if self._active is not None and self._active.live == 0:
                self._delete(self._active)
            self._active = None
        os.close(self._dir_fd)
        os.close(self._lock_fd)


def _lock(folder: Path) -> int | None:
    """An exclusive flock on the folder's lock file (its fd), or None if a live process
    holds it. The fd is not inherited by children, so only the owner's death frees it."""
    fd = os.open(folder / LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _settle(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)
