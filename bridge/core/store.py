"""The store port: everything the bridge must not lose.

It lives in ``core`` because the domain (pipeline, dispatcher, receipts) is what depends on it;
:mod:`bridge.store` holds the implementations — the embedded journal store (the default) and a
networked one for several nodes (docs/architecture.md, "arrows point down").

Durability contract: every ``async`` write method returns only once the change is committed to
disk (group commit: many callers share one transaction and one fsync). The SMPP layer answers
ESME_ROK only after :meth:`Store.add_message` (or :meth:`Store.add_part`) has returned, so an
accepted message survives ``kill -9``.

Reads are ``async`` too, so that a networked implementation (Redis, for several nodes) can stand
behind the same port; the embedded store answers them from memory without I/O. Only the
depth counters (:meth:`Store.queue_depth`, :meth:`Store.delivery_depth`) are synchronous: they
are cheap local estimates for gauges and admission control.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bridge.core.model import InboundMessage, Message, MessageState, Receipt

__all__ = ["DeliveryItem", "Done", "StateChange", "Store", "StoredPart", "settle_future"]


#: ``done(arg, result, error)``: how a nowait write reports, on the loop, that it is durable
#: (``error`` None) or failed.
Done = Callable[[Any, Any, BaseException | None], None]


def settle_future(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """A :data:`Done` whose ``arg`` is a future: how implementations turn a nowait write into
    the async one (a future already settled, e.g. cancelled, is left alone)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


@dataclass(frozen=True, slots=True)
class StoredPart:
    """One received part of a concatenated message, kept until the message is whole."""

    key: str  # account | source | destination | reference (the reassembly key)
    seqnum: int  # 1-based
    total: int
    message_id: str  # the id this part got in its submit_sm_resp
    payload: bytes  # the part's user data without the concatenation IE (still encoded)
    received_at: float
    meta: bytes  # the first-part fields the reassembler needs, serialised by its owner


@dataclass(frozen=True, slots=True)
class StateChange:
    """One step of a message's history."""

    message_id: str
    state: MessageState
    at: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class DeliveryItem:
    """A receipt or MO waiting in an account's delivery queue."""

    id: int  # queue position, increasing
    account: str
    item: Receipt | InboundMessage
    enqueued_at: float
    attempts: int = 0


