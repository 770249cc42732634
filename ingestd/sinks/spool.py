"""A per-sink, append-only, crash-safe disk queue of batches: what a sink could not take, in order.

Layout, under `<state_dir>/spool/<sink name>/<instance>/` (see `spool_dir_for`; the instance level
keeps the shards of one feed, which share a state dir and a sink name, out of each other's files):

    lock                    flock(2)ed while a process owns the spool: two owners would corrupt it
    cursor                  where replay stands: (segment id, offset) + CRC32; replaced atomically
    0000000000000007.seg    segments, replayed in id order; only the last one is appended to
    0000000000000008.seg

An entry is a 16-byte header and a payload:

    magic u32 | payload length u32 | records u32 | CRC32 u32     (little-endian)

The CRC covers the length, the record count and the payload, so a header torn by `kill -9` or a
page the disk never wrote (zeros after a power loss) fails the check instead of being decoded. On
`open`, the last segment is scanned and cut back to its last whole entry; every read checks the CRC
again, and a bad entry further in (a disk that lost data) is reported, counted, and the rest of its
segment set aside as `*.corrupt`, never replayed as garbage.

The payload is msgspec msgpack of the batch as runs of one kind, `[[KIND, [record, ...]], ...]`, in
batch order. Records are encoded as maps (field names included): a decoder looks the KIND up in
`ingestd.model.RECORD_TYPES` when it reads, so a record kind added there round-trips with no change
here, and a spool written before a field with a default was added still decodes after an upgrade.

Durability (the fsync policy):
- `append` writes the entry and `fdatasync`s the segment before returning (and fsyncs the directory
  when it creates a segment). An appended entry therefore survives `kill -9` *and* power loss. That
  costs one flush per entry; entries are whole batches (thousands of records), so it is a few
  flushes per second under load. Without it, a power loss could keep a later entry and lose an
  earlier one, and a replayed Checkpoint could then skip trades that were never stored.
- `commit` rewrites `cursor` (write + rename, no fsync) and deletes a segment once it is consumed.
  A crash can lose the latest cursor: the next start then replays a few committed entries again,
  which is harmless because sink writes are idempotent (`ingestd.sinks.base`) and checkpoints only
  move forward.
- With `fsync=False` (tests, benchmarks) entries survive `kill -9` (the page cache has them) but
  not a power loss.

Size: `bytes` is what the segment files take on disk, and `append` keeps it at or below
`max_bytes` (one entry bigger than the whole budget is let into an empty spool only, so it cannot
wedge). Space comes back when a consumed segment is deleted; segments are `max_bytes / 8` (64 KiB to
64 MiB) so that happens in steps of an eighth of the budget. When an entry does not fit:
- "block": `append` refuses (returns False) and writes nothing; the caller waits for `commit` to
  make room and holds the batch meanwhile (the pipeline's backpressure).
- "drop_oldest": the oldest segment is discarded, whole, until the entry fits; the lost records are
  counted (`spool.<sink>.dropped_records`) and logged. That data is gone from this sink for good,
  and the checkpoints replayed after it will not bring it back: the price of never blocking.
Gauges `spool.<sink>.bytes` and `spool.<sink>.fill_ratio`; crossing 80 % logs one warning (again
only after it has been below 80 %).

All methods block on file I/O: call them from a worker thread (the pipeline uses `trio.to_thread`
with a limiter of one). A lock makes them safe to call from different threads anyway.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import operator
import os
import re
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Sequence

import msgspec

from ingestd.model import RECORD_TYPES, Record
from ingestd.stats import StatsRegistry

logger = logging.getLogger("ingestd.spool")

WHEN_FULL = ("block", "drop_oldest")
ALERT_RATIO = 0.8

_HEADER = struct.Struct("<IIII")  # magic, payload length, records, crc32
_CRC_PREFIX = struct.Struct("<II")  # payload length, records: covered by the CRC
_MAGIC = 0x4C505331  # b"1SPL" on disk
_CURSOR = struct.Struct("<QQI")  # segment id, offset, crc32 of the first 16 bytes
_SEGMENT_RE = re.compile(r"^(\d{16})\.seg$")

_encode = msgspec.msgpack.Encoder().encode
_decode_runs = msgspec.msgpack.Decoder(list[tuple[str, msgspec.Raw]]).decode
_kind_of = operator.attrgetter("KIND")


class SpoolError(Exception):
    """The spool cannot be used (another process owns it, an unknown record kind, a disk error)."""


def spool_dir_for(state_dir: str | Path, sink_name: str, instance: str) -> Path:
    """`<state_dir>/spool/<sink name>/<instance>`, each name made safe as one path component."""
    return Path(state_dir) / "spool" / _path_component(sink_name) / _path_component(instance)


def _path_component(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", lambda m: "%{:02X}".format(ord(m.group())), name)
    return safe if safe not in ("", ".", "..") else safe.replace(".", "%2E") or "%00"


# --- encoding ----------------------------------------------------------------------------------


def encode_batch(batch: Sequence[Record]) -> bytes:
    """The payload: runs of consecutive records of one KIND, in batch order."""
    return _encode([(kind, list(run)) for kind, run in itertools.groupby(batch, _kind_of)])


_decoders: dict[type, msgspec.msgpack.Decoder] = {}


def _decoder(kind: str) -> msgspec.msgpack.Decoder:
    cls = RECORD_TYPES.get(kind)  # looked up at every read: a kind added to the model just works
    if cls is None:
        raise SpoolError(f"spooled record kind {kind!r} is unknown to this ingestd (written by a newer one?)")
    dec = _decoders.get(cls)
    if dec is None:
        dec = _decoders[cls] = msgspec.msgpack.Decoder(list[cls])  # type: ignore[valid-type]
    return dec


def decode_batch(payload: bytes, kinds: Collection[str] | None = None) -> list[Record]:
    """Records of a payload, in order; with `kinds`, only runs of those kinds are decoded."""
    out: list[Record] = []
    for kind, raw in _decode_runs(payload):
        if kinds is None or kind in kinds:
            out.extend(_decoder(kind).decode(raw))
    return out


# --- the spool ---------------------------------------------------------------------------------


@dataclass
class _Segment:
    seg_id: int
    path: Path
    size: int


class Spool:
    """Append-only FIFO of batches on disk: `append`, `peek` the oldest, `commit` it once stored."""

    def __init__(
        self,
        directory: str | Path,
        *,
        name: str,
        max_bytes: int,
        when_full: str = "block",
        stats: StatsRegistry | None = None,
        segment_bytes: int | None = None,
        fsync: bool = True,
    ) -> None:
        if when_full not in WHEN_FULL:
            raise ValueError(f"when_full must be one of {WHEN_FULL}, not {when_full!r}")
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.directory = Path(directory)
        self.name = name
        self.max_bytes = max_bytes
        self.when_full = when_full
        self.segment_bytes = segment_bytes or min(64 << 20, max(64 << 10, max_bytes // 8))
        self.fsync = fsync
        self._stats = stats
        self._lock = threading.RLock()
        self._segments: list[_Segment] = []  # oldest first; the last one is appended to
        self._read_offset = 0  # in _segments[0]
        self._tail_fd: int | None = None
        self._read_fds: dict[int, int] = {}  # seg_id -> fd
        self._next_id = 1
        self._bytes = 0  # sum of segment sizes
        self._peeked: tuple[int, int, int, list[Record]] | None = None  # seg_id, offset, entry size, batch
        self._lock_fd: int | None = None
        self._alerting = False
        self._gauge_bytes = f"spool.{name}.bytes"
        self._gauge_fill = f"spool.{name}.fill_ratio"
        self._dropped_records = f"spool.{name}.dropped_records"
        self._dropped_batches = f"spool.{name}.dropped_batches"
        self._corrupt_bytes = f"spool.{name}.corrupt_bytes"

    # --- state (cheap; fine to read from the trio thread) ---------------------------------------

    @property
    def bytes(self) -> int:
        """Bytes the segment files take on disk (a consumed part of the oldest one included)."""
        return self._bytes

    @property
    def fill_ratio(self) -> float:
        return self._bytes / self.max_bytes

    @property
    def is_empty(self) -> bool:
        return self._peeked is None and self._bytes - self._read_offset <= 0

    # --- lifecycle -----------------------------------------------------------------------------

    def open(self) -> None:
        """Take the lock, drop what the cursor says was consumed, cut a torn tail, get ready."""
        with self._lock:
            if self._lock_fd is not None:
                return
            self.directory.mkdir(parents=True, exist_ok=True)
            self._take_lock()
            try:
                self._load()
            except BaseException:
                self._close_fds()
                raise
        self._update_gauges()
        if not self.is_empty:
            logger.info(
                "spool %s: %d bytes in %d segments left from a previous run will be replayed first",
                self.name, self._bytes - self._read_offset, len(self._segments),
            )

    def close(self) -> None:
        with self._lock:
            if self._lock_fd is None:
                return
            self._close_fds()

    def _take_lock(self) -> None:
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise SpoolError(f"spool {self.directory} is in use by another process (pid {owner})") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _close_fds(self) -> None:
        for fd in [self._tail_fd, *self._read_fds.values()]:
            if fd is not None:
                os.close(fd)
        self._tail_fd = None
        self._read_fds.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _load(self) -> None:
        cursor_id, cursor_offset = self._read_cursor()
        found: list[_Segment] = []
        highest = cursor_id
        for entry in os.scandir(self.directory):
            m = _SEGMENT_RE.match(entry.name)
            if not m:
                continue
            seg_id = int(m.group(1))
            highest = max(highest, seg_id)
            if seg_id < cursor_id:  # consumed before a crash took the chance to delete it
                os.unlink(entry.path)
                continue
            found.append(_Segment(seg_id, Path(entry.path), entry.stat().st_size))
        found.sort(key=lambda s: s.seg_id)
        self._next_id = highest + 1
        if found:
            self._truncate_torn_tail(found[-1])
        # Empty segments other than the last hold nothing (a crash right after creating one).
        for seg in found[:-1]:
            if seg.size == 0:
                os.unlink(seg.path)
        found = [s for s in found[:-1] if s.size > 0] + found[-1:]
        self._segments = found
        self._bytes = sum(s.size for s in found)
        offset = 0
        if found and found[0].seg_id == cursor_id:
            offset = cursor_offset
            if offset > found[0].size:
                logger.error("spool %s: cursor beyond the end of segment %d; skipping it", self.name, cursor_id)
                offset = found[0].size
        self._read_offset = offset
        if found:
            tail = found[-1]
            self._tail_fd = os.open(tail.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._release_consumed()

    def _truncate_torn_tail(self, seg: _Segment) -> None:
        """Cut the last segment back to its last whole, CRC-valid entry (kill -9 mid-append)."""
        fd = os.open(seg.path, os.O_RDWR | os.O_CLOEXEC)
        try:
            offset = 0
            while offset < seg.size:
                size = self._valid_entry_size(fd, offset, seg.size)
                if size is None:
                    break
                offset += size
            if offset < seg.size:
                logger.warning(
                    "spool %s: %s ends in %d bytes of a torn write; truncated (they were never acknowledged)",
                    self.name, seg.path.name, seg.size - offset,
                )
                os.ftruncate(fd, offset)
                if self.fsync:
                    os.fsync(fd)
                seg.size = offset
        finally:
            os.close(fd)

    @staticmethod
    def _valid_entry_size(fd: int, offset: int, limit: int) -> int | None:
        header = os.pread(fd, _HEADER.size, offset)
        if len(header) < _HEADER.size:
            return None
        magic, length, records, crc = _HEADER.unpack(header)
        if magic != _MAGIC or offset + _HEADER.size + length > limit:
            return None
        payload = os.pread(fd, length, offset + _HEADER.size)
        if len(payload) != length or zlib.crc32(payload, zlib.crc32(_CRC_PREFIX.pack(length, records))) != crc:
            return None
        return _HEADER.size + length

    # --- append --------------------------------------------------------------------------------

    def append(self, batch: Sequence[Record]) -> bool:
        """Write the batch as one entry, durably (see the fsync policy). False: full under "block",
        nothing written. Raises SpoolError on a disk error (nothing half-written stays behind)."""
        if not batch:
            return True
        payload = encode_batch(batch)
        length = len(payload)
        header = _HEADER.pack(_MAGIC, length, len(batch), zlib.crc32(payload, zlib.crc32(_CRC_PREFIX.pack(length, len(batch)))))
        need = _HEADER.size + length
        with self._lock:
            self._ensure_open()
            if not self._make_room(need):
                return False
            tail = self._segments[-1] if self._segments else None
            if tail is None or (tail.size > 0 and tail.size + need > self.segment_bytes):
                tail = self._new_segment()
            assert self._tail_fd is not None
            try:
                _write_all(self._tail_fd, [header, payload])
                if self.fsync:
                    os.fdatasync(self._tail_fd)
            except OSError as exc:
                try:
                    os.ftruncate(self._tail_fd, tail.size)  # no torn entry in the middle of the log
                except OSError:
                    pass
                raise SpoolError(f"spool {self.name}: cannot append to {tail.path}: {exc}") from exc
            tail.size += need
            self._bytes += need
        self._update_gauges()
        return True

    def _make_room(self, need: int) -> bool:
        while self._bytes + need > self.max_bytes:
            if self._bytes - self._read_offset <= 0:  # nothing unconsumed on disk
                if self._segments:  # only consumed bytes left: start over
                    self._drop_head_segment(count=False)
                    continue
                logger.warning(
                    "spool %s: one batch of %d bytes is larger than spool_max_bytes (%d); spooling it anyway",
                    self.name, need, self.max_bytes,
                )
                return True
            if self.when_full == "block":
                return False
            self._drop_head_segment(count=True)
        return True

    def _drop_head_segment(self, *, count: bool) -> None:
        """Discard the oldest segment, whole (drop_oldest), except the entry being replayed: that one
        stays in memory until it is committed (so the loss is one contiguous stretch, all counted)."""
        head = self._segments[0]
        pinned = self._peeked if self._peeked is not None and self._peeked[0] == head.seg_id else None
        if len(self._segments) == 1:
            self._close_tail()  # the next append starts a new segment
        if count:
            start = self._read_offset + (pinned[2] if pinned else 0)
            batches, records = self._count_entries(head, start)
            if self._stats is not None:
                self._stats.incr(self._dropped_records, records)
                self._stats.incr(self._dropped_batches, batches)
            logger.warning(
                "spool %s: full (spool_when_full = drop_oldest): dropped the oldest %d records"
                " (%d batches, %d bytes); this sink will never get them",
                self.name, records, batches, head.size - start,
            )
        self._remove_head()
        if pinned:
            self._peeked = (-1, -1, pinned[2], pinned[3])  # commit() just forgets it

    def _count_entries(self, seg: _Segment, offset: int) -> tuple[int, int]:
        fd = self._read_fd(seg)
        batches = records = 0
        while offset < seg.size:
            header = os.pread(fd, _HEADER.size, offset)
            if len(header) < _HEADER.size:
                break
            magic, length, n, _ = _HEADER.unpack(header)
            if magic != _MAGIC:
                break
            batches += 1
            records += n
            offset += _HEADER.size + length
        return batches, records

    def _new_segment(self) -> _Segment:
        self._close_tail()
        seg = _Segment(self._next_id, self.directory / f"{self._next_id:016d}.seg", 0)
        self._next_id += 1
        self._tail_fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        if self.fsync:
            _fsync_dir(self.directory)  # the new file's name must survive a power loss too
        self._segments.append(seg)
        if len(self._segments) == 1:
            self._read_offset = 0
        return seg

    def _close_tail(self) -> None:
        if self._tail_fd is not None:
            os.close(self._tail_fd)
            self._tail_fd = None

    # --- replay --------------------------------------------------------------------------------

    def peek(self) -> list[Record] | None:
        """The oldest batch not yet committed (the same one until `commit`), or None when empty."""
        with self._lock:
            self._ensure_open()
            while True:
                if self._peeked is not None:
                    return self._peeked[3]
                if self.is_empty:
                    return None
                head = self._segments[0]
                offset = self._read_offset
                if offset >= head.size:
                    self._remove_head()
                    continue
                fd = self._read_fd(head)
                size = self._valid_entry_size(fd, offset, head.size)
                if size is None:
                    self._set_aside_rest(head, offset)
                    continue
                payload = os.pread(fd, size - _HEADER.size, offset + _HEADER.size)
                self._peeked = (head.seg_id, offset, size, decode_batch(payload))

    def commit(self) -> None:
        """Drop the batch `peek` returned: the sink has stored it. A no-op if it is gone already
        (drop_oldest discarded it meanwhile) or nothing was peeked."""
        with self._lock:
            peeked, self._peeked = self._peeked, None
            if peeked is None or not self._segments:
                return
            seg_id, offset, size, _ = peeked
            head = self._segments[0]
            if head.seg_id != seg_id or self._read_offset != offset:
                return
            self._read_offset = offset + size
            if self._read_offset >= head.size:
                self._remove_head()
            else:
                self._write_cursor(head.seg_id, self._read_offset)
        self._update_gauges()

    def scan(self, kinds: Collection[str] | None = None) -> list[Record]:
        """Every record not yet committed, oldest first (only `kinds`, if given). Reads the whole
        spool under the lock: meant for start-up (the resume points of a sink that is down)."""
        out: list[Record] = []
        with self._lock:
            self._ensure_open()
            offset = self._read_offset
            for seg in self._segments:
                fd = self._read_fd(seg)
                while offset < seg.size:
                    size = self._valid_entry_size(fd, offset, seg.size)
                    if size is None:
                        break  # peek sets it aside when replay gets there
                    out.extend(decode_batch(os.pread(fd, size - _HEADER.size, offset + _HEADER.size), kinds))
                    offset += size
                offset = 0
        return out

    def _set_aside_rest(self, seg: _Segment, offset: int) -> None:
        lost = seg.size - offset
        logger.error(
            "spool %s: entry at %s:%d fails its CRC (the disk lost data); setting aside the last %d bytes"
            " of that segment as %s.corrupt",
            self.name, seg.path.name, offset, lost, seg.path.name,
        )
        if self._stats is not None:
            self._stats.incr(self._corrupt_bytes, lost)
        if seg is self._segments[-1]:
            self._close_tail()
        fd = self._read_fds.pop(seg.seg_id, None)
        if fd is not None:
            os.close(fd)
        os.replace(seg.path, seg.path.with_name(seg.path.name + ".corrupt"))
        self._segments.pop(0)
        self._bytes -= seg.size
        self._read_offset = 0
        self._write_cursor(self._segments[0].seg_id if self._segments else self._next_id, 0)

    def _remove_head(self) -> None:
        head = self._segments.pop(0)
        if not self._segments:
            self._close_tail()
        if self._peeked is not None and self._peeked[0] == head.seg_id:
            self._peeked = None
        fd = self._read_fds.pop(head.seg_id, None)
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(head.path)
        except FileNotFoundError:
            pass
        self._bytes -= head.size
        self._read_offset = 0
        # Point past it; with no segment left, at the id the next one will get.
        self._write_cursor(self._segments[0].seg_id if self._segments else self._next_id, 0)

    def _release_consumed(self) -> None:
        while self._segments and self._read_offset >= self._segments[0].size and (
            len(self._segments) > 1 or self._segments[0].size > 0
        ):
            self._remove_head()

    def _read_fd(self, seg: _Segment) -> int:
        fd = self._read_fds.get(seg.seg_id)
        if fd is None:
            fd = self._read_fds[seg.seg_id] = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
        return fd

    # --- cursor --------------------------------------------------------------------------------

    def _read_cursor(self) -> tuple[int, int]:
        try:
            data = (self.directory / "cursor").read_bytes()
        except FileNotFoundError:
            return 0, 0
        if len(data) == _CURSOR.size:
            seg_id, offset, crc = _CURSOR.unpack(data)
            if zlib.crc32(data[:16]) == crc:
                return seg_id, offset
        logger.warning("spool %s: unreadable cursor; replaying from the oldest segment (duplicates are harmless)", self.name)
        return 0, 0

    def _write_cursor(self, seg_id: int, offset: int) -> None:
        body = struct.pack("<QQ", seg_id, offset)
        tmp = self.directory / "cursor.tmp"
        with open(tmp, "wb") as f:
            f.write(body + struct.pack("<I", zlib.crc32(body)))
        os.replace(tmp, self.directory / "cursor")

    # --- misc ----------------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._lock_fd is None:
            raise SpoolError(f"spool {self.name} is not open")

    def _update_gauges(self) -> None:
        ratio = self.fill_ratio
        if self._stats is not None:
            self._stats.set_gauge(self._gauge_bytes, self._bytes)
            self._stats.set_gauge(self._gauge_fill, ratio)
        if ratio >= ALERT_RATIO and not self._alerting:
            self._alerting = True
            logger.warning(
                "spool %s: %.0f%% full (%d of %d bytes; when full: %s)",
                self.name, ratio * 100, self._bytes, self.max_bytes, self.when_full,
            )
        elif ratio < ALERT_RATIO:
            self._alerting = False


def _write_all(fd: int, buffers: list[bytes]) -> None:
    total = sum(len(b) for b in buffers)
    written = os.writev(fd, buffers)
    if written < total:  # rare (signals, quotas): finish with plain writes
        rest = memoryview(b"".join(buffers))[written:]
        while rest:
            rest = rest[os.write(fd, rest):]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
