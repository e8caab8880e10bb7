"""The embedded store: state in memory, durability in an append-only journal (the default).

Every write becomes one compact msgpack record appended to :class:`~bridge.store.journal.Journal`
(group commit: one write + fdatasync per event-loop pass). The in-memory state changes only in
the journal's "durable" callback, in append order, by the same ``_apply_*`` functions that replay
the journal at start-up — so memory never holds what the disk does not, and a restart rebuilds
exactly the state that was acknowledged. Reads are served from memory (no I/O; they are
``async`` because the store port is: a networked store needs the await).

Layout in memory, chosen for the hot path and for RAM (see docs/architecture.md, "the engine"):

* live messages: ``id -> [blob, history]`` where ``blob`` is the message as last journaled;
  two id sets index "queued" (not yet taken by a provider) and "awaiting a report";
* final messages: ``id -> blob`` (message and history packed once), kept for query_sm and
  history until retention purges them in finishing order;
* part ids of concatenated messages, provider correlations, reassembly parts and the per-account
  delivery queues (in id order, with a lazily compacted id list for ``after`` scans).

Snapshots bound restart time and disk: once the current journal segment passes
``segment_bytes``, the journal starts a new segment and the state as of that boundary is written
to ``snapshot-<n>.bin`` by a background thread (the blobs are immutable, so only the containers
are copied on the loop); older segments and snapshots are then deleted.

The store is one class in four modules, along its seams: this one writes records and answers
the port; :mod:`bridge.store.memory` holds the state and applies records to it;
:mod:`bridge.store.snapshot` loads and writes snapshots; :mod:`bridge.store.retention` moves
finished messages to the archive and purges them. They are base classes of
:class:`EmbeddedStore`, so a call costs what it did in one module.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import structlog

from bridge.core.model import InboundMessage, Message, MessageState, Receipt
from bridge.core.store import DeliveryItem, Done, StateChange, StoredPart, settle_future
from bridge.observability import Metrics, SampledLog
from bridge.store.archive import FinalArchive
from bridge.store.common import (
    DuplicateMessage,
    OpenClose,
    StoreUnavailable,
    ignore,
    item_to_wire,
    message_from_blob,
    message_to_blob,
)
from bridge.store.journal import Journal, JournalClosed
from bridge.store.memory import (
    ADD,
    ATTEMPT,
    COMPLETE,
    CORRELATE,
    DELETE,
    DEQUEUE,
    DROP,
    ENQUEUE,
    PART,
    UPDATE,
)
from bridge.store.retention import Retention

__all__ = ["EmbeddedStore"]

log = structlog.get_logger("bridge.store")

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


class EmbeddedStore(Retention, OpenClose):
    """:class:`bridge.core.store.Store` in memory, made durable by a journal in ``directory``.

    ``fsync=False`` is for tests and benchmarks that measure everything but the disk.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        metrics: Metrics | None = None,
        segment_bytes: int = 64 * 1024 * 1024,
        fsync: bool = True,
        archive_after: float = 3600.0,
    ) -> None:
        self.directory = Path(directory)
        self.metrics = metrics if metrics is not None else Metrics()
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        #: Seconds a message stays in memory once final (a late duplicate report is recognised,
        #: query_sm answers without the disk) before it moves to the archive (archive.py).
        self.archive_after = archive_after
        self._archive: FinalArchive | None = None
        self._archive_timer: asyncio.TimerHandle | None = None
        self._sampled = SampledLog(log)
        self._journal: Journal | None = None
        self._failure: BaseException | None = None
        self._snapshotting = False
        self._snapshot_thread = None
        self.snapshots_written = 0
        self.replayed_records = 0
        self.load_seconds = 0.0
        self._reset()


    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Load the newest snapshot, replay the journal after it, start appending."""
        if self._journal is not None:
            return
        started = time.perf_counter()
        segment, offset = await asyncio.to_thread(self._load)
        self.load_seconds = time.perf_counter() - started
        journal = Journal(
            self.directory,
            segment,
            fsync=self.fsync,
            on_batch=self.metrics.store_commit,
            on_boundary=self._at_boundary,
        )
        journal.open(offset)
        self._journal = journal
        self._failure = None
        await self._open_archive()
        log.info(
            "store.opened",
            directory=str(self.directory),
            live=len(self._live),
            final=len(self._final),
            deliveries=len(self._delivery_account),
            replayed=self.replayed_records,
            seconds=round(self.load_seconds, 3),
        )

    async def close(self) -> None:
        """Write what is queued, stop the journal; writes after this raise StoreUnavailable."""
        self._stop_archive_timer()
        journal, self._journal = self._journal, None
        if journal is not None:
            await journal.close()
        await self._close_archive()
        thread = self._snapshot_thread
        if thread is not None:
            await asyncio.to_thread(thread.join)

    @property
    def commits(self) -> int:
        return self._journal.batches if self._journal is not None else 0

    @property
    def largest_batch(self) -> int:
        return self._journal.largest_batch if self._journal is not None else 0

    # ------------------------------------------------------------------ writing

    def _append(self, rec: list[Any], done: Done, arg: Any, obj: Any = None) -> None:
        """Journal ``rec``; apply it (with ``obj``, the live objects it stands for, so the hot
        path never decodes what it just encoded) once durable, then ``done(arg, result, error)``.
        """
        journal = self._journal
        if journal is None:
            raise StoreUnavailable(
                f"the store is closed{f': {self._failure!r}' if self._failure else ''}"
            )
        try:
            journal.append(_encode(rec), self._durable, (rec, done, arg, obj))
        except JournalClosed as exc:
            raise StoreUnavailable(str(exc)) from exc

    def _durable(
        self, entry: tuple[list[Any], Done, Any, Any], error: BaseException | None
    ) -> None:
        rec, done, arg, obj = entry
        if error is not None:
            self.metrics.store_error()
            done(arg, None, error)
            return
        try:
            result = self._apply(rec, obj)
        except Exception as exc:  # a bug in an apply: the caller learns, the store goes on
            log.exception("store.apply_failed", kind=rec[0])
            done(arg, None, exc)
            return
        done(arg, result, None)

    def _at_boundary(self) -> None:
        """Every record written so far is applied, none of the collecting ones is: memory is
        exactly the end of the current segment — the moment to start a snapshot."""
        journal = self._journal
        if journal is not None and journal.size >= self.segment_bytes and not self._snapshotting:
            self._start_snapshot(journal)

    def _write(self, rec: list[Any], obj: Any = None) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._append(rec, settle_future, future, obj)
        return future

    # ------------------------------------------------------------------ messages

    def _check_new(self, message: Message) -> None:
        for mid in (message.id, *message.part_ids):
            if mid in self._live or mid in self._final or mid in self._part_of:
                raise DuplicateMessage(f"message id {mid!r} is already stored")

    @staticmethod
    def _add_record(message: Message) -> list[Any]:
        others = [pid for pid in message.part_ids if pid != message.id]
        return [
            ADD, message.id, message_to_blob(message), others, int(message.state),
            message.provider_message_id is not None,
        ]  # fmt: skip

    def add_message_nowait(self, message: Message, done: Done, arg: Any = None) -> None:
        """The hot path: append the accept record and return at once; ``done(arg, None,
        error)`` runs on the loop when it is durable (error None) or failed. No task, no future.
        Raises DuplicateMessage / StoreUnavailable at once.

        The store keeps ``message`` itself as the live copy that reads return (what is durable
        is the record, encoded now): change it only to pass it to :meth:`update_message`."""
        self._check_new(message)
        self._append(self._add_record(message), done, arg, message)

    async def add_message(self, message: Message) -> None:
        """Durably store a newly accepted message (state ENROUTE); DuplicateMessage if its id
        or one of its part ids is taken."""
        self._check_new(message)
        await self._write(self._add_record(message), message)

    async def add_messages(self, messages: Sequence[Message]) -> None:
        """Several at once (submit_multi): checked first, so all are added or none."""
        seen: set[str] = set()
        for m in messages:
            self._check_new(m)
            for mid in {m.id, *m.part_ids}:
                if mid in seen:
                    raise DuplicateMessage(f"message id {mid!r} given twice")
                seen.add(mid)
        futures = [self._write(self._add_record(m), m) for m in messages]
        await asyncio.gather(*futures)

    @staticmethod
    def _update_record(
        message: Message,
        change: StateChange | None,
        correlation: tuple[str, str, float] | None,
        other_ids: Sequence[str],
    ) -> list[Any]:
        corrs: list[tuple[str, str, float]] = []
        if correlation is not None:
            provider, pid, expires = correlation
            corrs = [(provider, p, expires) for p in (pid, *other_ids)]
        return [
            UPDATE,
            message.id,
            message_to_blob(message),
            int(message.state),
            message.provider_message_id is not None,
            (int(change.state), change.at, change.detail) if change is not None else None,
            corrs,
        ]

    async def update_message(
        self,
        message: Message,
        change: StateChange | None = None,
        *,
        correlation: tuple[str, str, float] | None = None,
        other_ids: Sequence[str] = (),
    ) -> None:
        """Store the message as it is now and, in the same record, ``change`` (history) and the
        correlation (provider, provider_message_id, expires_at) for it and for ``other_ids`` —
        so a crash never leaves a message taken by a provider without its correlation. An
        unknown id (cancelled meanwhile) changes nothing but the correlations."""
        await self._write(self._update_record(message, change, correlation, other_ids), message)

    def update_message_nowait(
        self,
        message: Message,
        change: StateChange | None,
        done: Done,
        arg: Any = None,
        *,
        correlation: tuple[str, str, float] | None = None,
        other_ids: Sequence[str] = (),
    ) -> None:
        """:meth:`update_message` without a future (batch paths)."""
        self._append(
            self._update_record(message, change, correlation, other_ids), done, arg, message
        )

    def _live_message(self, entry: list[Any]) -> Message:
        message: Message | None = entry[2]
        if message is None:  # replayed from disk: decoded on first use
            message = entry[2] = message_from_blob(entry[0])
        return message

    def _blob(self, message_id: str) -> tuple[bytes, list[Any]] | None:
        mid = self._part_of.get(message_id, message_id)
        entry = self._live.get(mid)
        if entry is not None:
            return entry[0], entry[1]
        packed = self._final.get(mid)
        if packed is None:
            return None
        blob, history = _decode(packed)
        return blob, history

    def get_message_now(self, message_id: str) -> Message | None:
        """A message by any of its ids, from memory (what the async read returns). A live
        message is the store's live object (not a copy): change it only to update it."""
        mid = self._part_of.get(message_id, message_id)
        entry = self._live.get(mid)
        if entry is not None:
            return self._live_message(entry)
        packed = self._final.get(mid)
        return message_from_blob(_decode(packed)[0]) if packed is not None else None

    async def get_message(self, message_id: str) -> Message | None:
        """A message by any of its ids: the message id or one of its part ids — from memory,
        else (finished a while ago) from the archive, read in a worker thread."""
        message = self.get_message_now(message_id)
        if message is None and self._archive is not None:
            packed = await self._archive.get(message_id)
            if packed is not None:
                return message_from_blob(_decode(packed)[0])
        return message

    async def history(self, message_id: str) -> list[StateChange]:
        """The recorded state changes of a message, in the order they were recorded."""
        if self._blob(message_id) is None and self._archive is not None:
            packed = await self._archive.get(message_id)
            if packed is not None:
                return _history(message_id, _decode(packed)[1])
        return self.history_now(message_id)

    def history_now(self, message_id: str) -> list[StateChange]:
        """From memory only (a message archived is not there: see :meth:`history`)."""
        found = self._blob(message_id)
        if found is None:
            return []
        return _history(message_id, found[1])

    def _messages(self, ids: Iterable[str], limit: int, after_id: str) -> list[Message]:
        chosen = sorted(mid for mid in ids if mid > after_id)[:limit]
        return [self._live_message(self._live[mid]) for mid in chosen]

    async def pending_messages(self, limit: int = 10_000, after_id: str = "") -> list[Message]:
        """Live messages not yet taken by a provider, ordered by id (resume after a restart)."""
        return self._messages(self._queued, limit, after_id)

    def pending_messages_now(self, limit: int = 10_000, after_id: str = "") -> list[Message]:
        return self._messages(self._queued, limit, after_id)

    async def awaiting_report(self, limit: int = 10_000, after_id: str = "") -> list[Message]:
        """Live messages a provider took (for polling / expiry), ordered by id."""
        return self._messages(self._awaiting, limit, after_id)

    def awaiting_report_now(self, limit: int = 10_000, after_id: str = "") -> list[Message]:
        return self._messages(self._awaiting, limit, after_id)

    async def delete_message(self, message_id: str) -> bool:
        """cancel_sm before dispatch: remove the message (by any of its ids) and its history."""
        mid = self._part_of.get(message_id, message_id)
        if mid not in self._live and mid not in self._final:
            return False
        return bool(await self._write([DELETE, message_id]))

    def queue_depth(self) -> int:
        """Live messages not yet handed to a provider (a local counter, O(1))."""
        return len(self._queued)

    # ------------------------------------------------------------------ reassembly parts

    async def add_part(self, part: StoredPart) -> None:
        """Store one part; a part with the same key and seqnum replaces the earlier one."""
        await self._write(
            [
                PART, part.key, part.seqnum, part.total, part.message_id, bytes(part.payload),
                part.received_at, bytes(part.meta),
            ]
        )  # fmt: skip

    async def parts(self, key: str) -> list[StoredPart]:
        return self.parts_now(key)

    def parts_now(self, key: str) -> list[StoredPart]:
        stored = self._parts.get(key, {})
        return [stored[n] for n in sorted(stored)]

    async def all_parts(self) -> list[StoredPart]:
        """Every stored part (to rebuild the reassembly buffer after a restart), by key and
        seqnum."""
        return self.all_parts_now()

    def all_parts_now(self) -> list[StoredPart]:
        return [
            stored[n] for key in sorted(self._parts) for stored in (self._parts[key],)
            for n in sorted(stored)
        ]  # fmt: skip

    async def complete_parts(self, key: str, message: Message) -> None:
        """In one record: delete the parts under ``key`` and add the reassembled ``message``."""
        self._check_new(message)
        add = self._add_record(message)
        await self._write([COMPLETE, key, *add[1:]])

    async def drop_parts(self, key: str) -> None:
        await self._write([DROP, key])

    # ------------------------------------------------------------------ provider correlation

    async def correlate(
        self, provider: str, provider_message_id: str, message_id: str, expires_at: float
    ) -> None:
        await self._write([CORRELATE, [(provider, provider_message_id, message_id, expires_at)]])

    def lookup_now(self, provider: str, provider_message_id: str) -> str | None:
        found = self._corr.get((provider, provider_message_id))
        return found[0] if found is not None else None

    async def lookup(self, provider: str, provider_message_id: str) -> str | None:
        """Our message id for a provider's id, or None (unknown or expired); a message
        archived is looked up in the archive."""
        found = self.lookup_now(provider, provider_message_id)
        if found is None and self._archive is not None:
            found = await self._archive.lookup(provider, provider_message_id)
        return found

    # ------------------------------------------------------------------ delivery queues

    def _enqueue_record(
        self, items: Iterable[tuple[str, Receipt | InboundMessage]], at: float
    ) -> tuple[list[Any], list[int]]:
        rows: list[tuple[int, str, tuple[Any, ...], float]] = []
        ids: list[int] = []
        for account, item in items:
            wire = item_to_wire(item)
            delivery_id = self._next_delivery
            self._next_delivery += 1
            ids.append(delivery_id)
            rows.append((delivery_id, account, wire, at))
        return [ENQUEUE, rows], ids

    async def enqueue_delivery(
        self, account: str, item: Receipt | InboundMessage, at: float
    ) -> int:
        """Durably queue a receipt or MO for an account; returns its queue id."""
        rec, ids = self._enqueue_record(((account, item),), at)
        await self._write(rec, (item,))
        return ids[0]

    async def enqueue_deliveries(
        self, items: Sequence[tuple[str, Receipt | InboundMessage]], at: float
    ) -> list[int]:
        """Several in one record; their queue ids in the order given."""
        if not items:
            return []
        rec, ids = self._enqueue_record(items, at)
        await self._write(rec, [item for _, item in items])
        return ids

    def enqueue_deliveries_nowait(
        self,
        items: Sequence[tuple[str, Receipt | InboundMessage]],
        at: float,
        done: Done,
        arg: Any = None,
    ) -> list[int]:
        rec, ids = self._enqueue_record(items, at)
        self._append(rec, done, arg, [item for _, item in items])
        return ids

    def pending_deliveries_now(
        self, account: str, limit: int = 1000, after: int = 0
    ) -> list[DeliveryItem]:
        queue = self._queues.get(account)
        return queue.after(after, limit) if queue is not None else []

    async def pending_deliveries(
        self, account: str, limit: int = 1000, after: int = 0
    ) -> list[DeliveryItem]:
        """Queued items of an account in queue order, with id > ``after``."""
        return self.pending_deliveries_now(account, limit, after)

    def is_queued(self, delivery_id: int) -> bool:
        return delivery_id in self._delivery_account

    async def delivery_accounts(self) -> list[str]:
        """Accounts with something queued, sorted."""
        return self.delivery_accounts_now()

    def delivery_accounts_now(self) -> list[str]:
        return sorted(a for a, q in self._queues.items() if q.items)

    async def remove_delivery(self, delivery_id: int) -> None:
        """Acknowledged by deliver_sm_resp ESME_ROK: gone for good (an unknown id is fine)."""
        await self._write([DEQUEUE, [delivery_id]])

    def remove_delivery_nowait(self, delivery_id: int) -> None:
        """Acknowledged: gone from memory at once (so no reader sends it again), journaled
        lazily — losing this record (a crash, a full disk) only repeats that receipt."""
        self._remove_delivery(delivery_id)
        self._append([DEQUEUE, [delivery_id]], ignore, None)

    async def note_delivery_attempt(self, delivery_id: int) -> None:
        await self._write([ATTEMPT, delivery_id])

    def note_delivery_attempt_nowait(self, delivery_id: int) -> None:
        self._append([ATTEMPT, delivery_id], ignore, None)

    async def expire_deliveries(self, older_than: float) -> int:
        """Drop queued items enqueued before ``older_than``; returns how many."""
        ids = [
            item.id
            for queue in self._queues.values()
            for item in queue.items.values()
            if item.enqueued_at < older_than
        ]
        if not ids:
            return 0
        await self._write([DEQUEUE, ids])
        return len(ids)

    def delivery_depths(self) -> dict[str, int]:
        """Items queued per account (accounts that ever had one; for the metrics gauge)."""
        return {account: len(queue.items) for account, queue in self._queues.items()}

    def delivery_depth(self, account: str | None = None) -> int:
        if account is None:
            return len(self._delivery_account)
        queue = self._queues.get(account)
        return len(queue.items) if queue is not None else 0


def _history(message_id: str, rows: Iterable[Sequence[Any]]) -> list[StateChange]:
    return [StateChange(message_id, MessageState(state), at, detail) for state, at, detail in rows]
