"""The embedded store's state in memory and the one way it changes: applying a journal record.

:class:`MemoryState` holds the live and final messages, their indexes, correlations, reassembly
parts and the per-account delivery queues, and ``_apply`` turns one journal record into a change
of them — both when a write becomes durable and when the journal is replayed at start-up, so
memory never holds what the disk does not (docs/architecture.md, "the engine"). It is apart from
:mod:`bridge.store.embedded` (which writes the records) so that the record format and its meaning
are read in one place; the hot path pays nothing for it (a base class, no extra call).
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import msgspec

from bridge.core.model import InboundMessage, Message, MessageState, Receipt
from bridge.core.store import DeliveryItem, StoredPart
from bridge.store.common import item_from_wire

__all__ = [
    "ADD", "ATTEMPT", "COMPLETE", "CORRELATE", "DELETE", "DEQUEUE", "DROP", "ENQUEUE",
    "PART", "PURGE", "UNCORRELATE", "UPDATE", "AccountQueue", "MemoryState",
]  # fmt: skip

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


# Record kinds (the first element of every journal record).
ADD = 1  # [ADD, id, blob, other_part_ids, state, has_provider_id]
UPDATE = 2  # [UPDATE, id, blob, state, has_provider_id, change|None, correlations]
DELETE = 3  # [DELETE, id]
PART = 4  # [PART, key, seqnum, total, message_id, payload, received_at, meta]
COMPLETE = 5  # [COMPLETE, key, id, blob, other_part_ids, state, has_provider_id]
DROP = 6  # [DROP, key]
CORRELATE = 7  # [CORRELATE, [[provider, provider_id, message_id, expires_at], ...]]
UNCORRELATE = 8  # [UNCORRELATE, [[provider, provider_id], ...]]
PURGE = 9  # [PURGE, [id, ...]]
ENQUEUE = 10  # [ENQUEUE, [[delivery_id, account, item, enqueued_at], ...]]
DEQUEUE = 11  # [DEQUEUE, [delivery_id, ...]]
ATTEMPT = 12  # [ATTEMPT, delivery_id]

_ENROUTE = int(MessageState.ENROUTE)

# --------------------------------------------------------------------------- delivery queue


class AccountQueue:
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



class MemoryState:
    """Everything the embedded store holds, and ``_apply`` (the only writer of it)."""

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
        self._queues: dict[str, AccountQueue] = {}
        self._delivery_account: dict[int, str] = {}
        self._next_delivery = 1
        # message id -> its correlation keys (to move them to the archive with it)
        self._corr_of: dict[str, list[tuple[str, str]]] = {}
        # (monotonic time it became final, id), in that order: due for the archive
        self._archive_due: deque[tuple[float, str]] = deque()
        self._archiving: set[str] = set()  # handed to the archive, not yet committed

    # ------------------------------------------------------------------ apply (memory)

    def _apply(self, rec: Sequence[Any], obj: Any = None) -> Any:
        kind = rec[0]
        if kind == ADD:
            return self._apply_add(rec[1], rec[2], rec[3], rec[4], rec[5], obj)
        if kind == UPDATE:
            return self._apply_update(rec, obj)
        if kind == ENQUEUE:
            return self._apply_enqueue(rec[1], obj)
        if kind == DEQUEUE:
            for delivery_id in rec[1]:
                self._remove_delivery(delivery_id)
            return None
        if kind == ATTEMPT:
            return self._apply_attempt(rec[1])
        if kind == CORRELATE:
            for provider, pid, mid, expires in rec[1]:
                self._corr[(provider, pid)] = (mid, expires)
                self._corr_of.setdefault(mid, []).append((provider, pid))
            return None
        if kind == UNCORRELATE:
            for provider, pid in rec[1]:
                self._corr.pop((provider, pid), None)
            return len(rec[1])
        if kind == PART:
            _, key, seqnum, total, mid, payload, received_at, meta = rec
            self._parts.setdefault(key, {})[seqnum] = StoredPart(
                key, seqnum, total, mid, payload, received_at, meta
            )
            return None
        if kind == COMPLETE:
            self._parts.pop(rec[1], None)
            return self._apply_add(rec[2], rec[3], rec[4], rec[5], rec[6], obj)
        if kind == DROP:
            self._parts.pop(rec[1], None)
            return None
        if kind == DELETE:
            return self._apply_delete(rec[1])
        if kind == PURGE:
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
                queue = self._queues[account] = AccountQueue()
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

