"""Restart time and disk use of the embedded store with 1,000,000 finished and 100,000 in-flight
messages (issue: "bounded restart and disk").

Usage: ``python -m benchmarks.restart [--finished 1000000] [--inflight 100000] [--dir DIR]
[--json]``

The store is filled through its own API with what the bridge journals for each message:

* a **finished** message: accepted (``_ADD``), taken by the provider with its correlation
  (``_UPDATE``), its final state with the receipt queued, and the receipt acknowledged
  (``_DEQUEUE``) — four records, as in ``bench e2e``;
* an **in-flight** message: accepted and taken by the provider (awaiting its report).

Filling writes with ``fsync=False`` (the figures measured here are reading, not syncing). Three
restarts are timed, each a new :class:`EmbeddedStore` on the same directory:

* **journal only** — the default 64 MiB segments were never compacted (``segment_bytes`` above
  the journal's size): every record is replayed;
* **snapshot** — after :meth:`EmbeddedStore.snapshot_now` (what the store does by itself each
  time a segment passes ``segment_bytes``): the snapshot is loaded, nothing replayed;
* **snapshot + tail** — a snapshot, then 100,000 more records of traffic after it;
* **archived** — the same traffic again with ``archive_after = 0``: finished messages move to
  the archive on disk (``finals.db``) as soon as they are final, so the snapshot and the restart
  carry only the in-flight ones.

It also reports the loop stall of taking a snapshot (the containers are copied on the loop; the
encoding and the write run in a thread), the bytes on disk and the process's resident memory.
Figures depend on the machine; the ratios between the three restarts are what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bridge.core.model import Address, Message, MessageState, Receipt
from bridge.core.store import StateChange
from bridge.runtime import tune_gc
from bridge.store.embedded import EmbeddedStore

_TEXT = "Benchmark message: hello from smpp-bridge"
_SENDER = Address("Bridge", 5, 0)
_HANDSET = Address("4915112345678", 1, 1)
_CHUNK = 20_000  # records in flight at once while filling


def _message(n: int) -> Message:
    message_id = f"{n:014x}"
    return Message(
        id=message_id,
        account="bench",
        source=_SENDER,
        destination=_HANDSET,
        text=_TEXT,
        registered_delivery=1,
        part_ids=[message_id],
        created_at=1_700_000_000.0 + n / 1000,
        route=["sandbox"],
    )


def _receipt(message: Message) -> Receipt:
    return Receipt(
        account=message.account,
        message_id=message.id,
        source=message.destination,
        destination=message.source,
        state=MessageState.DELIVERED,
        error_code=0,
        submitted_at=message.created_at,
        done_at=message.created_at + 2,
        text_head=_TEXT[:20],
    )


class _Waiter:
    """Counts nowait completions; the filling loop keeps at most ``_CHUNK`` outstanding."""

    def __init__(self) -> None:
        self.outstanding = 0
        self.event = asyncio.Event()
        self.failed: BaseException | None = None

    def done(self, _arg: Any, _result: Any, error: BaseException | None) -> None:
        self.outstanding -= 1
        if error is not None:
            self.failed = error
        if self.outstanding <= _CHUNK // 2:
            self.event.set()

    async def throttle(self) -> None:
        if self.outstanding >= _CHUNK:
            self.event.clear()
            await self.event.wait()
        if self.failed is not None:
            raise self.failed

    async def drain(self) -> None:
        while self.outstanding:
            self.event.clear()
            await asyncio.sleep(0.001)


async def _fill(store: EmbeddedStore, first: int, count: int, *, finish: bool) -> None:
    w = _Waiter()
    for n in range(first, first + count):
        m = _message(n)
        w.outstanding += 1
        store.add_message_nowait(m, w.done)
        m.provider, m.provider_message_id, m.attempts = "sandbox", f"sb-{n}", 1
        w.outstanding += 1
        store.update_message_nowait(
            m,
            StateChange(m.id, MessageState.ENROUTE, m.created_at, "accepted by sandbox"),
            w.done,
            correlation=("sandbox", m.provider_message_id, m.created_at + 14 * 86400),
        )
        if finish:
            m.state = MessageState.DELIVERED
            w.outstanding += 1
            ids = store.enqueue_deliveries_nowait([(m.account, _receipt(m))], m.created_at, w.done)
            w.outstanding += 1
            store.update_message_nowait(
                m, StateChange(m.id, m.state, m.created_at + 2, "report from sandbox"), w.done
            )
            store.remove_delivery_nowait(ids[0])
        await w.throttle()
    await w.drain()


async def _restart(directory: Path, segment_bytes: int) -> dict[str, Any]:
    store = EmbeddedStore(directory, segment_bytes=segment_bytes, fsync=False)
    started = time.perf_counter()
    await store.open()
    tune_gc()  # part of a restart: `smpp-bridge run` freezes the loaded state (bridge/runtime.py)
    seconds = time.perf_counter() - started
    live, final = len(store._live), len(store._final)
    replayed = store.replayed_records
    await store.close()
    return {"seconds": round(seconds, 2), "replayed": replayed, "live": live, "final": final}


def _disk(directory: Path) -> dict[str, int]:
    files = sorted(p for p in directory.iterdir() if p.is_file())
    return {p.name: p.stat().st_size for p in files}


async def run(finished: int, inflight: int, directory: Path) -> dict[str, Any]:
    big = 1 << 40  # never rotate: the journal-only restart replays everything
    store = EmbeddedStore(directory, segment_bytes=big, fsync=False)
    await store.open()
    started = time.perf_counter()
    await _fill(store, 0, finished, finish=True)
    await _fill(store, finished, inflight, finish=False)
    fill_seconds = time.perf_counter() - started
    await store.close()
    journal_disk = _disk(directory)
    report: dict[str, Any] = {
        "finished": finished,
        "inflight": inflight,
        "fill_seconds": round(fill_seconds, 1),
        "journal_bytes": sum(journal_disk.values()),
        "journal_only": await _restart(directory, big),
    }

    store = EmbeddedStore(directory, segment_bytes=big, fsync=False)
    await store.open()
    tune_gc()
    # The loop stall: what snapshot_now does on the loop before handing off to its thread.
    journal = store._journal
    assert journal is not None
    await journal.idle()
    stall_started = time.perf_counter()
    store._snapshot_state(0)
    report["snapshot_loop_stall_ms"] = round((time.perf_counter() - stall_started) * 1000, 1)
    started = time.perf_counter()
    await store.snapshot_now()
    report["snapshot_write_seconds"] = round(time.perf_counter() - started, 2)
    await store.close()
    disk = _disk(directory)
    report["snapshot_bytes"] = sum(v for k, v in disk.items() if k.startswith("snapshot"))
    report["bytes_after_snapshot"] = sum(disk.values())
    report["snapshot"] = await _restart(directory, big)

    store = EmbeddedStore(directory, segment_bytes=big, fsync=False)
    await store.open()
    await _fill(store, finished + inflight, 25_000, finish=True)  # 100 k records after it
    await store.close()
    report["snapshot_and_tail"] = await _restart(directory, big)
    # The same traffic with finished messages moved to the archive at once (archive_after 0;
    # the default keeps them in memory for an hour first): what a restart costs then.
    shutil.rmtree(directory)
    store = EmbeddedStore(directory, segment_bytes=big, fsync=False, archive_after=0.0)
    await store.open()
    await _fill(store, 0, finished, finish=True)
    await _fill(store, finished, inflight, finish=False)
    started = time.perf_counter()
    while store.finals_in_memory():
        await asyncio.sleep(0.1)
    report["archive_seconds"] = round(time.perf_counter() - started, 1)
    await store.snapshot_now()
    await store.close()
    disk = _disk(directory)
    report["archive_bytes"] = disk.get("finals.db", 0) + disk.get("finals.db-wal", 0)
    report["archived_snapshot_bytes"] = sum(v for k, v in disk.items() if k.startswith("snapshot"))
    report["archived"] = await _restart(directory, big)
    report["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return report


def _summary(r: dict[str, Any]) -> str:
    mb = 1024 * 1024
    return (
        f"{r['finished']:,} finished + {r['inflight']:,} in-flight messages "
        f"(filled in {r['fill_seconds']} s): journal {r['journal_bytes'] / mb:.0f} MB, "
        f"snapshot {r['snapshot_bytes'] / mb:.0f} MB.\n"
        f"restart, journal only: {r['journal_only']['seconds']} s "
        f"({r['journal_only']['replayed']:,} records replayed)\n"
        f"restart, from the snapshot: {r['snapshot']['seconds']} s\n"
        f"restart, snapshot + 100k records after it: {r['snapshot_and_tail']['seconds']} s\n"
        f"taking a snapshot: {r['snapshot_loop_stall_ms']} ms on the loop, "
        f"{r['snapshot_write_seconds']} s in all; peak RSS {r['max_rss_mb']} MB\n"
        f"finished messages archived (archive_after 0): archive {r['archive_bytes'] / mb:.0f} MB"
        f" written in {r['archive_seconds']} s after the traffic, snapshot"
        f" {r['archived_snapshot_bytes'] / mb:.0f} MB, restart {r['archived']['seconds']} s"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--inflight", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=None, help="where the store goes (emptied)")
    parser.add_argument("--json", action="store_true", help="only the JSON report")
    args = parser.parse_args(argv)
    directory = args.dir or Path(tempfile.mkdtemp(prefix="bench-restart-"))
    if directory.exists():
        shutil.rmtree(directory)
    try:
        report = asyncio.run(run(args.finished, args.inflight, directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if not args.json:
        print(_summary(report), file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
