"""Receipts and MO out: each account's queue sent to its bound ESMEs with a window, at least
once — an item leaves the store only when the ESME answered deliver_sm_resp ESME_ROK.

Nothing here knows SMPP bytes: building the deliver_sm from a
:class:`~bridge.core.model.Receipt` is the SMPP side's job, behind :class:`ReceiptSender`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import structlog

from bridge.core.model import InboundMessage, Receipt
from bridge.core.store import DeliveryItem, Store
from bridge.observability import Metrics

__all__ = ["DeliveryDone", "DeliveryQueue", "ReceiptSender"]

log = structlog.get_logger("bridge.receipts")


# --------------------------------------------------------------------------- delivery queue


_DELIVERY_RESULT = {True: "acked", False: "refused", None: "unsent"}


def _message_id(item: DeliveryItem) -> str | None:
    """The message a queued delivery is about, for its log lines: a receipt's message id; an
    MO message has none (its delivery_id names it)."""
    return item.item.message_id if isinstance(item.item, Receipt) else None


#: How a :meth:`ReceiptSender.send_nowait` ends: ``done(arg, result)`` with True acknowledged
#: (deliver_sm_resp ESME_ROK), False refused by the ESME (error status), None not answered
#: (timeout, connection lost), or the exception that stopped the send.
DeliveryDone = Callable[[Any, bool | BaseException | None], None]


class ReceiptSender(Protocol):
    """The SMPP side as the delivery queue sees it."""

    def has_receiver(self, account: str) -> bool:
        """A receiver or transceiver of ``account`` is bound."""
        ...

    def send_nowait(
        self, account: str, item: Receipt | InboundMessage, done: DeliveryDone, arg: Any
    ) -> bool:
        """Send one deliver_sm now; False (nothing sent) when no bound session of ``account``
        has room in its window. Later ``done(arg, result)`` (see :data:`DeliveryDone`)."""
        ...


@dataclass(eq=False)
class _Lane:
    """One account's worker state; lives only while the account has work and a receiver."""

    account: str
    event: asyncio.Event = field(default_factory=asyncio.Event)
    last_taken: int = 0  # highest queue id read from the store
    inflight: dict[int, DeliveryItem] = field(default_factory=dict)  # sent, not yet answered
    blocked: bool = False  # the last fill found no session with room in its window
    retry: list[tuple[float, int, DeliveryItem]] = field(default_factory=list)  # heap by due
    task: asyncio.Task[None] | None = None


