"""The SQLite store of bridges before engine v2 (``bridge.db``), kept only so that
:mod:`bridge.store.legacy` can import an old data directory at the first start; the bridge
itself runs on :mod:`bridge.store.embedded`. What follows describes it as it was.

One SQLite file in WAL mode, one writer thread, group commit.

Why this shape: with ``synchronous=FULL`` every COMMIT costs an
fsync (≈ 0.3 ms here), so committing each message on its own caps the bridge at a few thousand
messages a second. Instead every async write method turns its change into an *op* (SQL and
parameters, prepared in the caller's thread so that later mutations of the caller's objects do
not leak in and so that a bad value fails the caller at once), puts it on a queue and awaits an
asyncio future. A single writer thread takes everything that is waiting (up to ``max_batch``
ops), applies it in ONE transaction, commits — one fsync for the whole batch — and only then
resolves the batch's futures with one ``loop.call_soon_threadsafe``. So a write method returns
only after its change is on disk, and while one batch is being synced the next one piles up:
the busier the bridge, the bigger the batches. (Ops made in one event-loop iteration reach the
writer as one list, so the two threads do not fight over the GIL once per op.)

One op must not fail its neighbours: a batch is first applied optimistically (runs of ops of
the same kind through one ``executemany``, no savepoints); if anything fails (say a duplicate
message id), the transaction is rolled back and the batch replayed op by op, each op under its
own SAVEPOINT, so only the guilty op gets the exception. If the transaction itself is lost
(disk full, I/O error) or the COMMIT fails, every op of the batch gets the exception, since
none of them is durable.

Reads are synchronous and use a second connection from the event-loop thread: in WAL mode
readers never block the writer (nor the writer them), and a read started after a COMMIT
returned sees it — which is always the case for a caller that awaited the write.

Counts (:meth:`SqliteStore.queue_depth`, :meth:`SqliteStore.delivery_depth`) are kept by
triggers in small counter tables, so they are O(1) however long the queues grow, and they are
transactional with the rows they count; :meth:`SqliteStore.open` recomputes them anyway.

The wall clock is never read here: every time comes in as an argument.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import msgspec

from bridge.core.model import Address, InboundMessage, Message, MessageState, Receipt
from bridge.core.store import DeliveryItem, StateChange, StoredPart
from bridge.observability import Metrics

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

SCHEMA_VERSION = 1

Row = tuple[Any, ...]

# --------------------------------------------------------------------------- schema

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    state INTEGER NOT NULL,
    provider_message_id TEXT,
    next_attempt_at REAL NOT NULL,
    created_at REAL NOT NULL,
    data TEXT NOT NULL
);
-- Partial indexes: they hold only the live messages, so final ones cost nothing to index and
-- the resume/poll scans touch only what they return. Queries must spell the same WHERE terms.
CREATE INDEX IF NOT EXISTS messages_pending ON messages(id)
    WHERE state = 1 AND provider_message_id IS NULL;
CREATE INDEX IF NOT EXISTS messages_awaiting ON messages(id)
    WHERE state = 1 AND provider_message_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_final_age ON messages(created_at) WHERE state != 1;

-- part ids other than the message id itself (a single-part message needs no row here)
CREATE TABLE IF NOT EXISTS message_parts (
    part_id TEXT PRIMARY KEY,
    message_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS message_parts_message ON message_parts(message_id);

CREATE TABLE IF NOT EXISTS history (
    message_id TEXT NOT NULL,
    state INTEGER NOT NULL,
    at REAL NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_message ON history(message_id);

CREATE TABLE IF NOT EXISTS parts (
    key TEXT NOT NULL,
    seqnum INTEGER NOT NULL,
    total INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    received_at REAL NOT NULL,
    meta BLOB NOT NULL,
    PRIMARY KEY (key, seqnum)
);

CREATE TABLE IF NOT EXISTS correlations (
    provider TEXT NOT NULL,
    provider_message_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (provider, provider_message_id)
);
CREATE INDEX IF NOT EXISTS correlations_expiry ON correlations(expires_at);

CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS deliveries_account ON deliveries(account, id);
CREATE INDEX IF NOT EXISTS deliveries_age ON deliveries(enqueued_at);

-- counters kept by triggers, so that depth queries are O(1)
-- (integer keys and WITHOUT ROWID: one B-tree step per trigger, which runs for every row)
CREATE TABLE IF NOT EXISTS counters (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    n INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters(id, name, n) VALUES (1, 'queue', 0);
CREATE TABLE IF NOT EXISTS delivery_counts (account TEXT PRIMARY KEY, n INTEGER NOT NULL)
    WITHOUT ROWID;

CREATE TRIGGER IF NOT EXISTS messages_count_insert AFTER INSERT ON messages
WHEN NEW.state = 1 AND NEW.provider_message_id IS NULL
BEGIN
    UPDATE counters SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS messages_count_delete AFTER DELETE ON messages
WHEN OLD.state = 1 AND OLD.provider_message_id IS NULL
BEGIN
    UPDATE counters SET n = n - 1 WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS messages_count_update
AFTER UPDATE OF state, provider_message_id ON messages
WHEN (NEW.state = 1 AND NEW.provider_message_id IS NULL)
     != (OLD.state = 1 AND OLD.provider_message_id IS NULL)
BEGIN
    UPDATE counters
    SET n = n + (CASE WHEN NEW.state = 1 AND NEW.provider_message_id IS NULL THEN 1 ELSE -1 END)
    WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS deliveries_count_insert AFTER INSERT ON deliveries
BEGIN
    INSERT INTO delivery_counts(account, n) VALUES (NEW.account, 1)
    ON CONFLICT(account) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS deliveries_count_delete AFTER DELETE ON deliveries
BEGIN
    UPDATE delivery_counts SET n = n - 1 WHERE account = OLD.account;
END;
"""

