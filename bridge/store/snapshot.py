"""Loading and snapshots of the embedded store: the state read back at start-up (the newest
snapshot, then the journal after it) and written out beside the journal, so that a restart
replays one segment, not the bridge's whole life, and old segments can be deleted.

Apart from :mod:`bridge.store.embedded` because none of it runs per message: it runs at open,
and once per ``segment_bytes`` of journal, on a thread (only containers are copied on the loop;
docs/architecture.md, "the engine", has the pause it costs).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import structlog

from bridge.core.store import DeliveryItem, StoredPart
from bridge.store.common import StoreUnavailable, item_from_wire, item_to_wire
from bridge.store.journal import (
    Journal,
    fsync_dir,
    iter_segment_records,
    segments,
    snapshot_name,
    snapshots,
)
from bridge.store.memory import AccountQueue, MemoryState

__all__ = ["FORMAT_VERSION", "Snapshots"]

log = structlog.get_logger("bridge.store")

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode

FORMAT_VERSION = 1


class Snapshots(MemoryState):
    """Load at open; write a snapshot at a segment boundary (a base of
    :class:`~bridge.store.embedded.EmbeddedStore`, which sets these attributes)."""

    directory: Path
    fsync: bool
    _journal: Journal | None
    _snapshotting: bool
    _snapshot_thread: threading.Thread | None
    snapshots_written: int
    replayed_records: int

    def _load(self) -> tuple[int, int]:
        """(segment to append to, offset in it). Runs in a thread, before the bridge takes
        traffic. The cyclic garbage collector is paused meanwhile: loading makes millions of
        objects and none of them garbage, and each full collection would walk them all (it
        made a restart from a snapshot of 1.1 M messages take half as long again)."""
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._load_all()
        finally:
            if was_enabled:
                gc.enable()

    def _load_all(self) -> tuple[int, int]:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._reset()
        first = 0
        for n, path in reversed(snapshots(self.directory)):
            try:
                self._load_snapshot(_decode(path.read_bytes()))
                first = n
                break
            except (msgspec.DecodeError, KeyError, ValueError, TypeError, IndexError) as exc:
                log.warning("store.snapshot_unreadable", file=path.name, error=repr(exc))
                self._reset()
        last, offset = first, 0
        replayed = 0
        for n, records, end in iter_segment_records(self.directory, first):
            for raw in records:
                self._apply(_decode(raw))
            replayed += len(records)
            last, offset = n, end
        self.replayed_records = replayed
        return last, offset


    # ------------------------------------------------------------------ snapshots

    def _start_snapshot(self, journal: Journal) -> None:
        """At a batch boundary (nothing in flight): new segment, and the state as of its start
        written by a thread. Only containers are copied here; blobs are immutable."""
        segment = journal.rotate()
        state = self._snapshot_state(segment)
        self._snapshotting = True
        self._snapshot_thread = threading.Thread(
            target=self._write_snapshot, args=(segment, state), name="snapshot", daemon=True
        )
        self._snapshot_thread.start()

    def _snapshot_state(self, segment: int) -> dict[str, Any]:
        """The state as of now, for the snapshot thread: taken on the loop, so it must be
        quick — shallow copies only (``dict.copy`` copies the table, a few ns per entry), and
        the thread turns them into the snapshot's lists. Only live entries are copied one by
        one (their blob and history change in place)."""
        return {
            "segment": segment,
            "live": {mid: (e[0], tuple(e[1])) for mid, e in self._live.items()},
            "final": self._final.copy(),
            "final_order": list(self._final_order),
            "part_of": self._part_of.copy(),
            "corr": self._corr.copy(),
            "parts": [p for stored in self._parts.values() for p in stored.values()],
            "deliveries": [
                (d.id, d.account, d.item, d.enqueued_at, d.attempts)
                for queue in self._queues.values() for d in queue.items.values()
            ],
            "next_delivery": self._next_delivery,
        }

    @staticmethod
    def _snapshot_record(copied: dict[str, Any]) -> dict[str, Any]:
        """The snapshot file's layout, built in the snapshot thread from the loop's copies."""
        final = copied["final"]
        return {
            "v": FORMAT_VERSION,
            "segment": copied["segment"],
            "live": [(mid, blob, list(history)) for mid, (blob, history) in copied["live"].items()],
            "final": [(mid, final[mid]) for mid in copied["final_order"] if mid in final],
            "part_of": list(copied["part_of"].items()),
            "corr": [(p, pid, mid, exp) for (p, pid), (mid, exp) in copied["corr"].items()],
            "parts": [
                (p.key, p.seqnum, p.total, p.message_id, p.payload, p.received_at, p.meta)
                for p in copied["parts"]
            ],
            "deliveries": [
                (i, a, item_to_wire(item), at, tries)
                for i, a, item, at, tries in copied["deliveries"]
            ],
            "next_delivery": copied["next_delivery"],
        }

    def _write_snapshot(self, segment: int, copied: dict[str, Any]) -> None:
        started = time.perf_counter()
        try:
            data = _encode(self._snapshot_record(copied))
            del copied
            tmp = self.directory / (snapshot_name(segment) + ".tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, self.directory / snapshot_name(segment))
            if self.fsync:
                fsync_dir(self.directory)
            for n, path in segments(self.directory):
                if n < segment:
                    path.unlink(missing_ok=True)
            for n, path in snapshots(self.directory):
                if n < segment:
                    path.unlink(missing_ok=True)
            self.snapshots_written += 1
            log.info(
                "store.snapshot_written",
                segment=segment,
                bytes=len(data),
                seconds=round(time.perf_counter() - started, 3),
            )
        except Exception as exc:  # the journal still has everything: only disk use grows
            log.warning("store.snapshot_failed", error=repr(exc))
            with contextlib.suppress(OSError):
                (self.directory / (snapshot_name(segment) + ".tmp")).unlink()
        finally:
            self._snapshotting = False

    def _load_snapshot(self, state: dict[str, Any]) -> None:
        if state.get("v") != FORMAT_VERSION:
            raise ValueError(f"snapshot format {state.get('v')!r}")
        for mid, blob, history in state["live"]:
            self._live[mid] = [blob, history, None]
            t = _decode(blob)
            (self._awaiting if t[23] is not None else self._queued).add(mid)
        for mid, packed in state["final"]:
            self._final[mid] = packed
            self._final_order.append(mid)
        self._part_of = dict(state["part_of"])
        for pid, mid in self._part_of.items():
            self._other_parts.setdefault(mid, []).append(pid)
        self._corr = {(p, pid): (mid, exp) for p, pid, mid, exp in state["corr"]}
        for p, pid, mid, _ in state["corr"]:
            self._corr_of.setdefault(mid, []).append((p, pid))
        loaded = time.monotonic()
        self._archive_due.extend((loaded, mid) for mid in self._final_order)
        for key, seqnum, total, mid, payload, received_at, meta in state["parts"]:
            self._parts.setdefault(key, {})[seqnum] = StoredPart(
                key, seqnum, total, mid, payload, received_at, meta
            )
        for delivery_id, account, wire, at, tries in state["deliveries"]:
            queue = self._queues.get(account)
            if queue is None:
                queue = self._queues[account] = AccountQueue()
            queue.add(DeliveryItem(delivery_id, account, item_from_wire(wire), at, tries))
            self._delivery_account[delivery_id] = account
        self._next_delivery = max(self._next_delivery, state["next_delivery"])

    async def snapshot_now(self) -> None:
        """Write a snapshot at the next batch boundary and wait for it (tests, shutdown)."""
        journal = self._journal
        if journal is None:
            raise StoreUnavailable("the store is closed")
        while self._snapshotting:
            await asyncio.sleep(0.01)
        await journal.idle()  # nothing in flight: a batch boundary
        self._start_snapshot(journal)
        thread = self._snapshot_thread
        assert thread is not None
        await asyncio.to_thread(thread.join)

    def disk_usage(self) -> int:
        """Bytes of journal segments and snapshots on disk."""
        total = 0
        for _, p in (*segments(self.directory), *snapshots(self.directory)):
            with contextlib.suppress(OSError):
                total += p.stat().st_size
        return total

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.directory).free

