"""An append-only journal with group commit: the durable half of the embedded store.

Why a journal (see docs/architecture.md, "the engine"): the first engine updated SQLite rows
(five writes with JSON per message) and capped the bridge at ~7.5 k accepts/s. Here every change
is one small binary record appended to a file; all records produced in one event-loop pass are
written with one ``write`` and made durable with one ``fdatasync`` (group commit), by a writer
thread so the loop never blocks on the disk. While one batch is being synced the next one
collects, so the busier the bridge, the larger the batches — the fsync cost per record falls as
load rises.

The journal knows nothing of messages: it stores opaque ``bytes`` records and calls back when
they are durable. Its owner (:class:`bridge.store.embedded.EmbeddedStore`) applies a change to its
in-memory state only in that callback, so memory never holds anything the disk does not.

On disk, in the data directory:

* ``journal-<n>.log`` — segments of framed records: ``<u32 length><u32 crc32><payload>``.
  A crash can leave a torn record at the end of the newest segment; replay stops there and the
  file is cut back to the last whole record. A failed write (disk full) is cut back the same way
  at once, so later records never sit behind garbage.
* ``snapshot-<n>.bin`` — the whole state as of the start of segment ``n`` (written by the owner
  in a background thread, then renamed into place); segments below ``n`` are then deleted. A
  restart loads the newest snapshot and replays the segments from ``n`` on, so restart time and
  disk use stay bounded by the snapshot interval, not by the bridge's age.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["Journal", "JournalClosed", "Waiter", "read_records"]

_HEADER = struct.Struct("<II")
_SEGMENT = re.compile(r"^journal-(\d{8})\.log$")
_SNAPSHOT = re.compile(r"^snapshot-(\d{8})\.bin$")
_STOP = object()

#: Called on the event loop once a record is durable (``None``) or could not be written (the
#: exception). ``arg`` is the value given to :meth:`Journal.append` with it.
Waiter = Callable[[Any, BaseException | None], None]


class JournalClosed(RuntimeError):
    """Raised for appends after :meth:`Journal.close` or after the writer thread died."""


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read_records(path: Path) -> tuple[list[bytes], int]:
    """The whole records of a segment, and the offset just past the last one (where a torn or
    corrupt tail, if any, begins)."""
    data = path.read_bytes()
    records: list[bytes] = []
    offset, end = 0, len(data)
    size = _HEADER.size
    while offset + size <= end:
        length, crc = _HEADER.unpack_from(data, offset)
        start = offset + size
        stop = start + length
        if stop > end:
            break
        payload = data[start:stop]
        if zlib.crc32(payload) != crc:
            break
        records.append(payload)
        offset = stop
    return records, offset


def segment_name(n: int) -> str:
    return f"journal-{n:08d}.log"


def snapshot_name(n: int) -> str:
    return f"snapshot-{n:08d}.bin"


def list_files(directory: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    found = []
    for p in directory.iterdir():
        m = pattern.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def segments(directory: Path) -> list[tuple[int, Path]]:
    return list_files(directory, _SEGMENT)


def snapshots(directory: Path) -> list[tuple[int, Path]]:
    return list_files(directory, _SNAPSHOT)


class _Batch:
    __slots__ = ("data", "waiters")

    def __init__(self) -> None:
        self.data: list[bytes] = []
        # (waiter, arg) pairs, called in append order once the batch is durable
        self.waiters: list[tuple[Waiter, Any]] = []


class Journal:
    """Appends framed records to the current segment; one write + fdatasync per batch.

    Use from one event loop. :meth:`append` never blocks and never awaits: the record joins
    the batch of the current loop pass, and ``waiter(arg, None)`` runs on the loop once the
    batch is on disk (``waiter(arg, exc)`` if it could not be written). Waiters run in append
    order, batch after batch, so the owner's state follows the file's order exactly.

    Counters for metrics and tests: ``batches``, ``records``, ``largest_batch``, ``bytes``.
    """

    def __init__(
        self,
        directory: Path,
        segment: int,
        *,
        fsync: bool = True,
        on_batch: Callable[[int, float], None] | None = None,
        on_boundary: Callable[[], None] | None = None,
    ) -> None:
        self.directory = directory
        self.segment = segment
        self.fsync = fsync
        self.on_batch = on_batch
        # Called after each batch's waiters, before the next batch is handed over: the one moment
        # when everything written is applied and nothing else is (see :meth:`rotate`).
        self.on_boundary = on_boundary
        self.batches = 0
        self.records = 0
        self.largest_batch = 0
        self.bytes = 0
        self._fd = -1
        self._offset = 0  # end of the last durable record in the current segment
        self._loop: asyncio.AbstractEventLoop | None = None
        self._current = _Batch()  # collecting in this loop pass
        self._kick_scheduled = False
        self._in_flight: _Batch | None = None  # handed to the writer thread
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._open = False

    # ------------------------------------------------------------------ lifecycle

    def open(self, offset: int) -> None:
        """Start appending to segment ``self.segment`` at ``offset`` (whatever lies beyond it, a
        torn tail, is cut off)."""
        self._loop = asyncio.get_running_loop()
        self._open_segment(self.segment, offset)
        self._thread = threading.Thread(target=self._writer, name="journal-writer", daemon=True)
        self._thread.start()
        self._open = True

    def _open_segment(self, n: int, offset: int) -> None:
        path = self.directory / segment_name(n)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        if offset == 0:
            _fsync_dir(self.directory)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._offset, self.segment = fd, offset, n

    async def close(self) -> None:
        """Write what is queued, stop the writer thread, close the file."""
        if not self._open:
            return
        self._open = False
        await self.idle()
        self._queue.put(_STOP)
        assert self._thread is not None
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @property
    def size(self) -> int:
        """Bytes durable in the current segment."""
        return self._offset

    @property
    def busy(self) -> bool:
        return self._in_flight is not None or bool(self._current.data)

    async def idle(self) -> None:
        """Wait until everything appended so far is durable (or failed)."""
        while self.busy:
            fut = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(fut)
            await fut

    def rotate(self) -> int:
        """Start a new segment; only at a batch boundary (from ``on_boundary``, or when idle):
        records still collecting go to the new segment. Returns the new segment's number."""
        assert self._in_flight is None
        self._open_segment(self.segment + 1, 0)
        return self.segment

    # ------------------------------------------------------------------ appending

    def append(self, record: bytes, waiter: Waiter | None = None, arg: Any = None) -> None:
        if not self._open:
            raise JournalClosed(
                f"the journal is closed{f': {self._failure!r}' if self._failure else ''}"
            )
        batch = self._current
        batch.data.append(frame(record))
        if waiter is not None:
            batch.waiters.append((waiter, arg))
        if not self._kick_scheduled and self._in_flight is None:
            self._kick_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._kick)

    def _kick(self) -> None:
        """End of a loop pass: hand the collected batch to the writer if it is idle."""
        self._kick_scheduled = False
        if self._in_flight is not None or not self._current.data:
            return
        batch, self._current = self._current, _Batch()
        self._in_flight = batch
        self._queue.put(batch)

    def _writer(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch: _Batch = item
            started = time.perf_counter()
            error: BaseException | None = None
            data = b"".join(batch.data)
            try:
                written = 0
                view = memoryview(data)
                while written < len(data):
                    written += os.write(self._fd, view[written:])
                if self.fsync:
                    os.fdatasync(self._fd)
            except BaseException as exc:  # disk full, I/O error: nothing of the batch counts
                error = exc
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._offset)
                    os.lseek(self._fd, self._offset, os.SEEK_SET)
            else:
                self._offset += len(data)
            elapsed = time.perf_counter() - started
            try:
                loop.call_soon_threadsafe(self._done, batch, error, len(data), elapsed)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return

    def _done(self, batch: _Batch, error: BaseException | None, size: int, elapsed: float) -> None:
        self._in_flight = None
        n = len(batch.data)
        if error is None:
            self.batches += 1
            self.records += n
            self.bytes += size
            self.largest_batch = max(self.largest_batch, n)
            if self.on_batch is not None:
                self.on_batch(n, elapsed)
        for waiter, arg in batch.waiters:
            waiter(arg, error)
        if self.on_boundary is not None and error is None:
            self.on_boundary()
        if self._current.data:
            self._kick()
        elif self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)


def _fsync_dir(directory: Path) -> None:
    """Make a new or renamed file's directory entry durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    _fsync_dir(directory)


def iter_segment_records(directory: Path, first: int) -> Iterator[tuple[int, list[bytes], int]]:
    """(segment number, its whole records, offset past the last one) for segments ≥ ``first``."""
    for n, path in segments(directory):
        if n >= first:
            records, offset = read_records(path)
            yield n, records, offset