# Recomputed at every open: cheap insurance against counters that drifted (a hand edit, a
# restore of one table); the triggers keep them right from there on.
_RECOUNT = """
UPDATE counters SET n = (
    SELECT COUNT(*) FROM messages WHERE state = 1 AND provider_message_id IS NULL
) WHERE id = 1;
DELETE FROM delivery_counts;
INSERT INTO delivery_counts(account, n) SELECT account, COUNT(*) FROM deliveries GROUP BY account;
"""

_SQL_INSERT_MESSAGE = (
    "INSERT INTO messages(id, account, state, provider_message_id, next_attempt_at, created_at,"
    " data) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SQL_INSERT_MESSAGE_PART = "INSERT INTO message_parts(part_id, message_id) VALUES (?, ?)"
_SQL_UPDATE_MESSAGE = (
    "UPDATE messages SET state = ?, provider_message_id = ?, next_attempt_at = ?, data = ?"
    " WHERE id = ?"
)
# History only for messages that exist: an update racing a cancel_sm must not leave orphans.
_SQL_INSERT_HISTORY = (
    "INSERT INTO history(message_id, state, at, detail) SELECT ?, ?, ?, ?"
    " WHERE EXISTS (SELECT 1 FROM messages WHERE id = ?)"
)
_SQL_INSERT_PART = (
    "INSERT OR REPLACE INTO parts(key, seqnum, total, message_id, payload, received_at, meta)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SQL_DELETE_PARTS = "DELETE FROM parts WHERE key = ?"
_SQL_CORRELATE = (
    "INSERT OR REPLACE INTO correlations(provider, provider_message_id, message_id, expires_at)"
    " VALUES (?, ?, ?, ?)"
)
_SQL_EXPIRE_CORRELATIONS = "DELETE FROM correlations WHERE expires_at <= ?"
_SQL_ENQUEUE = (
    "INSERT INTO deliveries(id, account, kind, data, enqueued_at, attempts)"
    " VALUES (?, ?, ?, ?, ?, 0)"
)
_SQL_REMOVE_DELIVERY = "DELETE FROM deliveries WHERE id = ?"
_SQL_NOTE_ATTEMPT = "UPDATE deliveries SET attempts = attempts + 1 WHERE id = ?"
_SQL_EXPIRE_DELIVERIES = "DELETE FROM deliveries WHERE enqueued_at < ?"

_ENROUTE = int(MessageState.ENROUTE)

# --------------------------------------------------------------------------- serialisation

# Compact separators: the data column is written for every message and every update.
# ensure_ascii stays on: a lone surrogate (half of a broken UCS2 pair) then survives as "\ud83d"
# instead of failing the UTF-8 encoding of the TEXT column.
# msgspec's JSON codec: ~7x faster than the stdlib's for these rows, and every message and every
# update passes through here (measured: 0.7 µs vs 4.8 µs to encode a typical message row).
_msgspec_encode = msgspec.json.Encoder().encode
_msgspec_decode = msgspec.json.Decoder().decode
_stdlib_decode = json.JSONDecoder().decode


def _decode_json(text: str | bytes) -> Any:
    try:
        return _msgspec_decode(text)
    except msgspec.DecodeError:
        # Rows holding a lone surrogate (see _encode_json).
        return _stdlib_decode(text if isinstance(text, str) else text.decode())


_stdlib_encode = json.JSONEncoder(separators=(",", ":")).encode


def _encode_json(value: Any) -> str:
    try:
        return _msgspec_encode(value).decode()
    except UnicodeEncodeError:
        # A lone UTF-16 surrogate (a broken UCS2 pair from an ESME) is not valid UTF-8; the
        # stdlib escapes it as \udXXX, which both decoders read back unchanged.
        return _stdlib_encode(value)

_MESSAGE_FIELDS = frozenset(f.name for f in fields(Message))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii") if data else ""


def _unb64(text: str) -> bytes:
    return base64.b64decode(text) if text else b""


def _address_to_json(address: Address) -> list[Any]:
    return [address.digits, address.ton, address.npi]


def _address_from_json(value: list[Any]) -> Address:
    return Address(value[0], value[1], value[2])


def _message_to_dict(m: Message) -> dict[str, Any]:
    """``m`` as JSON-ready values; fields at their default value are left out.

    Leaving defaults out halves the row (≈ 250 instead of 500 bytes for a plain text message)
    and makes encoding and decoding markedly faster — this runs for every message and every
    update. Loading fills them back in from the dataclass defaults (so those must not change
    meaning; a test checks that every field is written when it is set).
    """
    d: dict[str, Any] = {
        "id": m.id,
        "account": m.account,
        "source": _address_to_json(m.source),
        "destination": _address_to_json(m.destination),
        "text": m.text,
        "part_ids": list(m.part_ids),
        "created_at": m.created_at,
        "state": int(m.state),
        "route": list(m.route),
    }
    if m.data_coding:
        d["data_coding"] = m.data_coding
    if m.binary:
        d["binary"] = _b64(m.binary)
    if m.udh:
        d["udh"] = _b64(m.udh)
    if m.flash:
        d["flash"] = True
    if m.registered_delivery:
        d["registered_delivery"] = m.registered_delivery
    if m.priority:
        d["priority"] = m.priority
    if m.esm_class:
        d["esm_class"] = m.esm_class
    if m.protocol_id:
        d["protocol_id"] = m.protocol_id
    if m.service_type:
        d["service_type"] = m.service_type
    if m.schedule_at is not None:
        d["schedule_at"] = m.schedule_at
    if m.expire_at is not None:
        d["expire_at"] = m.expire_at
    if m.attempts:
        d["attempts"] = m.attempts
    if m.next_attempt_at:
        d["next_attempt_at"] = m.next_attempt_at
    if m.provider is not None:
        d["provider"] = m.provider
    if m.provider_message_id is not None:
        d["provider_message_id"] = m.provider_message_id
    if m.error_code:
        d["error_code"] = m.error_code
    if m.done_at is not None:
        d["done_at"] = m.done_at
    return d


def _message_to_json(m: Message) -> str:
    """A :class:`Message` as compact JSON: bytes as base64, addresses as [digits, ton, npi],
    the state as its number, default-valued fields left out."""
    return _encode_json(_message_to_dict(m))


def _message_from_json(text: str | bytes) -> Message:
    """The inverse of :func:`_message_to_json`.

    Missing keys take the field's default (that is how defaults are stored) and keys this
    version does not know are ignored, so a row written by a newer or older bridge still loads.
    """
    d: dict[str, Any] = _decode_json(text if isinstance(text, str) else text.decode())
    d["source"] = _address_from_json(d["source"])
    d["destination"] = _address_from_json(d["destination"])
    if "binary" in d:
        d["binary"] = _unb64(d["binary"])
    if "udh" in d:
        d["udh"] = _unb64(d["udh"])
    if "state" in d:
        d["state"] = MessageState(d["state"])
    if not _MESSAGE_FIELDS.issuperset(d):
        d = {k: v for k, v in d.items() if k in _MESSAGE_FIELDS}
    return Message(**d)


def _receipt_to_json(r: Receipt) -> str:
    return _encode_json(
        {
            "account": r.account,
            "message_id": r.message_id,
            "source": _address_to_json(r.source),
            "destination": _address_to_json(r.destination),
            "state": int(r.state),
            "error_code": r.error_code,
            "submitted_at": r.submitted_at,
            "done_at": r.done_at,
            "text_head": r.text_head,
            "intermediate": r.intermediate,
            "network_error": list(r.network_error) if r.network_error is not None else None,
        }
    )


def _receipt_from_json(text: str) -> Receipt:
    d: dict[str, Any] = _decode_json(text)
    network_error = d.get("network_error")
    return Receipt(
        account=d["account"],
        message_id=d["message_id"],
        source=_address_from_json(d["source"]),
        destination=_address_from_json(d["destination"]),
        state=MessageState(d["state"]),
        error_code=d["error_code"],
        submitted_at=d["submitted_at"],
        done_at=d["done_at"],
        text_head=d["text_head"],
        intermediate=d.get("intermediate", False),
        network_error=(network_error[0], network_error[1]) if network_error else None,
    )


def _inbound_to_json(m: InboundMessage) -> str:
    return _encode_json(
        {
            "account": m.account,
            "source": _address_to_json(m.source),
            "destination": _address_to_json(m.destination),
            "text": m.text,
            "binary": _b64(m.binary),
            "received_at": m.received_at,
            "provider": m.provider,
        }
    )


def _inbound_from_json(text: str) -> InboundMessage:
    d: dict[str, Any] = _decode_json(text)
    return InboundMessage(
        account=d["account"],
        source=_address_from_json(d["source"]),
        destination=_address_from_json(d["destination"]),
        text=d["text"],
        binary=_unb64(d.get("binary", "")),
        received_at=d.get("received_at", 0.0),
        provider=d.get("provider", ""),
    )


_KIND_RECEIPT = "receipt"
_KIND_MO = "mo"


def _delivery_to_row(item: Receipt | InboundMessage) -> tuple[str, str]:
    """(kind, data) for the deliveries table."""
    if isinstance(item, Receipt):
        return _KIND_RECEIPT, _receipt_to_json(item)
    if isinstance(item, InboundMessage):
        return _KIND_MO, _inbound_to_json(item)
    raise TypeError(f"not a Receipt or InboundMessage: {type(item).__name__}")


def _delivery_from_row(kind: str, data: str) -> Receipt | InboundMessage:
    if kind == _KIND_RECEIPT:
        return _receipt_from_json(data)
    if kind == _KIND_MO:
        return _inbound_from_json(data)
    raise ValueError(f"unknown delivery kind {kind!r}")


def _message_row(m: Message) -> Row:
    return (
        m.id,
        m.account,
        int(m.state),
        m.provider_message_id,
        m.next_attempt_at,
        m.created_at,
        _message_to_json(m),
    )


def _part_rows(m: Message) -> list[Row]:
    return [(pid, m.id) for pid in m.part_ids if pid != m.id]


# --------------------------------------------------------------------------- write ops


@dataclass(slots=True)
class _Op:
    """One write of one caller: applied atomically, resolved with its own result or error.

    ``steps`` is a list of (sql, rows). Ops with the same non-empty ``kind`` have the same SQL
    in the same order, so a run of them can be applied with one ``executemany`` per step.
    ``run``, when set, replaces ``steps`` for ops that must read before they write or that
    return a count; such ops are never merged. ``result`` is what the future gets on success
    (for ``run`` ops, the return value of ``run``).
    """

    kind: str
    steps: list[tuple[str, list[Row]]]
    future: asyncio.Future[Any] | None = None
    run: Callable[[sqlite3.Connection], Any] | None = None
    result: Any = None


class _BatchLost(Exception):
    """The transaction is gone (SQLite rolled it back on a hard error): fail the whole batch."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Replay(Exception):
    """An op failed in the optimistic pass: replay the batch op by op."""


_STOP = object()  # queue sentinel: drain and stop


def _run_op(conn: sqlite3.Connection, op: _Op) -> Any:
    if op.run is not None:
        return op.run(conn)
    for sql, rows in op.steps:
        if len(rows) == 1:
            conn.execute(sql, rows[0])
        elif rows:
            conn.executemany(sql, rows)
    return op.result


def _is_single_statement(op: _Op) -> bool:
    """An op SQLite applies atomically without a savepoint (one statement, one row)."""
    if op.run is not None:
        return False
    non_empty = [rows for _, rows in op.steps if rows]
    return len(non_empty) <= 1 and all(len(rows) == 1 for rows in non_empty)


class SqliteStore:
    """:class:`bridge.core.store.Store` on one SQLite file: WAL, synchronous=FULL, group commit.

    Use from one asyncio event loop: writes may come from any coroutine (their ops are queued in
    call order and committed in that order), reads run on the caller's thread against a
    separate read connection. A cancelled caller does not cancel its write: once a write method
    was called, its change may still be committed.

    Counters for tests and metrics: ``commits`` (transactions committed), ``ops_committed``
    (write calls made durable), ``largest_batch``, ``replays`` (batches replayed op by op
    because one op failed).
    """

    def __init__(
        self, path: str | Path, *, max_batch: int = 2000, metrics: Metrics | None = None
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.path = Path(path)
        self.max_batch = max_batch
        self.metrics = metrics if metrics is not None else Metrics()
        self.commits = 0
        self.ops_committed = 0
        self.largest_batch = 0
        self.replays = 0
        # items: lists of ops (one per loop iteration that wrote), or _STOP
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: dict[asyncio.AbstractEventLoop, list[_Op]] = {}
        self._write: sqlite3.Connection | None = None
        self._read: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._open = False
        self._failure: RuntimeError | None = None
        self._delivery_ids: Iterator[int] = itertools.count(1)

    async def __aenter__(self) -> SqliteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create the directory, the file and the tables; start the writer thread."""
        if self._thread is not None:
            return
        await asyncio.to_thread(self._open_connections)
        self._stopped = asyncio.get_running_loop().create_future()
        self._thread = threading.Thread(
            target=self._writer, name=f"sqlite-writer:{self.path.name}", daemon=True
        )
        self._thread.start()
        self._open = True

    def _open_connections(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            mode = write.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
            if str(mode).lower() != "wal":
                raise RuntimeError(f"{self.path}: cannot switch to WAL (journal_mode={mode})")
            write.execute("PRAGMA synchronous=FULL")
            write.execute("PRAGMA busy_timeout=5000")
            # keep the WAL file from staying huge after a burst, once it has been checkpointed
            write.execute("PRAGMA journal_size_limit=67108864")
            version = write.execute("PRAGMA user_version").fetchall()[0][0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: schema version {version} is newer than this bridge's "
                    f"({SCHEMA_VERSION})"
                )
            write.execute("BEGIN IMMEDIATE")
            for statement in _split_sql(_SCHEMA + _RECOUNT):
                write.execute(statement)
            write.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            last_id = write.execute(
                "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'deliveries'),"
                " 0), coalesce((SELECT max(id) FROM deliveries), 0))"
            ).fetchall()[0][0]
            write.execute("COMMIT")
        except BaseException:
            if write.in_transaction:
                write.execute("ROLLBACK")
            write.close()
            raise
        read = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        read.execute("PRAGMA busy_timeout=5000")
        read.execute("PRAGMA query_only=ON")
        self._write, self._read = write, read
        self._delivery_ids = itertools.count(int(last_id) + 1)

    async def close(self) -> None:
        """Commit everything already queued, stop the writer thread, close both connections.

        Writes called after this raise RuntimeError.
        """
        if self._thread is None:
            return
        self._open = False
        assert self._stopped is not None
        for loop in list(self._pending):  # ops not yet handed over go first
            self._hand_over(loop)
        self._queue.put(_STOP)
        await self._stopped
        await asyncio.to_thread(self._thread.join)
        for conn in (self._write, self._read):
            if conn is not None:
                conn.close()
        self._write = self._read = None
        self._thread = None

    # ------------------------------------------------------------------ the writer

    def _submit(self, op: _Op) -> asyncio.Future[Any]:
        """Queue ``op`` for the writer; the future resolves once it is committed (or failed).

        Ops are not handed to the writer one by one: they collect in a per-loop list that a
        ``call_soon`` callback hands over whole at the end of the current loop iteration. One
        wake-up of the writer per iteration instead of one per op matters: each wake-up makes
        the two threads fight for the GIL, and with 100 producers that fight, not the fsync,
        was the bottleneck (~9 k/s instead of tens of thousands).
        """
        if not self._open:
            raise self._failure or RuntimeError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        op.future = future
        pending = self._pending.get(loop)
        if pending is None:
            self._pending[loop] = [op]
            loop.call_soon(self._hand_over, loop)
        else:
            pending.append(op)
        return future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        ops = self._pending.pop(loop, None)
        if not ops:
            return
        if self._failure is not None:  # nobody would take them
            _settle([(op.future, self._failure) for op in ops if op.future is not None])
        else:
            self._queue.put(ops)

    def _writer(self) -> None:
        """The writer thread: take what waits, apply it in one transaction, commit, resolve."""
        conn = self._write
        assert conn is not None
        batch: list[_Op] = []
        carry: list[_Op] = []  # ops taken from the queue beyond max_batch, for the next batch
        try:
            stopping = False
            while not stopping or carry:
                if not carry:
                    item = self._queue.get()
                    if item is _STOP:
                        break
                    carry = item
                batch, carry = carry[: self.max_batch], carry[self.max_batch :]
                while len(batch) < self.max_batch and not carry and not stopping:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stopping = True
                    else:
                        room = self.max_batch - len(batch)
                        batch.extend(item[:room])
                        carry = item[room:]
                self._resolve(batch, self._apply(conn, batch))
        except BaseException as exc:  # a bug here must not leave writers waiting forever
            failure = RuntimeError(f"the store's writer thread died: {exc!r}")
            failure.__cause__ = exc
            self._failure = failure
            self._open = False
            self._resolve(batch + carry, [failure] * (len(batch) + len(carry)))
            raise
        finally:
            self._finish()

    def _finish(self) -> None:
        """Fail whatever is still queued (never silence) and tell close() we are done."""
        # A write that slipped in behind the sentinel (from another thread) gets an error.
        leftovers: list[_Op] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                leftovers.extend(item)
        if leftovers:
            error = self._failure or RuntimeError("the store is closed")
            self._resolve(leftovers, [error] * len(leftovers))
        stopped = self._stopped
        assert stopped is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            stopped.get_loop().call_soon_threadsafe(_set_done, stopped)

    def _apply(self, conn: sqlite3.Connection, batch: list[_Op]) -> list[Any]:
        """Apply ``batch`` in one transaction; one outcome (result or exception) per op.

        First optimistically, with no savepoints: runs of same-kind ops go through one
        ``executemany`` per step. If any op fails, the whole transaction is rolled back and the
        batch replayed carefully, each op under its own savepoint, so that only the failing op
        fails. Savepoints are not free: inside one, every statement that fires a trigger (the
        counters) needs a statement journal, which doubled the writer's CPU per row; and ops
        fail rarely (a duplicate id is a bug upstream), so the replay is the cheap way to
        isolate them.
        """
        started = time.perf_counter()
        try:
            try:
                outcomes = self._apply_fast(conn, batch)
            except _Replay:
                self.replays += 1
                outcomes = self._apply_careful(conn, batch)
        except BaseException as exc:
            cause = exc.cause if isinstance(exc, _BatchLost) else exc
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            return [cause] * len(batch)
        self.commits += 1
        self.ops_committed += sum(1 for o in outcomes if not isinstance(o, BaseException))
        self.largest_batch = max(self.largest_batch, len(batch))
        # The writer thread; prometheus-client values are thread-safe.
        self.metrics.store_commit(len(batch), time.perf_counter() - started)
        return outcomes

    def _apply_fast(self, conn: sqlite3.Connection, batch: list[_Op]) -> list[Any]:
        """The whole batch, no savepoints; raises _Replay (after a ROLLBACK) if any op fails."""
        conn.execute("BEGIN IMMEDIATE")
        outcomes: list[Any] = [None] * len(batch)
        try:
            i = 0
            while i < len(batch):
                op = batch[i]
                j = i + 1
                if op.kind:
                    while j < len(batch) and batch[j].kind == op.kind:
                        j += 1
                if j - i == 1:
                    outcomes[i] = _run_op(conn, op)
                else:
                    group = batch[i:j]
                    for index, (sql, _) in enumerate(op.steps):
                        rows = [row for member in group for row in member.steps[index][1]]
                        if rows:
                            conn.executemany(sql, rows)
                    for k in range(i, j):
                        outcomes[k] = batch[k].result
                i = j
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise _Replay from exc
        conn.execute("COMMIT")
        return outcomes

    def _apply_careful(self, conn: sqlite3.Connection, batch: list[_Op]) -> list[Any]:
        """The whole batch again, op by op, each atomic on its own."""
        conn.execute("BEGIN IMMEDIATE")
        outcomes = [self._apply_one(conn, op) for op in batch]
        conn.execute("COMMIT")
        return outcomes

    def _apply_one(self, conn: sqlite3.Connection, op: _Op) -> Any:
        """One op, atomically: its result, or the exception it raised (the batch goes on)."""
        if _is_single_statement(op):
            try:
                return _run_op(conn, op)
            except Exception as exc:
                # A failed statement is undone by SQLite on its own, unless the error was bad
                # enough to roll back the whole transaction: then nothing of the batch stands.
                if not conn.in_transaction:
                    raise _BatchLost(exc) from exc
                return exc
        conn.execute("SAVEPOINT one")
        try:
            result = _run_op(conn, op)
        except Exception as exc:
            self._rollback_savepoint(conn, "one", exc)
            return exc
        conn.execute("RELEASE one")
        return result

    @staticmethod
    def _rollback_savepoint(conn: sqlite3.Connection, name: str, cause: BaseException) -> None:
        if not conn.in_transaction:
            raise _BatchLost(cause) from cause
        try:
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
        except sqlite3.Error as exc:
            raise _BatchLost(cause) from exc

    @staticmethod
    def _resolve(batch: list[_Op], outcomes: list[Any]) -> None:
        """Hand the outcomes to the futures' loop(s): one call_soon_threadsafe per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
        for op, outcome in zip(batch, outcomes, strict=True):
            future = op.future
            assert future is not None
            by_loop.setdefault(future.get_loop(), []).append((future, outcome))
        for loop, pairs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_settle, pairs)

    # ------------------------------------------------------------------ reads

    def _reader(self) -> sqlite3.Connection:
        conn = self._read
        if conn is None:
            raise RuntimeError("the store is closed")
        return conn

    def _rows(self, sql: str, params: Row = ()) -> list[Any]:
        # Always fetchall(): a half-read cursor would keep its read transaction (and so an old
        # snapshot) open, and later reads on this connection would not see new commits.
        return self._reader().execute(sql, params).fetchall()

    # ------------------------------------------------------------------ messages

    async def add_message(self, message: Message) -> None:
        """Durably store a newly accepted message (state ENROUTE).

        Raises sqlite3.IntegrityError if its id (or one of its part ids) is already taken.
        """
        await self._submit(
            _Op(
                "add_message",
                [
                    (_SQL_INSERT_MESSAGE, [_message_row(message)]),
                    (_SQL_INSERT_MESSAGE_PART, _part_rows(message)),
                ],
            )
        )

    async def add_messages(self, messages: Sequence[Message]) -> None:
        """Several at once (submit_multi), in one transaction: all or none."""
        if not messages:
            return
        await self._submit(
            _Op(
                "add_message",
                [
                    (_SQL_INSERT_MESSAGE, [_message_row(m) for m in messages]),
                    (_SQL_INSERT_MESSAGE_PART, [row for m in messages for row in _part_rows(m)]),
                ],
            )
        )

    async def update_message(
        self,
        message: Message,
        change: StateChange | None = None,
        *,
        correlation: tuple[str, str, float] | None = None,
        other_ids: Sequence[str] = (),
    ) -> None:
        """Store the whole message again and, if given, append ``change`` to its history and
        write ``correlation`` (provider, provider_message_id, expires_at), plus one row per
        ``other_ids`` (same provider and expiry) — one operation, so one transaction.

        An unknown id (a message cancelled meanwhile) is ignored, history included. Part ids
        are fixed when the message is added.
        """
        history: list[Row] = []
        if change is not None:
            history.append(
                (change.message_id, int(change.state), change.at, change.detail, change.message_id)
            )
        await self._submit(
            _Op(
                "update_message",
                [
                    (
                        _SQL_UPDATE_MESSAGE,
                        [
                            (
                                int(message.state),
                                message.provider_message_id,
                                message.next_attempt_at,
                                _message_to_json(message),
                                message.id,
                            )
                        ],
                    ),
                    (_SQL_INSERT_HISTORY, history),
                    (
                        _SQL_CORRELATE,
                        [
                            (correlation[0], pmid, message.id, correlation[2])
                            for pmid in (correlation[1], *other_ids)
                        ]
                        if correlation is not None
                        else [],
                    ),
                ],
            )
        )

    def get_message(self, message_id: str) -> Message | None:
        """A message by any of its ids: the message id or one of its part ids."""
        rows = self._rows("SELECT data FROM messages WHERE id = ?", (message_id,))
        if not rows:
            rows = self._rows(
                "SELECT m.data FROM message_parts p JOIN messages m ON m.id = p.message_id"
                " WHERE p.part_id = ?",
                (message_id,),
            )
            if not rows:
                return None
        return _message_from_json(rows[0][0])

    def history(self, message_id: str) -> list[StateChange]:
        """The recorded state changes of a message, in the order they were recorded."""
        return [
            StateChange(message_id, MessageState(state), at, detail)
            for state, at, detail in self._rows(
                "SELECT state, at, detail FROM history WHERE message_id = ? ORDER BY rowid",
                (message_id,),
            )
        ]

    def pending_messages(self, limit: int = 10_000, after_id: str = "") -> list[Message]:
        """Messages not yet in a final state and not yet taken by a provider
        (``provider_message_id`` is None), ordered by id; used to resume after a restart."""
        return [
            _message_from_json(data)
            for (data,) in self._rows(
                "SELECT data FROM messages WHERE state = 1 AND provider_message_id IS NULL"
                " AND id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            )
        ]

    def awaiting_report(self, limit: int = 10_000, after_id: str = "") -> list[Message]:
        """Messages a provider took that have no final state yet (for polling / expiry)."""
        return [
            _message_from_json(data)
            for (data,) in self._rows(
                "SELECT data FROM messages WHERE state = 1 AND provider_message_id IS NOT NULL"
                " AND id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            )
        ]

    async def delete_message(self, message_id: str) -> bool:
        """cancel_sm before dispatch: remove the message (found by any of its ids), its part ids
        and its history; False if unknown."""

        def run(conn: sqlite3.Connection) -> bool:
            rows = conn.execute(
                "SELECT message_id FROM message_parts WHERE part_id = ?", (message_id,)
            ).fetchall()
            target = rows[0][0] if rows else message_id
            if conn.execute("DELETE FROM messages WHERE id = ?", (target,)).rowcount == 0:
                return False
            conn.execute("DELETE FROM message_parts WHERE message_id = ?", (target,))
            conn.execute("DELETE FROM history WHERE message_id = ?", (target,))
            return True

        return bool(await self._submit(_Op("", [], run=run)))

    def queue_depth(self) -> int:
        """Messages not final and not yet handed to a provider (O(1): a trigger-kept counter)."""
        rows = self._rows("SELECT n FROM counters WHERE id = 1")
        return int(rows[0][0]) if rows else 0

    # ------------------------------------------------------------------ reassembly parts

    async def add_part(self, part: StoredPart) -> None:
        """Store one part; a part with the same key and seqnum replaces the earlier one."""
        await self._submit(
            _Op(
                "add_part",
                [
                    (
                        _SQL_INSERT_PART,
                        [
                            (
                                part.key,
                                part.seqnum,
                                part.total,
                                part.message_id,
                                bytes(part.payload),
                                part.received_at,
                                bytes(part.meta),
                            )
                        ],
                    )
                ],
            )
        )

    def parts(self, key: str) -> list[StoredPart]:
        """The parts under ``key``, in seqnum order."""
        return [
            StoredPart(*row)
            for row in self._rows(
                "SELECT key, seqnum, total, message_id, payload, received_at, meta FROM parts"
                " WHERE key = ? ORDER BY seqnum",
                (key,),
            )
        ]

    def all_parts(self) -> list[StoredPart]:
        """Every stored part (to rebuild the reassembly buffer after a restart), by key and
        seqnum."""
        return [
            StoredPart(*row)
            for row in self._rows(
                "SELECT key, seqnum, total, message_id, payload, received_at, meta FROM parts"
                " ORDER BY key, seqnum"
            )
        ]

    async def complete_parts(self, key: str, message: Message) -> None:
        """Atomically: delete the parts under ``key`` and add the reassembled ``message``.

        If the message cannot be added (its id is taken), the parts stay.
        """
        await self._submit(
            _Op(
                "",
                [
                    (_SQL_DELETE_PARTS, [(key,)]),
                    (_SQL_INSERT_MESSAGE, [_message_row(message)]),
                    (_SQL_INSERT_MESSAGE_PART, _part_rows(message)),
                ],
            )
        )

    async def drop_parts(self, key: str) -> None:
        """Delete the parts of an incomplete message (after its timeout outcome is queued)."""
        await self._submit(_Op("drop_parts", [(_SQL_DELETE_PARTS, [(key,)])]))

    # ------------------------------------------------------------------ provider correlation

    async def correlate(
        self, provider: str, provider_message_id: str, message_id: str, expires_at: float
    ) -> None:
        """Remember which of our messages a provider's id stands for (a repeat replaces)."""
        await self._submit(
            _Op(
                "correlate",
                [(_SQL_CORRELATE, [(provider, provider_message_id, message_id, expires_at)])],
            )
        )

    def lookup(self, provider: str, provider_message_id: str) -> str | None:
        """Our message id for a provider's id, or None (unknown or expired).

        "Expired" means removed by :meth:`expire_correlations`: no clock is read here.
        """
        rows = self._rows(
            "SELECT message_id FROM correlations WHERE provider = ? AND provider_message_id = ?",
            (provider, provider_message_id),
        )
        return str(rows[0][0]) if rows else None

    async def purge_final(self, created_before: float, limit: int = 10_000) -> int:
        """Retention: delete up to ``limit`` final messages created before ``created_before``
        with their part ids and history (one transaction); returns how many. Their provider
        correlations go with :meth:`expire_correlations` (no index by message id is kept for
        them: that would cost every send an index update)."""

        def run(conn: sqlite3.Connection) -> int:
            ids = [
                (row[0],)
                for row in conn.execute(
                    "SELECT id FROM messages WHERE state != 1 AND created_at < ? LIMIT ?",
                    (created_before, limit),
                )
            ]
            if ids:
                conn.executemany("DELETE FROM message_parts WHERE message_id = ?", ids)
                conn.executemany("DELETE FROM history WHERE message_id = ?", ids)
                conn.executemany("DELETE FROM messages WHERE id = ?", ids)
            return len(ids)

        return int(await self._submit(_Op("", [], run=run)))

    async def expire_correlations(self, now: float) -> int:
        """Drop correlations with ``expires_at <= now``; returns how many."""

        def run(conn: sqlite3.Connection) -> int:
            return conn.execute(_SQL_EXPIRE_CORRELATIONS, (now,)).rowcount

        return int(await self._submit(_Op("", [], run=run)))

    # ------------------------------------------------------------------ delivery queues

    def _delivery_rows(
        self, items: Iterable[tuple[str, Receipt | InboundMessage]], at: float
    ) -> tuple[list[Row], list[int]]:
        # Ids are handed out here, in call order, rather than by AUTOINCREMENT in the writer:
        # the caller gets its id without the writer reading it back row by row, and runs of
        # enqueues can go through executemany. Ops are committed in queue (= call) order, so
        # ids still increase in commit order; an id of a failed write is simply never used.
        rows: list[Row] = []
        ids: list[int] = []
        for account, item in items:
            kind, data = _delivery_to_row(item)
            delivery_id = next(self._delivery_ids)
            ids.append(delivery_id)
            rows.append((delivery_id, account, kind, data, at))
        return rows, ids

    async def enqueue_delivery(
        self, account: str, item: Receipt | InboundMessage, at: float
    ) -> int:
        """Durably queue a receipt or MO for an account; returns its queue id."""
        rows, ids = self._delivery_rows(((account, item),), at)
        return int(await self._submit(_Op("enqueue", [(_SQL_ENQUEUE, rows)], result=ids[0])))

    async def enqueue_deliveries(
        self, items: Sequence[tuple[str, Receipt | InboundMessage]], at: float
    ) -> list[int]:
        """Several in one transaction; their queue ids in the order given."""
        if not items:
            return []
        rows, ids = self._delivery_rows(items, at)
        result: list[int] = await self._submit(_Op("enqueue", [(_SQL_ENQUEUE, rows)], result=ids))
        return result

    def pending_deliveries(
        self, account: str, limit: int = 1000, after: int = 0
    ) -> list[DeliveryItem]:
        """Queued items of an account in queue order, with id > ``after``."""
        return [
            DeliveryItem(delivery_id, account, _delivery_from_row(kind, data), enqueued_at, tries)
            for delivery_id, kind, data, enqueued_at, tries in self._rows(
                "SELECT id, kind, data, enqueued_at, attempts FROM deliveries"
                " WHERE account = ? AND id > ? ORDER BY id LIMIT ?",
                (account, after, limit),
            )
        ]

    def delivery_accounts(self) -> list[str]:
        """Accounts with something queued, sorted."""
        return [
            account
            for (account,) in self._rows(
                "SELECT account FROM delivery_counts WHERE n > 0 ORDER BY account"
            )
        ]

    async def remove_delivery(self, delivery_id: int) -> None:
        """Acknowledged by deliver_sm_resp ESME_ROK: gone for good (an unknown id is fine)."""
        await self._submit(_Op("remove_delivery", [(_SQL_REMOVE_DELIVERY, [(delivery_id,)])]))

    async def note_delivery_attempt(self, delivery_id: int) -> None:
        """Count one more delivery attempt for a queued item."""
        await self._submit(_Op("note_attempt", [(_SQL_NOTE_ATTEMPT, [(delivery_id,)])]))

    async def expire_deliveries(self, older_than: float) -> int:
        """Drop queued items enqueued before ``older_than``; returns how many."""

        def run(conn: sqlite3.Connection) -> int:
            return conn.execute(_SQL_EXPIRE_DELIVERIES, (older_than,)).rowcount

        return int(await self._submit(_Op("", [], run=run)))

    def delivery_depths(self) -> dict[str, int]:
        """Items queued per account (accounts that ever had one; for the metrics gauge)."""
        return {
            str(account): int(n)
            for account, n in self._rows("SELECT account, n FROM delivery_counts")
        }

    def delivery_depth(self, account: str | None = None) -> int:
        """Items queued for ``account``, or for everyone (O(1): trigger-kept counters)."""
        if account is None:
            rows = self._rows("SELECT coalesce(sum(n), 0) FROM delivery_counts")
        else:
            rows = self._rows("SELECT n FROM delivery_counts WHERE account = ?", (account,))
        return int(rows[0][0]) if rows else 0


# --------------------------------------------------------------------------- helpers


def _settle(pairs: list[tuple[asyncio.Future[Any], Any]]) -> None:
    """Runs in the loop: set each future's result or exception (skipping cancelled ones)."""
    for future, outcome in pairs:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _split_sql(script: str) -> list[str]:
    """Split a script into statements (``executescript`` would COMMIT on its own first).

    Trigger bodies contain ``;`` so statements are joined until ``sqlite3.complete_statement``
    says they are whole.
    """
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        if not current and (not line.strip() or line.lstrip().startswith("--")):
            continue
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        raise ValueError(f"incomplete SQL statement: {current!r}")
    return statements
