"""In-memory test doubles for the core: a :class:`~bridge.core.store.Store` without a disk.

:class:`InMemoryStore` follows the Protocol's docstrings (not the SQLite implementation's
internals), so a core test that passes against it relies only on the contract:

* objects are copied in and out, as a real store serialises them: changing a
  :class:`~bridge.core.model.Message` has no effect until ``update_message``;
* every ``async`` write yields to the event loop once (a real store awaits its group commit), so
  concurrency bugs between two writers can show up;
* ``fail_writes`` makes the next N async writes raise :class:`StoreError`, to test error paths.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import replace
from typing import Any

from bridge.core.model import InboundMessage, Message, Receipt
from bridge.core.store import DeliveryItem, StateChange, StoredPart

__all__ = ["InMemoryStore", "StoreError"]


class StoreError(Exception):
    """An injected write failure."""


def _copy(message: Message) -> Message:
    # Address is frozen; the two lists are the only mutable fields.
    return replace(message, part_ids=list(message.part_ids), route=list(message.route))


class InMemoryStore:
    """A faithful, non-durable implementation of the Store Protocol."""

    def __init__(self) -> None:
        self.messages: dict[str, Message] = {}
        self._part_index: dict[str, str] = {}  # part id -> message id
        self._history: dict[str, list[StateChange]] = {}
        self._parts: dict[str, dict[int, StoredPart]] = {}
        self._correlations: dict[tuple[str, str], tuple[str, float]] = {}
        self._deliveries: dict[str, dict[int, DeliveryItem]] = {}  # account -> id -> item
        self._next_delivery_id = 1
        self.opened = False
        self.fail_writes = 0
        self._pending: set[asyncio.Future[None]] = set()  # nowait writes under way
        self.writes = 0

    async def _write(self) -> None:
        """The commit point of every async write."""
        await asyncio.sleep(0)
        self.writes += 1
        if self.fail_writes > 0:
            self.fail_writes -= 1
            raise StoreError("injected write failure")

    # ---------------------------------------------------------------- lifecycle
    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.opened = False

    # ---------------------------------------------------------------- messages
    def _put(self, message: Message) -> None:
        self.messages[message.id] = _copy(message)
        for part_id in message.part_ids:
            if part_id != message.id:
                self._part_index[part_id] = message.id
        self._history.setdefault(message.id, [])

    async def add_message(self, message: Message) -> None:
        await self._write()
        self._put(message)

    def add_message_nowait(self, message: Message, done: Any, arg: Any = None) -> None:
        """Like the real store: durable (here: applied) at the end of this loop pass."""
        if message.id in self.messages:
            raise ValueError(f"duplicate message id {message.id}")
        snapshot = _copy(message)

        def land() -> None:
            if self.fail_writes:
                self.fail_writes -= 1
                done(arg, None, StoreError("injected write failure"))
                return
            self._put(snapshot)
            done(arg, None, None)

        asyncio.get_running_loop().call_soon(land)

    async def add_messages(self, messages: Sequence[Message]) -> None:
        await self._write()
        for message in messages:
            self._put(message)

    async def update_message(
        self,
        message: Message,
        change: StateChange | None = None,
        *,
        correlation: tuple[str, str, float] | None = None,
        other_ids: Sequence[str] = (),
    ) -> None:
        """An unknown id (cancelled meanwhile) is ignored, history included; part ids are fixed
        when the message is added (as in the SQLite store)."""
        await self._write()
        current = self.messages.get(message.id)
        if current is None:
            return
        if correlation is not None:
            for pmid in (correlation[1], *other_ids):
                self._correlations[(correlation[0], pmid)] = (message.id, correlation[2])
        self.messages[message.id] = replace(_copy(message), part_ids=list(current.part_ids))
        if change is not None:
            self._history.setdefault(message.id, []).append(change)

    def get_message_now(self, message_id: str) -> Message | None:
        message = self.messages.get(self._part_index.get(message_id, message_id))
        return _copy(message) if message is not None else None

    def history_now(self, message_id: str) -> list[StateChange]:
        return list(self._history.get(self._part_index.get(message_id, message_id), []))

    def pending_messages_now(self, limit: int = 10_000, after_id: str = "") -> list[Message]:
        found = sorted(
            (
                m
                for m in self.messages.values()
                if not m.state.is_final and m.provider_message_id is None and m.id > after_id
            ),
            key=lambda m: m.id,
        )
        return [_copy(m) for m in found[:limit]]

    def awaiting_report_now(self, limit: int = 10_000, after_id: str = "") -> list[Message]:
        found = sorted(
            (
                m
                for m in self.messages.values()
                if not m.state.is_final and m.provider_message_id is not None and m.id > after_id
            ),
            key=lambda m: m.id,
        )
        return [_copy(m) for m in found[:limit]]

    async def delete_message(self, message_id: str) -> bool:
        await self._write()
        message = self.messages.pop(message_id, None)
        if message is None:
            return False
        for part_id in message.part_ids:
            self._part_index.pop(part_id, None)
        self._history.pop(message_id, None)
        return True

    def queue_depth(self) -> int:
        return sum(
            1
            for m in self.messages.values()
            if not m.state.is_final and m.provider_message_id is None
        )

    # ---------------------------------------------------------------- reassembly parts
    async def add_part(self, part: StoredPart) -> None:
        await self._write()
        self._parts.setdefault(part.key, {})[part.seqnum] = part

    def parts_now(self, key: str) -> list[StoredPart]:
        return [p for _, p in sorted(self._parts.get(key, {}).items())]

    def all_parts_now(self) -> list[StoredPart]:
        return [p for key in self._parts for p in self.parts_now(key)]

    async def complete_parts(self, key: str, message: Message) -> None:
        await self._write()
        self._parts.pop(key, None)
        self._put(message)

    async def drop_parts(self, key: str) -> None:
        await self._write()
        self._parts.pop(key, None)

    # ---------------------------------------------------------------- provider correlation
    async def correlate(
        self, provider: str, provider_message_id: str, message_id: str, expires_at: float
    ) -> None:
        await self._write()
        self._correlations[(provider, provider_message_id)] = (message_id, expires_at)

    def lookup_now(self, provider: str, provider_message_id: str) -> str | None:
        found = self._correlations.get((provider, provider_message_id))
        return found[0] if found is not None else None

    async def purge_final(self, created_before: float, limit: int = 10_000) -> int:
        await self._write()
        gone = [
            m for m in self.messages.values() if m.state.is_final and m.created_at < created_before
        ][:limit]
        for m in gone:
            del self.messages[m.id]
            self._history.pop(m.id, None)
            for pid in m.part_ids:
                self._part_index.pop(pid, None)
        return len(gone)

    async def expire_correlations(self, now: float) -> int:
        await self._write()
        gone = [k for k, (_, expires_at) in self._correlations.items() if expires_at <= now]
        for k in gone:
            del self._correlations[k]
        return len(gone)

    # ---------------------------------------------------------------- delivery queues
    def _enqueue(self, account: str, item: Receipt | InboundMessage, at: float) -> int:
        delivery_id = self._next_delivery_id
        self._next_delivery_id += 1
        self._deliveries.setdefault(account, {})[delivery_id] = DeliveryItem(
            delivery_id, account, item, at
        )
        return delivery_id

    async def enqueue_delivery(
        self, account: str, item: Receipt | InboundMessage, at: float
    ) -> int:
        await self._write()
        return self._enqueue(account, item, at)

    async def enqueue_deliveries(
        self, items: Sequence[tuple[str, Receipt | InboundMessage]], at: float
    ) -> list[int]:
        await self._write()
        return [self._enqueue(account, item, at) for account, item in items]

    def pending_deliveries_now(
        self, account: str, limit: int = 1000, after: int = 0
    ) -> list[DeliveryItem]:
        out: list[DeliveryItem] = []
        for delivery_id, item in self._deliveries.get(account, {}).items():  # insertion = id order
            if delivery_id > after:
                out.append(item)
                if len(out) >= limit:
                    break
        return out

    def delivery_accounts_now(self) -> list[str]:
        return sorted(account for account, items in self._deliveries.items() if items)

    async def remove_delivery(self, delivery_id: int) -> None:
        await self._write()
        for items in self._deliveries.values():
            if items.pop(delivery_id, None) is not None:
                return

    def update_message_nowait(
        self,
        message: Message,
        change: StateChange | None,
        done: Any,
        arg: Any = None,
        *,
        correlation: tuple[str, str, float] | None = None,
        other_ids: Sequence[str] = (),
    ) -> None:
        snapshot = _copy(message)
        self._settle_later(
            self.update_message(snapshot, change, correlation=correlation, other_ids=other_ids),
            done,
            arg,
        )

    def enqueue_deliveries_nowait(
        self,
        items: Sequence[tuple[str, Receipt | InboundMessage]],
        at: float,
        done: Any,
        arg: Any = None,
    ) -> list[int]:
        ids = list(range(self._next_delivery_id, self._next_delivery_id + len(items)))
        self._settle_later(self.enqueue_deliveries(items, at), done, arg)
        return ids

    def _settle_later(self, write: Awaitable[object], done: Any, arg: Any) -> None:
        """Run ``write`` (one of the async methods) as a task, then ``done(arg, None, error)``:
        what the ``*_nowait`` variants promise, without a future for the caller."""

        async def run() -> None:
            try:
                await write
            except Exception as exc:
                done(arg, None, exc)
                return
            done(arg, None, None)

        future = asyncio.ensure_future(run())
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    def _later(self, apply: Any) -> None:
        def land() -> None:
            if self.fail_writes:
                self.fail_writes -= 1
                return  # a lost lazy write: nothing changes
            apply()

        asyncio.get_running_loop().call_soon(land)

    def remove_delivery_nowait(self, delivery_id: int) -> None:
        for items in self._deliveries.values():  # like the real store: gone from memory at once
            if items.pop(delivery_id, None) is not None:
                return

    def note_delivery_attempt_nowait(self, delivery_id: int) -> None:
        def apply() -> None:
            for items in self._deliveries.values():
                item = items.get(delivery_id)
                if item is not None:
                    items[delivery_id] = replace(item, attempts=item.attempts + 1)
                    return

        self._later(apply)

    async def note_delivery_attempt(self, delivery_id: int) -> None:
        await self._write()
        for items in self._deliveries.values():
            item = items.get(delivery_id)
            if item is not None:
                items[delivery_id] = replace(item, attempts=item.attempts + 1)
                return

    async def expire_deliveries(self, older_than: float) -> int:
        await self._write()
        count = 0
        for items in self._deliveries.values():
            gone = [i for i, item in items.items() if item.enqueued_at < older_than]
            for i in gone:
                del items[i]
            count += len(gone)
        return count

    def delivery_depth(self, account: str | None = None) -> int:
        if account is not None:
            return len(self._deliveries.get(account, {}))
        return sum(len(items) for items in self._deliveries.values())

    async def get_message(self, message_id: str) -> Message | None:
        return self.get_message_now(message_id)

    async def history(self, message_id: str) -> list[StateChange]:
        return self.history_now(message_id)

    async def pending_messages(self, limit: int = 10_000, after_id: str = "") -> list[Message]:
        return self.pending_messages_now(limit, after_id)

    async def awaiting_report(self, limit: int = 10_000, after_id: str = "") -> list[Message]:
        return self.awaiting_report_now(limit, after_id)

    async def parts(self, key: str) -> list[StoredPart]:
        return self.parts_now(key)

    async def all_parts(self) -> list[StoredPart]:
        return self.all_parts_now()

    async def lookup(self, provider: str, provider_message_id: str) -> str | None:
        return self.lookup_now(provider, provider_message_id)

    async def pending_deliveries(
        self, account: str, limit: int = 1000, after: int = 0
    ) -> list[DeliveryItem]:
        return self.pending_deliveries_now(account, limit, after)

    async def delivery_accounts(self) -> list[str]:
        return self.delivery_accounts_now()
