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
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import structlog

from bridge.core.model import Address, InboundMessage, Message, MessageState, Receipt
from bridge.core.store import DeliveryItem, Done, StateChange, StoredPart, settle_future
from bridge.observability import Metrics, SampledLog
from bridge.store.archive import ArchivedMessage, FinalArchive
from bridge.store.journal import (
    Journal,
    JournalClosed,
    fsync_dir,
    iter_segment_records,
    segment_name,
    segments,
    snapshot_name,
    snapshots,
)

__all__ = ["DuplicateMessage", "EmbeddedStore", "StoreUnavailable"]

log = structlog.get_logger("bridge.store")

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode

FORMAT_VERSION = 1
ARCHIVE_FILE = "finals.db"
_ARCHIVE_INTERVAL = 1.0  # seconds between two looks for messages due for the archive
_ARCHIVE_BATCH = 20_000  # messages per archive transaction

# Record kinds (the first element of every journal record).
_ADD = 1  # [_ADD, id, blob, other_part_ids, state, has_provider_id]
_UPDATE = 2  # [_UPDATE, id, blob, state, has_provider_id, change|None, correlations]
_DELETE = 3  # [_DELETE, id]
_PART = 4  # [_PART, key, seqnum, total, message_id, payload, received_at, meta]
_COMPLETE = 5  # [_COMPLETE, key, id, blob, other_part_ids, state, has_provider_id]
_DROP = 6  # [_DROP, key]
_CORRELATE = 7  # [_CORRELATE, [[provider, provider_id, message_id, expires_at], ...]]
_UNCORRELATE = 8  # [_UNCORRELATE, [[provider, provider_id], ...]]
_PURGE = 9  # [_PURGE, [id, ...]]
_ENQUEUE = 10  # [_ENQUEUE, [[delivery_id, account, item, enqueued_at], ...]]
_DEQUEUE = 11  # [_DEQUEUE, [delivery_id, ...]]
_ATTEMPT = 12  # [_ATTEMPT, delivery_id]

_ENROUTE = int(MessageState.ENROUTE)


class DuplicateMessage(ValueError):
    """A message id (or one of its part ids) is already stored."""


class StoreUnavailable(RuntimeError):
    """The store cannot take writes (closed, or its journal failed)."""


# --------------------------------------------------------------------------- codecs


def _text_out(text: str | None) -> str | bytes | None:
    """Text as msgpack can carry it: a lone UTF-16 surrogate (half of a broken UCS2 pair from an
    ESME) is not valid UTF-8, so such text travels as UTF-16-BE bytes (``text`` is never bytes
    otherwise: binary content has ``text`` None)."""
    if text is None or text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-be", "surrogatepass")
    return text


def _text_in(value: str | bytes | None) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-16-be", "surrogatepass")
    return value


def message_to_blob(m: Message) -> bytes:
    """A message as a msgpack array in field order (addresses as [digits, ton, npi])."""
    s, d = m.source, m.destination
    return _encode(
        (
            m.id, m.account, (s.digits, s.ton, s.npi), (d.digits, d.ton, d.npi),
            _text_out(m.text), m.data_coding, m.binary, m.udh, m.flash, m.registered_delivery,
            m.priority, m.esm_class, m.protocol_id, m.service_type, m.part_ids, m.created_at,
            m.schedule_at, m.expire_at, int(m.state), m.attempts, m.next_attempt_at, m.route,
            m.provider, m.provider_message_id, m.error_code, m.done_at,
        )
    )  # fmt: skip


def message_from_blob(blob: bytes) -> Message:
    t = _decode(blob)
    s, d = t[2], t[3]
    return Message(
        t[0], t[1], Address(s[0], s[1], s[2]), Address(d[0], d[1], d[2]), _text_in(t[4]),
        t[5], t[6], t[7], t[8], t[9], t[10], t[11], t[12], t[13], t[14], t[15], t[16], t[17],
        MessageState(t[18]), t[19], t[20], t[21], t[22], t[23], t[24], t[25],
    )  # fmt: skip


def _address(a: Address) -> tuple[str, int, int]:
    return (a.digits, a.ton, a.npi)


