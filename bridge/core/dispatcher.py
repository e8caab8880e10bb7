"""The dispatcher: hands stored messages to providers, within each provider's limits, until one
takes them (or nothing ever will).

Where a message is, while the dispatcher holds it:

- **waiting** in one time-ordered heap: scheduled for later (``schedule_at``, when its provider
  cannot schedule natively) or backing off after a transient failure (``next_attempt_at``);
  a single timer task moves due messages on;
- **queued** for its current provider: one priority queue per provider (SMPP priority first,
  then FIFO), drained by ``capabilities.concurrency`` consumer tasks that each await the
  provider's rate limiter (a sliding window, bridge.ratelimit) before a send;
- **sending**: a consumer is inside ``provider.send()``; from here it cannot be cancelled.

The current provider is ``message.provider`` (its position in ``message.route`` is the failover
index); it is set as soon as a provider is *tried*, not only once one takes the message, so that
a restart resumes at the same place in the route. ``provider_message_id`` stays None until a
provider takes the message — that is what makes the store list it as pending.
``message.attempts`` counts attempts on the *current* provider (it drives the backoff exponent)
and is reset to 0 on failover.

Outcomes (transient failures retried with backoff, permanent ones failed over along the route;
docs/architecture.md, "One message, socket to receipt", step 4):

- ACCEPTED → provider id stored, then correlated (in that order: a report can only be matched
  once the message row says who took it, so a fast report never races an older copy of the row);
  a final ``Outcome.state`` finishes the message at once;
- PERMANENT → next provider in the route, or, at the end of it, a final REJECTED (or the
  outcome's UNDELIVERABLE/EXPIRED) through the finisher, which queues the receipt;
- TRANSIENT (and any exception from ``send``) → the same provider again after full-jitter
  exponential backoff, ``uniform(0, min(backoff_max, backoff_base * 2**n))``, until the next try
  would fall after the validity deadline: then EXPIRED. ``failover_after`` > 0 moves on to the
  next provider after that many consecutive transient failures (off by default).

Bulk sends (:class:`~bridge.core.provider.BatchProvider`, ``capabilities.max_batch`` > 1):
when a sender is about to send a message whose provider batches and whose ``batch_key`` is not
None, it takes along the other messages queued for that provider with the same key (at most
``max_batch``) and sends them in one ``send_batch`` call — one rate-limiter slot, one request.
Each message then goes on with its own outcome exactly as after ``send`` (see
:meth:`Dispatcher._attempt_batch`). Nothing waits for a batch to fill: only what is already
queued goes along (a submit_multi's destinations are queued together; a burst queues while the
rate limiter makes senders wait).

Every state change is persisted for the restart; :meth:`Dispatcher.start` re-submits the store's
pending messages and polls providers for the messages that were awaiting a report (push reports
sent while we were down are lost; the sandbox's timers die with the process).
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from bridge.core.dispatch_queues import Finisher
from bridge.core.dispatch_send import Senders
from bridge.core.model import Message, MessageState

__all__ = ["Dispatcher", "Finisher"]

log = structlog.get_logger("bridge.dispatch")


class Dispatcher(Senders):
    """Sends stored messages through their routes (see the module docstring).

    ``submit()`` is synchronous and never blocks: the message is already durable, so the SMPP
    layer answers at once and the dispatcher catches up. ``clock`` is wall-clock seconds (the
    stored times are wall clock); the waiting itself uses the event loop's timers.
    """
    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start consumers and timers, then resume after a restart: every pending message in
        the store is re-submitted, and messages awaiting a report are polled once from every
        provider (in the poll task, so a slow provider does not hold up the start)."""
        if self._running:
            return
        self._running, self._stopping = True, False
        for name, provider in self.providers.items():
            for i in range(max(1, provider.capabilities.concurrency)):
                task = asyncio.create_task(self._consume(name, provider), name=f"send-{name}-{i}")
                self._consumers.append(task)
        self._timer_task = asyncio.create_task(self._timer_loop(), name="dispatch-timer")
        await self._finish_interrupted_sends()
        resumed = 0
        async for message in self._scan(self.store.pending_messages):
            if message.id not in self._entries:
                self.submit(message)
                resumed += 1
        if resumed:
            log.info("dispatch_resumed", messages=resumed)
        self._poll_task = asyncio.create_task(self._poll_loop(), name="dispatch-poll")
        if self.breaker_health_interval > 0:
            self._watch_task = asyncio.create_task(self._breaker_watch(), name="breaker-watch")

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work. Sends under way finish (up to ``timeout``, then they are cancelled
        — the message stays pending in the store and is re-sent after the restart); messages
        still queued or waiting stay in the store for the next start."""
        if not self._running:
            return
        self._stopping = True
        for task in (self._timer_task, self._poll_task, self._watch_task):
            if task is not None:
                task.cancel()
        for task in self._consumers:
            if task not in self._busy:
                task.cancel()
        tasks = [
            t
            for t in (*self._consumers, self._timer_task, self._poll_task, self._watch_task)
            if t is not None
        ]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._recording:
            # Acceptances still on their way to the journal: a message the provider took must
            # not be sent again by the next start. Bounded: a store that refuses for longer
            # leaves them pending (sent again after the restart; see the README).
            self._recorded = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recorded.wait(), timeout)
            self._recorded = None
        self._consumers.clear()
        self._busy.clear()
        self._timer_task = self._poll_task = self._watch_task = None
        self._running = False

    # ------------------------------------------------------------------ the public surface

    def submit(self, message: Message) -> None:
        """Take a stored, routed message (``message.route`` set). Never blocks.

        It resumes at ``message.provider`` when that is in the route (a restart mid-route),
        else at the start. A message already held, final, or already taken by a provider is
        ignored.
        """
        if (
            message.id in self._entries
            or message.state.is_final
            or message.provider_message_id is not None
        ):
            return
        if not message.created_at:
            message.created_at = self.clock()  # validity needs a start; the pipeline sets it
        start = 0
        if message.provider is not None and message.provider in message.route:
            start = message.route.index(message.provider)
        name = self._next_provider(message, start)
        if name is None:
            self._spawn(
                self._finish_unheld(
                    message, MessageState.REJECTED, 0, "no configured provider in the route"
                )
            )
            return
        if name != message.provider:
            message.provider = name
            message.attempts = 0
        self._place(message, name)

    def cancel(self, message_id: str) -> bool:
        """Withdraw a message not yet handed to a provider (cancel_sm, replace_sm).

        True if it was queued or waiting: it will not be sent, and the caller finishes or deletes
        it in the store. False if unknown here, already final, or a send is under way.
        """
        entry = self._entries.get(message_id)
        if entry is None or entry.status == "sending":
            return False
        del self._entries[message_id]
        self._ready[entry.provider].pop(message_id, None)
        self._unkey(entry)
        return True

    def queue_depth(self, provider: str) -> int:
        """Messages ready to go to ``provider`` (not waiting for a due time, not in flight)."""
        return len(self._ready.get(provider, ()))

    def oldest_age(self, provider: str, now: float) -> float:
        """Seconds the longest-ready message for ``provider`` has been queued (0 when none)."""
        ready = self._ready.get(provider)
        if not ready:
            return 0.0
        return max(0.0, now - next(iter(ready.values())).since)

    def pause(self, provider: str) -> bool:
        """Stop sending to ``provider`` until :meth:`resume`; False if it was paused already.
        A send under way finishes."""
        if provider in self.paused:
            return False
        self.paused.add(provider)
        self._resumed[provider].clear()
        return True

    def resume(self, provider: str) -> bool:
        """Undo :meth:`pause`; False if it was not paused."""
        if provider not in self.paused:
            return False
        self.paused.discard(provider)
        self._resumed[provider].set()
        return True

    def where(self, message_id: str) -> tuple[str, str] | None:
        """(status, provider) of a message the dispatcher holds: waiting, queued or sending."""
        entry = self._entries.get(message_id)
        return None if entry is None else (entry.status, entry.provider)

    @property
    def held(self) -> int:
        """Messages the dispatcher holds: waiting, queued or being sent."""
        return len(self._entries)