class Store(Protocol):
    # ---------------------------------------------------------------- lifecycle
    async def open(self) -> None: ...
    async def close(self) -> None: ...

    # ---------------------------------------------------------------- messages
    async def add_message(self, message: Message) -> None:
        """Durably store a newly accepted message (state ENROUTE)."""
        ...

    def add_message_nowait(
        self,
        message: Message,
        done: Callable[[Any, Any, BaseException | None], None],
        arg: Any = None,
    ) -> None:
        """The hot path's :meth:`add_message`: append and return at once; ``done(arg, None,
        error)`` runs on the loop when the message is durable (error None) or failed. Raises at
        once what is known at once (a duplicate id, a closed store)."""
        ...

    async def add_messages(self, messages: Sequence[Message]) -> None:
        """Several at once (submit_multi), in one transaction."""
        ...

    async def update_message(
        self,
        message: Message,
        change: StateChange | None = None,
        *,
        correlation: tuple[str, str, float] | None = None,
        other_ids: Sequence[str] = (),
    ) -> None:
        """Persist the message's current fields (state, attempts, provider ids …) and, if given,
        append ``change`` to its history and store ``correlation`` = (provider,
        provider_message_id, expires_at) for it — all in one transaction, so a crash can never
        leave a message taken by a provider without the correlation its report needs.
        ``other_ids`` are more provider ids (other parts) correlated the same way."""
        ...

    async def get_message(self, message_id: str) -> Message | None:
        """A message by any of its ids: the message id or one of its part ids."""
        ...

    async def history(self, message_id: str) -> list[StateChange]: ...

    # Local reads: what this node holds in memory, answered without I/O, for the hot paths that
    # run once per loop pass over a batch (report application). The embedded store holds
    # everything; a networked store answers for what this node has cached and None otherwise.
    def get_message_now(self, message_id: str) -> Message | None: ...
    def history_now(self, message_id: str) -> list[StateChange]: ...
    def lookup_now(self, provider: str, provider_message_id: str) -> str | None: ...

    # Optional, for a networked store (bridge/store/redis.py), looked up with getattr by the
    # report handler: ``prefetch(correlations, message_ids)`` returns None when the local reads
    # above can answer for all of them, else an awaitable that brings the missing ones into
    # this node in one round trip. The embedded store holds everything and has none.

    def update_message_nowait(
        self,
        message: Message,
        change: StateChange | None,
        done: Callable[[Any, Any, BaseException | None], None],
        arg: Any = None,
        *,
        correlation: tuple[str, str, float] | None = None,
        other_ids: Sequence[str] = (),
    ) -> None:
        """:meth:`update_message` with a callback instead of a future (batch paths); the
        message is captured at call time."""
        ...

    async def pending_messages(self, limit: int = 10_000, after_id: str = "") -> list[Message]:
        """Messages not yet in a final state and not yet taken by a provider
        (``provider_message_id`` is None), ordered by id; used to resume after a restart."""
        ...

    async def awaiting_report(self, limit: int = 10_000, after_id: str = "") -> list[Message]:
        """Messages a provider took that have no final state yet (for polling / expiry)."""
        ...

    async def delete_message(self, message_id: str) -> bool:
        """cancel_sm before dispatch: remove the message; False if unknown."""
        ...

    def queue_depth(self) -> int:
        """Messages not final and not yet handed to a provider."""
        ...

    # ---------------------------------------------------------------- reassembly parts
    async def add_part(self, part: StoredPart) -> None: ...

    async def parts(self, key: str) -> list[StoredPart]: ...

    async def all_parts(self) -> list[StoredPart]:
        """Every stored part (to rebuild the reassembly buffer after a restart)."""
        ...

    async def complete_parts(self, key: str, message: Message) -> None:
        """Atomically: delete the parts under ``key`` and add the reassembled ``message``."""
        ...

    async def drop_parts(self, key: str) -> None:
        """Delete the parts of an incomplete message (after its timeout outcome is queued)."""
        ...

    # ---------------------------------------------------------------- provider correlation
    async def correlate(
        self, provider: str, provider_message_id: str, message_id: str, expires_at: float
    ) -> None: ...

    async def lookup(self, provider: str, provider_message_id: str) -> str | None:
        """Our message id for a provider's id, or None (unknown or expired)."""
        ...

    async def expire_correlations(self, now: float) -> int: ...

    async def purge_final(self, created_before: float, limit: int = 10_000) -> int:
        """Retention: delete up to ``limit`` messages in a final state created before
        ``created_before``, with their part ids and history; returns how many.
        Live (ENROUTE) messages are never purged, however old."""
        ...

    # ---------------------------------------------------------------- delivery queues
    async def enqueue_delivery(
        self, account: str, item: Receipt | InboundMessage, at: float
    ) -> int:
        """Durably queue a receipt or MO for an account; returns its queue id."""
        ...

    async def enqueue_deliveries(
        self, items: Sequence[tuple[str, Receipt | InboundMessage]], at: float
    ) -> list[int]: ...

    async def pending_deliveries(
        self, account: str, limit: int = 1000, after: int = 0
    ) -> list[DeliveryItem]:
        """Queued items of an account in queue order, with id > ``after``."""
        ...

    async def delivery_accounts(self) -> list[str]:
        """Accounts with something queued."""
        ...

    def enqueue_deliveries_nowait(
        self,
        items: Sequence[tuple[str, Receipt | InboundMessage]],
        at: float,
        done: Callable[[Any, Any, BaseException | None], None],
        arg: Any = None,
    ) -> list[int]:
        """:meth:`enqueue_deliveries` with a callback; records appended in one call are made
        durable by the same write as any others of the same loop pass."""
        ...

    async def remove_delivery(self, delivery_id: int) -> None:
        """Acknowledged by deliver_sm_resp ESME_ROK: gone for good."""
        ...

    async def note_delivery_attempt(self, delivery_id: int) -> None: ...

    def remove_delivery_nowait(self, delivery_id: int) -> None:
        """:meth:`remove_delivery` without waiting: journaled lazily — losing it (a crash, a
        full disk) only sends that receipt again, which at-least-once allows."""
        ...

    def note_delivery_attempt_nowait(self, delivery_id: int) -> None:
        """:meth:`note_delivery_attempt` without waiting (the count is informational)."""
        ...

    async def expire_deliveries(self, older_than: float) -> int:
        """Drop queued items enqueued before ``older_than``; returns how many."""
        ...

    def delivery_depth(self, account: str | None = None) -> int: ...
