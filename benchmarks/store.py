"""The journal's medium, chosen by measurement: a plain append-only file (``write`` +
``fdatasync`` per batch, what :mod:`bridge.store.journal` does) against SQLite used as a log of
blobs (``executemany`` + ``COMMIT`` per batch, WAL, ``synchronous=FULL``), and both against the
obvious code (one durable write per record), all in the same run.

Usage: ``python -m benchmarks.store [--records 200000] [--batch 1,16,128,512] [--dir DIR]
[--json]``

Each medium gets the same pre-encoded records (the accept record of a typical message, as the
store encodes it: msgpack, ~200 bytes) in batches of ``--batch`` records, the group commit's
unit: the event loop hands the writer thread everything one pass appended. Reported per medium
and batch size: durable records/s and the writer thread's CPU µs per record (``thread_time``:
what the medium costs the process, apart from waiting for the disk). The baseline (batch 1 on
the file) is what committing each record on its own gives. ``--dir`` puts the files on the disk
you care about (fsync cost depends on the filesystem); the default is a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.core.model import Address, Message
from bridge.store.embedded import EmbeddedStore
from bridge.store.journal import frame

_encode_add = EmbeddedStore._add_record


def _records(n: int) -> list[bytes]:
    import msgspec

    encode = msgspec.msgpack.Encoder().encode
    out = []
    for i in range(n):
        mid = f"{i:014x}"
        m = Message(
            id=mid, account="bench", source=Address("Bridge", 5, 0),
            destination=Address("4915112345678", 1, 1),
            text="Benchmark message: hello from smpp-bridge", registered_delivery=1,
            part_ids=[mid], created_at=1_700_000_000.0 + i, route=["sandbox"],
        )  # fmt: skip
        out.append(encode(_encode_add(m)))
    return out


def _file_writer(path: Path) -> tuple[Callable[[list[bytes]], None], Callable[[], None]]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(batch: list[bytes]) -> None:
        os.write(fd, b"".join([frame(r) for r in batch]))
        os.fdatasync(fd)

    return write, lambda: os.close(fd)


def _sqlite_writer(path: Path) -> tuple[Callable[[list[bytes]], None], Callable[[], None]]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY, rec BLOB NOT NULL)")

    def write(batch: list[bytes]) -> None:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO log (rec) VALUES (?)", [(r,) for r in batch])
        conn.execute("COMMIT")

    return write, conn.close


_MEDIA = {"file": _file_writer, "sqlite": _sqlite_writer}


def measure(medium: str, directory: Path, records: list[bytes], batch: int) -> dict[str, Any]:
    path = directory / f"{medium}-{batch}"
    write, close = _MEDIA[medium](path)
    # Batch 1 commits every record on its own: fewer of them do, or it takes minutes.
    n = min(len(records), 3000) if batch == 1 else len(records)
    wall, cpu = time.perf_counter(), time.thread_time()
    try:
        for i in range(0, n, batch):
            write(records[i : i + batch])
    finally:
        close()
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    return {
        "medium": medium,
        "batch": batch,
        "records": n,
        "records_per_s": round(n / wall),
        "cpu_us_per_record": round(cpu / n * 1e6, 2),
        "bytes": path.stat().st_size + sum(
            p.stat().st_size for p in directory.glob(f"{path.name}-*")
        ),
    }


def run(records: int, batches: list[int], directory: Path) -> list[dict[str, Any]]:
    recs = _records(records)
    results = []
    for batch in batches:
        for medium in _MEDIA:  # alternating, so both see the same machine
            results.append(measure(medium, directory, recs, batch))
    return results


def _summary(results: list[dict[str, Any]]) -> str:
    base = next(r for r in results if r["medium"] == "file" and r["batch"] == min(
        x["batch"] for x in results
    ))
    lines = [f"{'medium':7} {'batch':>5} {'records/s':>10} {'CPU µs/record':>14} {'vs base':>8}"]
    for r in results:
        lines.append(
            f"{r['medium']:7} {r['batch']:>5} {r['records_per_s']:>10,} "
            f"{r['cpu_us_per_record']:>14} {r['records_per_s'] / base['records_per_s']:>7.1f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--batch", default="1,16,128,512")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.dir))
    try:
        results = run(args.records, [int(b) for b in args.batch.split(",")], directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if not args.json:
        print(_summary(results), file=sys.stderr)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