class DeliveryQueue:
    """At-least-once delivery of receipts and MO messages to bound ESMEs.

    Per account, one worker reads the store's queue in order (``pending_deliveries`` after the
    last id it took) and keeps up to ``window`` sends in flight. An item is removed from the store
    only when the ESME acknowledged it; on a refusal (False) or no answer (None) the attempt is
    noted and the item retried after ``retry_delay``, for as long as it is queued. An item the
    ESME keeps refusing is *never* dropped by this class — an ESME bug must not lose receipts;
    ``refused`` counts refusals and a warning is logged every ``warn_after`` attempts of one item.
    Only ``max_age`` expiry (``store.expire_deliveries``, run every ``expire_interval`` and
    logged) removes unacknowledged items; ``max_age=None`` keeps them forever.

    Ordering per account is best effort: sends overlap (window > 1) and a retried item goes out
    after later ones. With ``window=1`` and no retries the order is the queue order.

    No item is ever sent twice at once: an item is owned by exactly one in-flight task or the
    worker's retry heap, and a worker ends (dropping its memory; the store still holds every
    unacknowledged item) only when nothing is in flight, so its successor starts clean from the
    store. Workers start on :meth:`wake` — call it when items are queued *and* when a receiver
    binds — and end when the queue is empty or no receiver is bound.

    Counters (for metrics): ``acked``, ``refused``, ``not_sent``, ``expired``.
    """

    def __init__(
        self,
        store: Store,
        sender: ReceiptSender,
        clock: Callable[[], float],
        *,
        window: int = 64,
        retry_delay: float = 5.0,
        max_age: float | None = 3 * 86400,
        expire_interval: float = 60.0,
        warn_after: int = 10,
        metrics: Metrics | None = None,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._store = store
        self._sender = sender
        self._clock = clock
        self._window = window
        self._retry_delay = retry_delay
        self._max_age = max_age
        self._expire_interval = expire_interval
        self._warn_after = max(warn_after, 1)
        self._lanes: dict[str, _Lane] = {}
        self._running = False
        self._expirer: asyncio.Task[None] | None = None
        self._resume: asyncio.Task[None] | None = None
        self.acked = 0
        self.refused = 0
        self.not_sent = 0
        self.expired = 0
        self.metrics = metrics if metrics is not None else Metrics()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start expiry and a worker for every account with queued items (resume after restart).
        Needs a running event loop."""
        if self._running:
            return
        self._running = True
        if self._max_age is not None:
            self._expirer = asyncio.create_task(self._expire_loop(), name="deliveries:expire")
        self._resume = asyncio.create_task(self._wake_stored(), name="deliveries:resume")

    async def _wake_stored(self) -> None:
        for account in await self._store.delivery_accounts():
            self.wake(account)

    async def stop(self) -> None:
        """Stop all workers. Sends in flight are cancelled; their items stay queued in the store
        and are sent again after the next start (at-least-once)."""
        self._running = False
        tasks: list[asyncio.Task[None]] = []
        if self._expirer is not None:
            tasks.append(self._expirer)
            self._expirer = None
        if self._resume is not None:
            tasks.append(self._resume)
            self._resume = None
        for lane in list(self._lanes.values()):
            lane.inflight.clear()  # their answers are ignored: the store keeps the items
            if lane.task is not None:
                tasks.append(lane.task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._lanes.clear()

    def wake(self, account: str) -> None:
        """Something changed for ``account``: new items queued, or a receiver bound."""
        if not self._running:
            return
        lane = self._lanes.get(account)
        if lane is not None:
            lane.event.set()
            return
        if not self._sender.has_receiver(account):
            return  # nothing to do until a receiver binds (which wakes us again)
        lane = _Lane(account)
        self._lanes[account] = lane
        lane.task = asyncio.create_task(self._run(lane), name=f"deliveries:{account}")

    # ------------------------------------------------------------------ introspection

    def in_flight(self, account: str | None = None) -> int:
        """Sends currently awaiting the ESME's answer (for one account or all)."""
        if account is not None:
            lane = self._lanes.get(account)
            return len(lane.inflight) if lane else 0
        return sum(len(lane.inflight) for lane in self._lanes.values())

    async def drain(self, timeout: float, account: str | None = None) -> bool:
        """Wait until the queue (of ``account``, or of every account) is empty and nothing is in
        flight; False on timeout. For tests and graceful shutdown."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._store.delivery_depth(account) == 0 and self.in_flight(account) == 0:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.005)

    async def expire_now(self) -> int:
        """Drop items older than ``max_age`` (a no-op without one); returns how many."""
        if self._max_age is None:
            return 0
        count = await self._store.expire_deliveries(self._clock() - self._max_age)
        if count:
            self.expired += count
            self.metrics.deliveries_expired.inc(count)
            log.warning("deliveries_expired", count=count, max_age=self._max_age)
        return count

    # ------------------------------------------------------------------ workers

    async def _expire_loop(self) -> None:
        while True:
            try:
                await self.expire_now()
            except Exception:
                log.exception("deliveries_expire_failed")
            await asyncio.sleep(self._expire_interval)

    async def _run(self, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._running:
                lane.event.clear()  # no await until the wait below: no wake can slip through
                receiver = self._sender.has_receiver(lane.account)
                read_failed = False
                if receiver:
                    try:
                        await self._fill(lane, loop.time())
                    except Exception:  # a store read failed: keep the lane, try again later
                        log.exception("delivery_read_failed", account=lane.account)
                        read_failed = True
                if not lane.inflight and not read_failed and (not receiver or not lane.retry):
                    return  # empty, or nobody to send to: the store keeps the rest
                timeout = None
                if read_failed:
                    timeout = self._retry_delay
                elif receiver and lane.blocked and not lane.inflight:
                    timeout = 0.05  # windows held by other requests (enquire_link): look again
                elif receiver and lane.retry and len(lane.inflight) < self._window:
                    timeout = max(lane.retry[0][0] - loop.time(), 0.0)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await lane.event.wait()
        finally:
            if self._lanes.get(lane.account) is lane:
                del self._lanes[lane.account]

    async def _fill(self, lane: _Lane, now: float) -> None:
        """Start sends up to the window: due retries first (they are older), then new items.
        Stops early when no bound session has room in its window (``lane.blocked``)."""
        lane.blocked = False
        while len(lane.inflight) < self._window:
            if lane.retry and lane.retry[0][0] <= now:
                due, order, item = heapq.heappop(lane.retry)
                if not await self._still_queued(item):
                    continue  # expired meanwhile
                if not self._start_send(lane, item):
                    heapq.heappush(lane.retry, (due, order, item))
                    return
                continue
            fresh = await self._store.pending_deliveries(
                lane.account, limit=self._window - len(lane.inflight), after=lane.last_taken
            )
            if not fresh:
                return
            for item in fresh:
                if not self._start_send(lane, item):
                    return
                lane.last_taken = item.id

    async def _still_queued(self, item: DeliveryItem) -> bool:
        found = await self._store.pending_deliveries(item.account, limit=1, after=item.id - 1)
        return bool(found) and found[0].id == item.id

    def _start_send(self, lane: _Lane, item: DeliveryItem) -> bool:
        """Hand one item to the SMPP side — no task: :meth:`_sent` runs when the ESME answers.
        False (nothing sent) when no bound session has room."""
        try:
            sent = self._sender.send_nowait(lane.account, item.item, self._sent, (lane, item))
        except Exception as exc:
            lane.inflight[item.id] = item
            self._sent((lane, item), exc)
            return True
        if not sent:
            lane.blocked = True
            return False
        lane.inflight[item.id] = item
        return True

    def _sent(self, ctx: tuple[_Lane, DeliveryItem], result: bool | BaseException | None) -> None:
        """The ESME's answer to one deliver_sm (or None: no answer / connection lost)."""
        lane, item = ctx
        if lane.inflight.pop(item.id, None) is None:
            return  # stopped meanwhile: the store still holds the item
        if isinstance(result, BaseException):
            log.error(
                "delivery_send_failed",
                message_id=_message_id(item),
                account=lane.account,
                delivery_id=item.id,
                error=repr(result),
            )
            result = None
        # Per receipt, hot path: DEBUG only.
        log.debug(
            "delivery_attempt",
            message_id=_message_id(item),
            account=lane.account,
            delivery_id=item.id,
            result=_DELIVERY_RESULT[result],
        )
        lane.event.set()
        if result is True:
            self.acked += 1
            self.metrics.delivered("acked")
            receipt = item.item
            if isinstance(receipt, Receipt) and not receipt.intermediate:
                latency = max(0.0, self._clock() - receipt.submitted_at)
                self.metrics.receipt_delivery.observe(latency)
            # Journaled lazily: losing this record repeats a receipt, never loses one.
            self._store.remove_delivery_nowait(item.id)
            return
        if result is False:
            self.refused += 1
            self.metrics.delivered("refused")
        else:
            self.not_sent += 1
            self.metrics.delivered("unsent")
        self._store.note_delivery_attempt_nowait(item.id)
        item = replace(item, attempts=item.attempts + 1)
        if result is False and item.attempts % self._warn_after == 0:
            log.warning(
                "delivery_refused_repeatedly",
                message_id=_message_id(item),
                account=lane.account,
                delivery_id=item.id,
                attempts=item.attempts,
                kept=True,
            )
        loop = asyncio.get_running_loop()
        heapq.heappush(lane.retry, (loop.time() + self._retry_delay, item.id, item))