def item_to_wire(item: Receipt | InboundMessage) -> tuple[Any, ...]:
    if isinstance(item, Receipt):
        return (
            "r", item.account, item.message_id, _address(item.source),
            _address(item.destination), int(item.state), item.error_code, item.submitted_at,
            item.done_at, _text_out(item.text_head), item.intermediate, item.network_error,
        )  # fmt: skip
    if isinstance(item, InboundMessage):
        return (
            "m", item.account, _address(item.source), _address(item.destination),
            _text_out(item.text), item.binary, item.received_at, item.provider,
        )  # fmt: skip
    raise TypeError(f"not a Receipt or InboundMessage: {type(item).__name__}")


def item_from_wire(t: Sequence[Any]) -> Receipt | InboundMessage:
    if t[0] == "r":
        ne = t[11]
        return Receipt(
            t[1], t[2], Address(*t[3]), Address(*t[4]), MessageState(t[5]), t[6], t[7], t[8],
            _text_in(t[9]) or "", t[10], (ne[0], ne[1]) if ne else None,
        )  # fmt: skip
    return InboundMessage(
        t[1], Address(*t[2]), Address(*t[3]), _text_in(t[4]), t[5], t[6], t[7]
    )


# --------------------------------------------------------------------------- delivery queue


class _Queue:
    """One account's delivery queue: items by id (ascending), plus the ids in a list for
    ``after`` scans by bisection. Removed ids stay in the list until it is compacted."""

    __slots__ = ("head", "ids", "items")

    def __init__(self) -> None:
        self.items: dict[int, DeliveryItem] = {}
        self.ids: list[int] = []
        self.head = 0

    def add(self, item: DeliveryItem) -> None:
        if self.ids and item.id <= self.ids[-1]:
            bisect.insort(self.ids, item.id, lo=self.head)
        else:
            self.ids.append(item.id)
        self.items[item.id] = item

    def remove(self, delivery_id: int) -> DeliveryItem | None:
        item = self.items.pop(delivery_id, None)
        if item is not None:
            ids = self.ids
            while self.head < len(ids) and ids[self.head] not in self.items:
                self.head += 1
            if self.head > 1024 and self.head * 2 > len(ids):
                self.ids = [i for i in ids[self.head :] if i in self.items]
                self.head = 0
        return item

    def after(self, after: int, limit: int) -> list[DeliveryItem]:
        out: list[DeliveryItem] = []
        ids, items = self.ids, self.items
        i = bisect.bisect_right(ids, after, lo=self.head)
        n = len(ids)
        while i < n and len(out) < limit:
            item = items.get(ids[i])
            if item is not None:
                out.append(item)
            i += 1
        return out


# --------------------------------------------------------------------------- the store



