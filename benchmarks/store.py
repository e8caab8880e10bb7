"""Durable write throughput of :class:`bridge.store.sqlite.SqliteStore`, against a same-run
baseline.

Usage: ``python -m benchmarks.store [--producers 100] [--messages 50000] [--dir DIR] [--uvloop]
[--ceiling]``

* **store** — ``producers`` coroutines each await ``add_message`` in a loop (as SMPP sessions
  do: the submit_sm_resp waits for the write), until ``messages`` rows are in. Every row counted
  is durable (group commit, WAL, ``synchronous=FULL``).
* **ceiling** (``--ceiling``) — the same group commit with nothing of the store around it: the
  same producers put prebuilt row tuples on a queue that a thread inserts with one
  ``executemany`` and one COMMIT per batch. This is the prototype DESIGN.md's 88 k rows/s came
  from; the gap to **store** is the per-message work (JSON, ops, trigger-kept counters, partial
  indexes), not the commit strategy.
* **baseline** — what the obvious code does: a plain ``sqlite3`` loop that inserts the same rows
  (same columns, same JSON) into a file with the same pragmas and commits after each one. Each
  commit costs an fsync, so this is bounded by the disk's sync latency.

The machines are shared and noisy, so the ratio of the two (measured seconds apart) is the
figure to compare across runs, not the absolute rates. ``--dir`` puts the files on the disk you
care about (fsync cost depends on the filesystem); the default is a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bridge.core.model import Address, Message
from bridge.store.sqlite import SqliteStore, _message_row

_TEXT = "Benchmark message: hello from smpp-bridge"


def _message(n: int, prefix: str = "m") -> Message:
    message_id = f"{prefix}{n:010d}"
    return Message(
        id=message_id,
        account="bench",
        source=Address("Bridge", 5, 0),
        destination=Address("4915112345678"),
        text=_TEXT,
        registered_delivery=1,
        part_ids=[message_id],
        created_at=1_700_000_000.0 + n,
        route=["sandbox"],
    )


def baseline(path: Path, seconds: float, max_rows: int) -> dict[str, float]:
    """One INSERT + COMMIT per row, WAL + synchronous=FULL: rows/s."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(
            "CREATE TABLE messages (id TEXT PRIMARY KEY, account TEXT, state INTEGER,"
            " provider_message_id TEXT, next_attempt_at REAL, created_at REAL, data TEXT)"
        )
        sql = "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)"
        rows = 0
        start = time.perf_counter()
        deadline = start + seconds
        while rows < max_rows and time.perf_counter() < deadline:
            row = _message_row(_message(rows))  # serialised inside the loop, as the store does
            conn.execute("BEGIN")
            conn.execute(sql, row)
            conn.execute("COMMIT")
            rows += 1
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    return {"rows": rows, "seconds": elapsed, "rows_per_s": rows / elapsed}


async def store_rate(path: Path, producers: int, messages: int) -> dict[str, float]:
    """``producers`` coroutines awaiting add_message until ``messages`` rows are durable."""
    async with SqliteStore(path) as store:
        # warm up: create the file's pages and the statement caches
        await asyncio.gather(*(store.add_message(_message(n, "w")) for n in range(1000)))
        commits0 = store.commits
        counter = iter(range(messages))
        made = [_message(n) for n in range(messages)]  # building Messages is not the store's cost

        async def producer() -> None:
            for n in counter:
                await store.add_message(made[n])

        start = time.perf_counter()
        await asyncio.gather(*(producer() for _ in range(producers)))
        elapsed = time.perf_counter() - start
        commits = store.commits - commits0
        assert store.queue_depth() == messages + 1000
    return {
        "rows": messages,
        "seconds": elapsed,
        "rows_per_s": messages / elapsed,
        "commits": commits,
        "rows_per_commit": messages / commits,
    }


async def ceiling_rate(path: Path, producers: int, messages: int) -> dict[str, float]:
    """Bare group commit: prebuilt rows, a SimpleQueue, one writer thread, no store."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE messages (id TEXT PRIMARY KEY, account TEXT, state INTEGER,"
        " provider_message_id TEXT, next_attempt_at REAL, created_at REAL, data TEXT)"
    )
    loop = asyncio.get_running_loop()
    work: queue.SimpleQueue[tuple[Any, asyncio.Future[None]] | None] = queue.SimpleQueue()
    commits = 0

    def settle(futures: list[asyncio.Future[None]]) -> None:
        for future in futures:
            future.set_result(None)

    def writer() -> None:
        nonlocal commits
        while (first := work.get()) is not None:
            items = [first]
            with contextlib.suppress(queue.Empty):
                while len(items) < 2000:
                    item = work.get_nowait()
                    assert item is not None
                    items.append(item)
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)", [row for row, _ in items]
            )
            conn.execute("COMMIT")
            commits += 1
            loop.call_soon_threadsafe(settle, [future for _, future in items])

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    rows = [_message_row(_message(n)) for n in range(messages)]
    counter = iter(range(messages))

    async def producer() -> None:
        for n in counter:
            future = loop.create_future()
            work.put((rows[n], future))
            await future

    start = time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(producers)))
    elapsed = time.perf_counter() - start
    work.put(None)
    thread.join()
    conn.close()
    return {
        "rows": messages,
        "seconds": elapsed,
        "rows_per_s": messages / elapsed,
        "commits": commits,
        "rows_per_commit": messages / commits,
    }


def run(
    producers: int = 100,
    messages: int = 50_000,
    directory: str | None = None,
    baseline_seconds: float = 3.0,
    use_uvloop: bool = False,
    ceiling: bool = False,
) -> dict[str, Any]:
    """Both measurements in fresh files under ``directory``; the report as a dict."""
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "producers": producers,
        "loop": "asyncio",
    }
    if use_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            report["loop"] = "uvloop"
    with tempfile.TemporaryDirectory(dir=directory, prefix="bench-store-") as tmp:
        report["baseline_commit_per_row"] = base = baseline(
            Path(tmp) / "baseline.sqlite", baseline_seconds, messages
        )
        report["store_group_commit"] = grouped = asyncio.run(
            store_rate(Path(tmp) / "store.sqlite", producers, messages)
        )
        if ceiling:
            report["ceiling_bare_group_commit"] = asyncio.run(
                ceiling_rate(Path(tmp) / "ceiling.sqlite", producers, messages)
            )
    report["store_vs_baseline"] = grouped["rows_per_s"] / base["rows_per_s"]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--producers", type=int, default=100)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--baseline-seconds", type=float, default=3.0)
    parser.add_argument("--dir", default=None, help="where to put the database files")
    parser.add_argument("--uvloop", action="store_true", help="run the store on uvloop")
    parser.add_argument(
        "--ceiling", action="store_true", help="also measure bare group commit, without the store"
    )
    args = parser.parse_args(argv)
    report = run(
        args.producers, args.messages, args.dir, args.baseline_seconds, args.uvloop, args.ceiling
    )
    print(json.dumps(report, indent=2))
    base = report["baseline_commit_per_row"]["rows_per_s"]
    grouped = report["store_group_commit"]["rows_per_s"]
    print(
        f"durable add_message: {grouped:,.0f} rows/s with {args.producers} producers vs "
        f"{base:,.0f} rows/s committing per row: {report['store_vs_baseline']:.1f}x",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
