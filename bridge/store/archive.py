"""Finished messages on disk: what query_sm, trace and history read once a message has been
final for a while, so that RAM holds only the messages the bridge is working on.

Kept in memory, a finished message cost about 0.9 kB (its packed record, history and provider
correlation); with a week's retention that is most of the bridge's memory (7 days at 10
messages/s: 5.4 GB). The embedded store therefore moves each final message, ``archive_after``
seconds after it became final, into this SQLite file (``finals.db`` beside the journal), with
its part ids and correlations, and forgets it in memory once the archive's transaction is
committed (``synchronous=FULL``: the journal segments that held it may be deleted after the
next snapshot, so the archive must be durable first).

Writes go through one writer thread in batches (one transaction each); reads (a query_sm for an
old message, a trace, a late report's look-up) use a second connection from a worker thread, so
the event loop never waits for the disk. SQLite is the right tool here, unlike for the journal:
this is a keyed table read by id and purged by age, not an append-only log on the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bridge.core.store import settle_future

__all__ = ["ArchivedMessage", "FinalArchive"]

# (id, packed [blob, history], other part ids, [(provider, provider_id, expires)])
ArchivedMessage = tuple[str, bytes, Sequence[str], Sequence[tuple[str, str, float]]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS finals (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    packed BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS finals_age ON finals(created_at);
CREATE TABLE IF NOT EXISTS part_ids (
    part_id TEXT PRIMARY KEY,
    id TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS part_ids_message ON part_ids(id);
CREATE TABLE IF NOT EXISTS correlations (
    provider TEXT NOT NULL,
    provider_message_id TEXT NOT NULL,
    id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (provider, provider_message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS correlations_message ON correlations(id);
CREATE INDEX IF NOT EXISTS correlations_expiry ON correlations(expires_at);
"""

_Job = tuple[Callable[[sqlite3.Connection], Any], Callable[[Any, BaseException | None], None]]


def _connect(path: Path, fsync: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'OFF'}")
    return conn


class FinalArchive:
    """The archive file and its writer thread. Writes call ``done(result, error)`` on the loop
    once committed; reads are ``async`` (a worker thread)."""

    def __init__(
        self, path: Path, created_at: Callable[[bytes], float], *, fsync: bool = True
    ) -> None:
        self.path = path
        #: Reads a message's creation time out of its packed record (the store's format), in
        #: the writer thread, so that the loop does not decode what it archives.
        self.created_at = created_at
        self.fsync = fsync
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ lifecycle

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        writer = _connect(self.path, self.fsync)
        writer.executescript(_SCHEMA)
        self._reader = _connect(self.path, self.fsync)
        self._thread = threading.Thread(
            target=self._run, args=(writer,), name="final-archive", daemon=True
        )
        self._thread.start()

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(thread.join)
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                work, done = job
                try:
                    conn.execute("BEGIN")
                    result = work(conn)
                    conn.execute("COMMIT")
                except BaseException as exc:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    self._settle(done, None, exc)
                else:
                    self._settle(done, result, None)
        finally:
            conn.close()

    def _settle(self, done: Callable[[Any, BaseException | None], None], result: Any,
                error: BaseException | None) -> None:  # fmt: skip
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(done, result, error)

    def _submit(self, work: Callable[[sqlite3.Connection], Any],
                done: Callable[[Any, BaseException | None], None]) -> None:  # fmt: skip
        if self._thread is None:
            raise RuntimeError("the archive is closed")
        self._jobs.put((work, done))

    async def _call(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._submit(work, functools.partial(settle_future, future))
        return await future

    # ------------------------------------------------------------------ writes

    def put(
        self,
        messages: Sequence[ArchivedMessage],
        done: Callable[[Any, BaseException | None], None],
    ) -> None:
        """Archive ``messages`` in one transaction (a repeat replaces: replay after a restart
        archives again what was archived before the crash)."""

        def work(conn: sqlite3.Connection) -> None:
            created_at = self.created_at
            conn.executemany(
                "INSERT OR REPLACE INTO finals (id, created_at, packed) VALUES (?, ?, ?)",
                [(m[0], created_at(m[1]), m[1]) for m in messages],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO part_ids (part_id, id) VALUES (?, ?)",
                [(pid, m[0]) for m in messages for pid in m[2]],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO correlations VALUES (?, ?, ?, ?)",
                [(p, pid, m[0], exp) for m in messages for p, pid, exp in m[3]],
            )

        self._submit(work, done)

    async def purge(self, created_before: float, limit: int) -> int:
        """Delete up to ``limit`` archived messages created before ``created_before``, with
        their part ids and correlations; returns how many."""

        def work(conn: sqlite3.Connection) -> int:
            ids = [
                (mid,)
                for (mid,) in conn.execute(
                    "SELECT id FROM finals WHERE created_at < ? ORDER BY created_at LIMIT ?",
                    (created_before, limit),
                )
            ]
            conn.executemany("DELETE FROM finals WHERE id = ?", ids)
            conn.executemany("DELETE FROM part_ids WHERE id = ?", ids)
            conn.executemany("DELETE FROM correlations WHERE id = ?", ids)
            return len(ids)

        return int(await self._call(work))

    async def expire_correlations(self, now: float) -> int:
        def work(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM correlations WHERE expires_at <= ?", (now,)).rowcount

        return int(await self._call(work))

    # ------------------------------------------------------------------ reads

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with self._read_lock:
            if self._reader is None:
                return []
            return self._reader.execute(sql, params).fetchall()

    def _get(self, message_id: str) -> bytes | None:
        rows = self._read("SELECT packed FROM finals WHERE id = ?", (message_id,))
        if not rows:
            rows = self._read(
                "SELECT f.packed FROM part_ids p JOIN finals f ON f.id = p.id WHERE p.part_id = ?",
                (message_id,),
            )
        return bytes(rows[0][0]) if rows else None

    async def get(self, message_id: str) -> bytes | None:
        """The packed ``[blob, history]`` of an archived message, by any of its ids."""
        return await asyncio.to_thread(self._get, message_id)

    def _lookup(self, provider: str, provider_message_id: str) -> str | None:
        rows = self._read(
            "SELECT id FROM correlations WHERE provider = ? AND provider_message_id = ?",
            (provider, provider_message_id),
        )
        return str(rows[0][0]) if rows else None

    async def lookup(self, provider: str, provider_message_id: str) -> str | None:
        """Our id for a provider's id of an archived message (until the correlation expires)."""
        return await asyncio.to_thread(self._lookup, provider, provider_message_id)

    def count(self) -> int:
        """Archived messages (tests and the benchmark; a full count, not for the hot path)."""
        return int(self._read("SELECT count(*) FROM finals", ())[0][0])