class EmbeddedStore:
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
        self._snapshot_thread: threading.Thread | None = None
        self.snapshots_written = 0
        self.replayed_records = 0
        self.load_seconds = 0.0
        self._reset()

    def _reset(self) -> None:
        # id -> [blob, history list, the Message object or None until first read]
        self._live: dict[str, list[Any]] = {}
        self._final: dict[str, bytes] = {}  # id -> msgpack [blob, history]
        self._final_order: deque[str] = deque()
        self._queued: set[str] = set()  # live, not taken by a provider
        self._awaiting: set[str] = set()  # live, taken by a provider
        self._part_of: dict[str, str] = {}  # part id (other than the message id) -> message id
        self._other_parts: dict[str, list[str]] = {}  # message id -> its other part ids
        self._corr: dict[tuple[str, str], tuple[str, float]] = {}
        self._parts: dict[str, dict[int, StoredPart]] = {}
        self._queues: dict[str, _Queue] = {}
        self._delivery_account: dict[int, str] = {}
        self._next_delivery = 1
        # message id -> its correlation keys (to move them to the archive with it)
        self._corr_of: dict[str, list[tuple[str, str]]] = {}
        # (monotonic time it became final, id), in that order: due for the archive
        self._archive_due: deque[tuple[float, str]] = deque()
        self._archiving: set[str] = set()  # handed to the archive, not yet committed

    async def __aenter__(self) -> EmbeddedStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

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
        loop = asyncio.get_running_loop()
        self._archive = FinalArchive(
            self.directory / ARCHIVE_FILE, _packed_created_at, fsync=self.fsync
        )
        await asyncio.to_thread(self._archive.open, loop)
        self._archive_timer = loop.call_later(_ARCHIVE_INTERVAL, self._archive_step)
        log.info(
            "store.opened",
            directory=str(self.directory),
            live=len(self._live),
            final=len(self._final),
            deliveries=len(self._delivery_account),
            replayed=self.replayed_records,
            seconds=round(self.load_seconds, 3),
        )

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

    async def close(self) -> None:
        """Write what is queued, stop the journal; writes after this raise StoreUnavailable."""
        if self._archive_timer is not None:
            self._archive_timer.cancel()
            self._archive_timer = None
        journal, self._journal = self._journal, None
        if journal is not None:
            await journal.close()
        archive, self._archive = self._archive, None
        if archive is not None:
            await archive.close()
        self._archiving.clear()
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

    # ------------------------------------------------------------------ apply (memory)

    def _apply(self, rec: Sequence[Any], obj: Any = None) -> Any:
        kind = rec[0]
        if kind == _ADD:
            return self._apply_add(rec[1], rec[2], rec[3], rec[4], rec[5], obj)
        if kind == _UPDATE:
            return self._apply_update(rec, obj)
        if kind == _ENQUEUE:
            return self._apply_enqueue(rec[1], obj)
        if kind == _DEQUEUE:
            for delivery_id in rec[1]:
                self._remove_delivery(delivery_id)
            return None
        if kind == _ATTEMPT:
            return self._apply_attempt(rec[1])
        if kind == _CORRELATE:
            for provider, pid, mid, expires in rec[1]:
                self._corr[(provider, pid)] = (mid, expires)
                self._corr_of.setdefault(mid, []).append((provider, pid))
            return None
        if kind == _UNCORRELATE:
            for provider, pid in rec[1]:
                self._corr.pop((provider, pid), None)
            return len(rec[1])
        if kind == _PART:
            _, key, seqnum, total, mid, payload, received_at, meta = rec
            self._parts.setdefault(key, {})[seqnum] = StoredPart(
                key, seqnum, total, mid, payload, received_at, meta
            )
            return None
        if kind == _COMPLETE:
            self._parts.pop(rec[1], None)
            return self._apply_add(rec[2], rec[3], rec[4], rec[5], rec[6], obj)
        if kind == _DROP:
            self._parts.pop(rec[1], None)
            return None
        if kind == _DELETE:
            return self._apply_delete(rec[1])
        if kind == _PURGE:
            return self._apply_purge(rec[1])
        raise ValueError(f"unknown journal record kind {kind!r}")

    def _apply_add(
        self,
        mid: str,
        blob: bytes,
        others: Sequence[str],
        state: int,
        has_provider_id: bool,
        obj: Message | None = None,
    ) -> None:
        if mid in self._live or mid in self._final:
            return  # a replayed duplicate cannot happen; a raced one keeps the first
        if others:
            self._other_parts[mid] = list(others)
            for pid in others:
                self._part_of[pid] = mid
        if state != _ENROUTE:  # stored already final (an import, a test)
            self._final[mid] = _encode((blob, []))
            self._final_order.append(mid)
            self._archive_due.append((time.monotonic(), mid))
            return
        self._live[mid] = [blob, [], obj]
        (self._awaiting if has_provider_id else self._queued).add(mid)

    def _apply_update(self, rec: Sequence[Any], obj: Message | None = None) -> None:
        _, mid, blob, state, has_provider_id, change, corrs = rec
        entry = self._live.get(mid)
        if corrs:
            keys = self._corr_of.setdefault(mid, [])
            for provider, pid, expires in corrs:
                self._corr[(provider, pid)] = (mid, expires)
                keys.append((provider, pid))
        if entry is None:
            if mid in self._final and change is not None:
                # A late step of a message already final (a duplicate report): keep its history.
                final = _decode(self._final[mid])
                final[1].append(change)
                self._final[mid] = _encode(final)
            return
        entry[0] = blob
        entry[2] = obj
        if change is not None:
            entry[1].append(change)
        if state != _ENROUTE:
            del self._live[mid]
            self._queued.discard(mid)
            self._awaiting.discard(mid)
            self._final[mid] = _encode((blob, entry[1]))
            self._final_order.append(mid)
            self._archive_due.append((time.monotonic(), mid))
        elif has_provider_id:
            self._queued.discard(mid)
            self._awaiting.add(mid)
        else:
            self._awaiting.discard(mid)
            self._queued.add(mid)

    def _apply_delete(self, message_id: str) -> bool:
        mid = self._part_of.get(message_id, message_id)
        entry = self._live.pop(mid, None)
        if entry is None and self._final.pop(mid, None) is None:
            return False
        self._queued.discard(mid)
        self._awaiting.discard(mid)
        self._drop_part_ids(mid)
        self._corr_of.pop(mid, None)
        return True

    def _drop_part_ids(self, mid: str) -> None:
        for pid in self._other_parts.pop(mid, ()):
            self._part_of.pop(pid, None)

    def _apply_purge(self, ids: Sequence[str]) -> int:
        n = 0
        for mid in ids:
            if self._final.pop(mid, None) is not None:
                n += 1
                self._drop_part_ids(mid)
                self._corr_of.pop(mid, None)
        if n:
            final = self._final
            order = self._final_order
            while order and order[0] not in final:
                order.popleft()
        return n

    def _apply_enqueue(
        self,
        rows: Sequence[Sequence[Any]],
        items: Sequence[Receipt | InboundMessage] | None = None,
    ) -> None:
        for i, (delivery_id, account, wire, at) in enumerate(rows):
            queue = self._queues.get(account)
            if queue is None:
                queue = self._queues[account] = _Queue()
            item = items[i] if items is not None else item_from_wire(wire)
            queue.add(DeliveryItem(delivery_id, account, item, at, 0))
            self._delivery_account[delivery_id] = account
            if delivery_id >= self._next_delivery:
                self._next_delivery = delivery_id + 1

    def _remove_delivery(self, delivery_id: int) -> None:
        account = self._delivery_account.pop(delivery_id, None)
        if account is not None:
            self._queues[account].remove(delivery_id)

    def _apply_attempt(self, delivery_id: int) -> None:
        account = self._delivery_account.get(delivery_id)
        if account is None:
            return
        queue = self._queues[account]
        item = queue.items.get(delivery_id)
        if item is not None:
            queue.items[delivery_id] = DeliveryItem(
                item.id, item.account, item.item, item.enqueued_at, item.attempts + 1
            )

    # ------------------------------------------------------------------ messages

    def _check_new(self, message: Message) -> None:
        for mid in (message.id, *message.part_ids):
            if mid in self._live or mid in self._final or mid in self._part_of:
                raise DuplicateMessage(f"message id {mid!r} is already stored")

    @staticmethod
    def _add_record(message: Message) -> list[Any]:
        others = [pid for pid in message.part_ids if pid != message.id]
        return [
            _ADD, message.id, message_to_blob(message), others, int(message.state),
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
            _UPDATE,
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
        return bool(await self._write([_DELETE, message_id]))

    def queue_depth(self) -> int:
        """Live messages not yet handed to a provider (a local counter, O(1))."""
        return len(self._queued)

    # ------------------------------------------------------------------ reassembly parts

    async def add_part(self, part: StoredPart) -> None:
        """Store one part; a part with the same key and seqnum replaces the earlier one."""
        await self._write(
            [
                _PART, part.key, part.seqnum, part.total, part.message_id, bytes(part.payload),
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
        await self._write([_COMPLETE, key, *add[1:]])

    async def drop_parts(self, key: str) -> None:
        await self._write([_DROP, key])

    # ------------------------------------------------------------------ provider correlation

    async def correlate(
        self, provider: str, provider_message_id: str, message_id: str, expires_at: float
    ) -> None:
        await self._write([_CORRELATE, [(provider, provider_message_id, message_id, expires_at)]])

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

    async def expire_correlations(self, now: float) -> int:
        """Drop correlations with ``expires_at <= now`` (in memory and in the archive);
        returns how many."""
        n = await self._archive.expire_correlations(now) if self._archive is not None else 0
        gone = [key for key, (_, expires) in self._corr.items() if expires <= now]
        if not gone:
            await self._write([_UNCORRELATE, []])  # still a write: /readyz uses it as a probe
            return n
        for start in range(0, len(gone), 10_000):
            n += int(await self._write([_UNCORRELATE, gone[start : start + 10_000]]))
        return n

    async def purge_final(self, created_before: float, limit: int = 10_000) -> int:
        """Retention: remove up to ``limit`` final messages, oldest finished first, whose
        ``created_at`` is before ``created_before``; stops at the first younger one (so a
        message is never purged early, at worst a little late). Their correlations go with
        :meth:`expire_correlations`. Archived messages are purged from the archive the same
        way (the archive first: it holds the oldest)."""
        archived = 0
        if self._archive is not None:
            archived = await self._archive.purge(created_before, limit)
            if archived >= limit:
                return archived
            limit -= archived
        ids: list[str] = []
        final = self._final
        for mid in self._final_order:
            if len(ids) >= limit:
                break
            packed = final.get(mid)
            if packed is None:
                continue
            if _decode(_decode(packed)[0])[15] >= created_before:  # created_at
                break
            ids.append(mid)
        if not ids:
            return archived
        return archived + int(await self._write([_PURGE, ids]))

    # ------------------------------------------------------------------ the archive

    def _archive_step(self) -> None:
        """Every second: hand the messages that have been final for ``archive_after`` seconds
        to the archive, one transaction at a time; they leave memory once it is committed."""
        loop = asyncio.get_running_loop()
        self._archive_timer = loop.call_later(_ARCHIVE_INTERVAL, self._archive_step)
        archive = self._archive
        if archive is None or self._archiving:
            return
        horizon = time.monotonic() - self.archive_after
        due, final, corr = self._archive_due, self._final, self._corr
        batch: list[ArchivedMessage] = []
        while due and due[0][0] <= horizon and len(batch) < _ARCHIVE_BATCH:
            mid = due.popleft()[1]
            packed = final.get(mid)
            if packed is None:
                continue  # purged or deleted meanwhile
            corrs = [
                (key[0], key[1], found[1])
                for key in self._corr_of.get(mid, ())
                if (found := corr.get(key)) is not None and found[0] == mid
            ]
            batch.append((mid, packed, tuple(self._other_parts.get(mid, ())), corrs))
        if not batch:
            return
        self._archiving = {m[0] for m in batch}
        try:
            archive.put(batch, lambda result, error: self._archived(batch, error))
        except RuntimeError:  # closed meanwhile
            self._archiving = set()

    def _archived(self, batch: list[ArchivedMessage], error: BaseException | None) -> None:
        self._archiving = set()
        if error is not None:
            # Nothing is lost (memory and the journal still hold them): try again later.
            self._sampled(
                "warning", "store.archive_failed", "archive", error=repr(error)[:200],
                messages=len(batch), retry_in=_ARCHIVE_INTERVAL,
            )  # fmt: skip
            self._archive_due.extendleft((0.0, m[0]) for m in reversed(batch))
            return
        final, corr = self._final, self._corr
        for m in batch:
            mid = m[0]
            if final.pop(mid, None) is None:
                continue
            self._drop_part_ids(mid)
            for key in self._corr_of.pop(mid, ()):
                found = corr.get(key)
                if found is not None and found[0] == mid:
                    del corr[key]
        order = self._final_order
        while order and order[0] not in final:
            order.popleft()

    def archived_count(self) -> int:
        """Messages in the archive (a full count: tests and benchmarks)."""
        return self._archive.count() if self._archive is not None else 0

    def finals_in_memory(self) -> int:
        return len(self._final)

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
        return [_ENQUEUE, rows], ids

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
        await self._write([_DEQUEUE, [delivery_id]])

    def remove_delivery_nowait(self, delivery_id: int) -> None:
        """Acknowledged: gone from memory at once (so no reader sends it again), journaled
        lazily — losing this record (a crash, a full disk) only repeats that receipt."""
        self._remove_delivery(delivery_id)
        self._append([_DEQUEUE, [delivery_id]], _ignore, None)

    async def note_delivery_attempt(self, delivery_id: int) -> None:
        await self._write([_ATTEMPT, delivery_id])

    def note_delivery_attempt_nowait(self, delivery_id: int) -> None:
        self._append([_ATTEMPT, delivery_id], _ignore, None)

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
        await self._write([_DEQUEUE, ids])
        return len(ids)

    def delivery_depths(self) -> dict[str, int]:
        """Items queued per account (accounts that ever had one; for the metrics gauge)."""
        return {account: len(queue.items) for account, queue in self._queues.items()}

    def delivery_depth(self, account: str | None = None) -> int:
        if account is None:
            return len(self._delivery_account)
        queue = self._queues.get(account)
        return len(queue.items) if queue is not None else 0

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
                queue = self._queues[account] = _Queue()
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


def _packed_created_at(packed: bytes) -> float:
    """A final message's created_at, from its packed ``[blob, history]`` (for the archive)."""
    return float(_decode(_decode(packed)[0])[15])


def _history(message_id: str, rows: Iterable[Sequence[Any]]) -> list[StateChange]:
    return [StateChange(message_id, MessageState(state), at, detail) for state, at, detail in rows]


def _ignore(arg: Any, result: Any, error: BaseException | None) -> None:
    return None


__all__ += ["message_from_blob", "message_to_blob", "segment_name"]
