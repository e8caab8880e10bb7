"""The admin API's one door to the store.

Only :class:`~bridge.core.store.Store` protocol methods are used, and only here, so a change in
the store engine is adapted in this module alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from bridge.core.model import Message
from bridge.core.store import DeliveryItem, StateChange, Store

__all__ = ["StoreView"]

#: Queue purge removes items in pages of this many (they share group commits).
_PURGE_PAGE = 500


class StoreView:
    """Read (and, for a queue purge, delete) what the admin API shows."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def message(self, any_id: str) -> Message | None:
        """A message by its id or one of its part ids."""
        return await self._store.get_message(any_id)

    async def by_provider_id(self, providers: Iterable[str], provider_id: str) -> Message | None:
        """The message a provider knows as ``provider_id`` (its correlation not yet expired)."""
        for provider in providers:
            message_id = await self._store.lookup(provider, provider_id)
            if message_id is not None:
                return await self._store.get_message(message_id)
        return None

    async def history(self, message_id: str) -> list[StateChange]:
        return await self._store.history(message_id)

    async def pending_count(self) -> int:
        """Messages accepted and not yet handed to a provider."""
        return self._store.queue_depth()

    async def delivery_depths(self, accounts: Iterable[str]) -> dict[str, int]:
        """Receipts and MO waiting per account (every account named, 0 when none)."""
        depths = {account: 0 for account in accounts}
        for account in await self._store.delivery_accounts():
            depths[account] = self._store.delivery_depth(account)
        return depths

    async def deliveries(self, account: str, limit: int) -> tuple[list[DeliveryItem], int]:
        """The first ``limit`` items of an account's delivery queue, and how many there are."""
        items = await self._store.pending_deliveries(account, limit=limit)
        return items, self._store.delivery_depth(account)

    async def purge_deliveries(self, account: str) -> int:
        """Delete every item queued for ``account``; returns how many. Items taken before the
        purge may still reach the ESME once (a deliver_sm already on the wire)."""
        removed = 0
        after = 0
        while True:
            page = await self._store.pending_deliveries(account, limit=_PURGE_PAGE, after=after)
            if not page:
                return removed
            # Concurrent removals share group commits: one fsync per page, not per item.
            await asyncio.gather(*(self._store.remove_delivery(item.id) for item in page))
            removed += len(page)
            after = page[-1].id
