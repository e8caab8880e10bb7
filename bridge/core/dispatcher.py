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
import heapq
import itertools
import random
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Hashable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog

from bridge.core.breaker import BreakerState, CircuitBreaker
from bridge.core.model import DeliveryReport, Message, MessageState, Outcome, OutcomeKind
from bridge.core.provider import BatchProvider, Provider
from bridge.core.store import StateChange, Store
from bridge.observability import Metrics, ProviderMetrics, SampledLog
from bridge.ratelimit import limiter_for_rate

__all__ = ["Dispatcher", "Finisher"]


class RateLimiter(Protocol):
    """What a provider's send limiter offers: the sliding window of bridge.ratelimit, or a
    cluster-wide one (bridge.store.cluster_limits)."""

    async def acquire(self) -> None: ...


log = structlog.get_logger("bridge.dispatch")

#: The timer never sleeps longer than this, so a wall-clock step (NTP) is noticed soon.
_MAX_SLEEP = 1.0
#: Caps the backoff exponent so ``2 ** n`` stays a sane float.
_MAX_EXPONENT = 62
#: Final states a PERMANENT outcome may carry; anything else ends as REJECTED.
_FAILURE_STATES = frozenset(
    {MessageState.REJECTED, MessageState.UNDELIVERABLE, MessageState.EXPIRED}
)


class Finisher(Protocol):
    """What the dispatcher needs of :class:`bridge.core.reports.ReportHandler`."""

    def finish(
        self, message: Message, state: MessageState, error_code: int = 0, detail: str = ""
    ) -> Awaitable[object]:
        """Record a final state the bridge decided and queue the receipts."""
        ...

    def on_report(self, report: DeliveryReport) -> Awaitable[object]:
        """Apply a provider's report (here: one obtained by polling)."""
        ...

    def correlated(self, provider: str, provider_message_id: str) -> Awaitable[object] | None:
        """The correlation for a provider id is stored: a report that came early can apply
        (None when there was none)."""
        ...


_Status = Literal["waiting", "queued", "sending"]


@dataclass(eq=False, slots=True)
class _Entry:
    """The dispatcher's hold on one message. A new entry is made each time the message moves
    (due, failover); the heap and queues drop entries that are no longer the current one, so
    cancelling is O(1)."""

    message: Message
    provider: str
    status: _Status
    since: float = 0.0  # when it became ready to send (for oldest_age)
    key: Hashable | None = None  # batch key, for a provider that sends in bulk


@dataclass(eq=False, slots=True)
class _Taken:
    """A provider's acceptance of a message, on its way to the journal."""

    message: Message
    outcome: Outcome
    provider: str
    at: float


def _log_failure(future: asyncio.Future[object]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("dispatch_followup_failed", error=repr(future.exception())[:200])


class Dispatcher:
    """Sends stored messages through their routes (see the module docstring).

    ``submit()`` is synchronous and never blocks: the message is already durable, so the SMPP
    layer answers at once and the dispatcher catches up. ``clock`` is wall-clock seconds (the
    stored times are wall clock); the waiting itself uses the event loop's timers.
    """

    def __init__(
        self,
        store: Store,
        providers: Mapping[str, Provider],
        finisher: Finisher,
        clock: Callable[[], float] = time.time,
        *,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
        default_validity: float = 48 * 3600,
        correlation_ttl: float = 14 * 86400,
        poll_interval: float = 60.0,
        poll_backoff_max: float = 1800.0,
        push_poll_after: float = 900.0,
        poll_batch: int = 100,
        failover_after: int = 0,
        page_size: int = 1000,
        on_dispatched: Callable[[], None] | None = None,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        breaker_failures: int = 10,
        breaker_cooldown: float = 5.0,
        breaker_cooldown_max: float = 30.0,
        breaker_health_interval: float = 5.0,
        retry_delay: float = 1.0,
    ) -> None:
        self.store = store
        self.providers = providers
        self.finisher = finisher
        self.clock = clock
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.default_validity = default_validity
        self.correlation_ttl = correlation_ttl
        self.poll_interval = poll_interval
        self.poll_backoff_max = poll_backoff_max
        self.push_poll_after = push_poll_after
        self.poll_batch = max(1, poll_batch)
        self.failover_after = failover_after
        self.page_size = max(1, page_size)
        self.on_dispatched = on_dispatched
        #: How long to wait before writing again an acceptance the store refused.
        self.retry_delay = retry_delay
        #: While a circuit is open its provider's health check is asked this often; a healthy
        #: answer closes it (README, "Reliability"). 0: only the cooldown's probe send.
        self.breaker_health_interval = breaker_health_interval
        self.store_retries = 0
        self._recording = 0  # acceptances on their way to the journal
        self._recorded: asyncio.Event | None = None  # set when _recording drops to 0 (stop)
        self._rng = rng or random.Random()
        self.metrics = metrics if metrics is not None else Metrics()
        self._metrics: dict[str, ProviderMetrics] = {
            name: self.metrics.provider(name) for name in providers
        }

        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, _Entry]] = []
        self._seq = itertools.count()
        self._queues: dict[str, asyncio.PriorityQueue[tuple[int, int, _Entry]]] = {}
        self._ready: dict[str, dict[str, _Entry]] = {}  # insertion order = ready order
        self._limiters: dict[str, RateLimiter] = {}
        #: Providers that send in bulk, and their queued entries by batch key (ready order).
        self._batchers: dict[str, BatchProvider] = {
            name: p
            for name, p in providers.items()
            if p.capabilities.max_batch > 1 and isinstance(p, BatchProvider)
        }
        self._keyed: dict[str, dict[Hashable, dict[str, _Entry]]] = {
            name: {} for name in self._batchers
        }
        #: Per provider (see bridge.core.breaker); times are the loop's monotonic clock.
        self.breakers = {
            name: CircuitBreaker(breaker_failures, breaker_cooldown, breaker_cooldown_max)
            for name in providers
        }
        for name, provider in providers.items():
            self._queues[name] = asyncio.PriorityQueue()
            self._ready[name] = {}
            # No burst above the documented limit (README, "Reliability"): a sliding window,
            # shared with the provider's own polls and balance calls when it has one.
            limiter = getattr(provider, "limiter", None) or limiter_for_rate(
                provider.capabilities.requests_per_second
            )
            if limiter is not None:
                self._limiters[name] = limiter
        # Per-message failures come in floods when a provider is down: one line per provider
        # and event every 10 s (with the number not logged); the metrics count every one.
        self._sampled = SampledLog(log)
        self._wake = asyncio.Event()
        self._consumers: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._timer_task: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._recovery_polls: set[str] = set()  # providers with a recovery poll under way
        self._poll_due: dict[str, tuple[float, int]] = {}  # message id -> (next poll, polls)
        #: Providers the operator paused (admin API): they get no sends; their messages fail
        #: over or wait, as on an open circuit. Set on resume, so waiting senders go at once.
        self.paused: set[str] = set()
        self._resumed: dict[str, asyncio.Event] = {name: asyncio.Event() for name in providers}
        self._running = False
        self._stopping = False

    def set_limiter(self, provider: str, limiter: RateLimiter) -> None:
        """Replace a provider's rate limiter (anything with ``async acquire()``) before
        :meth:`start` — cluster mode shares one across nodes (bridge/store/cluster_limits.py)."""
        self._limiters[provider] = limiter

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

    # ------------------------------------------------------------------ placing

    def _next_provider(self, message: Message, start: int) -> str | None:
        """The first configured provider in the route from index ``start`` on."""
        for name in message.route[start:]:
            if name in self.providers:
                return name
            log.warning(
                "route_provider_unknown",
                message_id=message.id,
                account=message.account,
                provider=name,
            )
        return None

    def _deadline(self, message: Message) -> float:
        """When the message expires. The default validity counts from when it is due to be
        sent, so a message scheduled beyond the default validity is not born expired."""
        if message.expire_at is not None:
            return message.expire_at
        return max(message.created_at, message.schedule_at or 0.0) + self.default_validity

    def _place(self, message: Message, name: str) -> None:
        """Queue for ``name`` now, or wait in the heap until it is due."""
        due = message.next_attempt_at
        if message.schedule_at is not None and not self.providers[name].capabilities.scheduling:
            due = max(due, message.schedule_at)
        entry = _Entry(message, name, "waiting")
        self._entries[message.id] = entry
        if due > self.clock():
            if not self._heap or due < self._heap[0][0]:
                self._wake.set()
            heapq.heappush(self._heap, (due, next(self._seq), entry))
        else:
            self._make_ready(entry)

    def _make_ready(self, entry: _Entry) -> None:
        entry.status = "queued"
        entry.since = self.clock()
        self._ready[entry.provider][entry.message.id] = entry
        batcher = self._batchers.get(entry.provider)
        if batcher is not None:
            entry.key = batcher.batch_key(entry.message)
            if entry.key is not None:
                keyed = self._keyed[entry.provider]
                keyed.setdefault(entry.key, {})[entry.message.id] = entry
        item = (-entry.message.priority, next(self._seq), entry)
        self._queues[entry.provider].put_nowait(item)

    def _unkey(self, entry: _Entry) -> None:
        """Drop a queued entry from its batch key's group (it is sent, cancelled or moved)."""
        if entry.key is None:
            return
        group = self._keyed[entry.provider].get(entry.key)
        if group is not None and group.get(entry.message.id) is entry:
            del group[entry.message.id]
            if not group:
                del self._keyed[entry.provider][entry.key]

    def _take_batch(self, entry: _Entry) -> list[_Entry]:
        """``entry`` (about to be sent) and the other queued entries with its batch key, up to
        the provider's ``max_batch``, all marked sending."""
        name = entry.provider
        self._unkey(entry)
        batch = [entry]
        if entry.key is None:
            return batch
        group = self._keyed[name].get(entry.key)
        if not group:
            return batch
        limit = self.providers[name].capabilities.max_batch
        while group and len(batch) < limit:
            other_id = next(iter(group))  # the oldest: O(1) however long the group is
            other = group.pop(other_id)
            if not self._current(other, "queued"):
                continue
            other.status = "sending"
            self._ready[name].pop(other.message.id, None)
            batch.append(other)
        if not group:
            self._keyed[name].pop(entry.key, None)
        return batch

    def _current(self, entry: _Entry, status: _Status) -> bool:
        return entry.status == status and self._entries.get(entry.message.id) is entry

    async def _timer_loop(self) -> None:
        """Move due messages from the heap to their provider's queue."""
        while True:
            now = self.clock()
            while self._heap and self._heap[0][0] <= now:
                _, _, entry = heapq.heappop(self._heap)
                if self._current(entry, "waiting"):
                    self._make_ready(entry)
            timeout = min(self._heap[0][0] - now, _MAX_SLEEP) if self._heap else None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    # ------------------------------------------------------------------ sending

    async def _consume(self, name: str, provider: Provider) -> None:
        """One of ``concurrency`` workers for a provider."""
        queue = self._queues[name]
        limiter = self._limiters.get(name)
        task = asyncio.current_task()
        assert task is not None
        breaker = self.breakers[name]
        while not self._stopping:
            _, _, entry = await queue.get()
            if not self._current(entry, "queued"):
                continue  # cancelled or superseded while queued
            probe = False
            if name in self.paused:
                if await self._fail_over_open_circuit(entry, "paused"):
                    continue
                await self._wait_while_paused(entry)
                if not self._current(entry, "queued") or self._stopping:
                    continue  # cancelled; or stopping: the store keeps it for the next start
                # Resumed, or still paused with its validity over: _attempt expires it.
            if breaker.is_open:
                if await self._fail_over_open_circuit(entry):
                    continue
                probe = await self._wait_for_circuit(entry, breaker)
                if not self._current(entry, "queued"):
                    if probe:
                        breaker.abandon_probe(self._now())
                    continue
            if limiter is not None:
                await limiter.acquire()
                if not self._current(entry, "queued"):
                    continue
            entry.status = "sending"
            self._ready[name].pop(entry.message.id, None)
            if name in self._batchers:
                batch = self._take_batch(entry)
                if len(batch) > 1:
                    await self._send_batch(batch, task, probe)
                    continue
            self._busy.add(task)
            try:
                await self._attempt(entry, provider)
                if probe and breaker.state is BreakerState.HALF_OPEN:
                    breaker.abandon_probe(self._now())  # it expired instead of being sent
            except Exception:
                # A bug or a store failure: the message stays pending in the store and is
                # resumed by the next start; dropping it here keeps this worker alive.
                log.exception(
                    "dispatch_failed",
                    message_id=entry.message.id,
                    account=entry.message.account,
                    provider=name,
                )
                self._release(entry)
            finally:
                self._busy.discard(task)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def _record_breaker(self, name: str, outcome: Outcome) -> None:
        breaker = self.breakers[name]
        was_open = breaker.is_open
        if breaker.record(outcome.kind is not OutcomeKind.TRANSIENT, self._now()):
            log.warning(
                "circuit_open",
                provider=name,
                failures=breaker.failures,
                cooldown=breaker.cooldown,
                detail=outcome.detail,
            )
        elif was_open and not breaker.is_open:
            log.info("circuit_closed", provider=name, by="probe")
            self._recovered(name)

    def _recovered(self, name: str) -> None:
        """A provider's circuit closed: reports it pushed while it was unreachable may be lost,
        so its messages awaiting a report are polled now, not after ``push_poll_after``."""
        if name in self._recovery_polls or self._stopping:
            return
        self._recovery_polls.add(name)

        async def poll() -> None:
            try:
                await self.poll_now(everyone=True, only=name)
            except Exception:
                log.exception("dispatch_poll_failed", provider=name)
            finally:
                self._recovery_polls.discard(name)

        self._spawn(poll())

    async def _breaker_watch(self) -> None:
        """Every ``breaker_health_interval``: ask the health check of each provider whose
        circuit is open; a healthy answer closes the circuit at once (senders waiting for it
        go within a second), instead of after a cooldown of up to ``breaker_cooldown_max``."""
        while True:
            await asyncio.sleep(self.breaker_health_interval)
            open_ = [
                name
                for name, b in self.breakers.items()
                if b.is_open and name not in self.paused and _has_health_check(self.providers[name])
            ]
            if not open_:
                continue
            results = await asyncio.gather(
                *(self._healthy(self.providers[name]) for name in open_)
            )
            for name, ok in zip(open_, results, strict=True):
                if ok and self.breakers[name].close():
                    log.info("circuit_closed", provider=name, by="health_check")
                    self._recovered(name)

    async def _healthy(self, provider: Provider) -> bool:
        try:
            async with asyncio.timeout(max(self.breaker_health_interval, 2.0)):
                return bool(await provider.healthy())
        except Exception:
            return False

    async def _fail_over_open_circuit(self, entry: _Entry, why: str = "circuit open") -> bool:
        """A message for a provider whose circuit is open (or that is paused) goes to the next
        provider of its route at once, when it has one (no attempt is spent on the dead one)."""
        name = entry.provider
        entry.status = "sending"
        if await self._failover(entry, f"{name}: {why}"):
            self._ready[name].pop(entry.message.id, None)
            if name in self._batchers:
                self._unkey(entry)
            return True
        entry.status = "queued"  # the end of its route: it waits for the circuit
        return False

    async def _wait_while_paused(self, entry: _Entry) -> None:
        """Wait until the provider is resumed, the message's validity ends (it is then expired
        on time by _attempt) or the dispatcher stops."""
        resumed = self._resumed[entry.provider]
        while entry.provider in self.paused and not self._stopping:
            remaining = self._deadline(entry.message) - self.clock()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(resumed.wait(), min(remaining, _MAX_SLEEP))

    async def _wait_for_circuit(self, entry: _Entry, breaker: CircuitBreaker) -> bool:
        """Wait until the circuit lets a send through or the message's validity ends (it is
        then expired on time by _attempt). True when this sender is the half-open probe."""
        while True:
            delay = breaker.wait(self._now())
            if delay <= 0:
                return breaker.state is BreakerState.HALF_OPEN
            remaining = self._deadline(entry.message) - self.clock()
            if remaining <= 0 or self._stopping:
                return False
            await asyncio.sleep(min(delay, remaining, 1.0))

    async def _attempt(self, entry: _Entry, provider: Provider) -> None:
        message, name = entry.message, entry.provider
        now = self.clock()
        if now >= self._deadline(message):
            # err: the last transient failure's code (e.g. "no credit"), 0 if it was never tried.
            await self._finish(
                entry, MessageState.EXPIRED, message.error_code, "validity ended before dispatch"
            )
            return
        if provider.capabilities.at_most_once and not await self._mark_sending(entry):
            return
        started = time.perf_counter()
        try:
            outcome = await provider.send(message)
        except Exception as exc:  # adapters should return Outcomes; be safe when they do not
            self._metrics[name].request("error", time.perf_counter() - started)
            self._sampled(
                "warning",
                "provider_send_failed",
                name,
                message_id=message.id,
                account=message.account,
                provider=name,
                error=f"{type(exc).__name__}: {exc}"[:200],
            )
            outcome = Outcome(OutcomeKind.TRANSIENT, detail=f"exception {type(exc).__name__}")
        else:
            # OutcomeKind values are the outcome label values (accepted, permanent, transient)
            self._metrics[name].request(outcome.kind.value, time.perf_counter() - started)
        # Per message, hot path: DEBUG only (a filtered call costs ~0.35 µs, a line ~10 µs).
        log.debug(
            "dispatch_outcome",
            message_id=message.id,
            account=message.account,
            provider=name,
            outcome=outcome.kind.value,
            provider_message_id=outcome.provider_message_id,
        )
        self._record_breaker(name, outcome)
        await self._apply_outcome(entry, outcome)

    async def _apply_outcome(self, entry: _Entry, outcome: Outcome) -> None:
        """What a send's outcome does to its message, for single and batch sends alike."""
        if outcome.kind is not OutcomeKind.ACCEPTED and entry.message.provider_message_id == "":
            entry.message.provider_message_id = None  # the "sending" mark: not taken after all
        if outcome.kind is OutcomeKind.ACCEPTED:
            self._accepted(entry, outcome)
        elif outcome.kind is OutcomeKind.PERMANENT:
            await self._permanent(entry, outcome)
        else:
            await self._transient(entry, outcome)

    async def _mark_sending(self, entry: _Entry) -> bool:
        """At most once: before the send goes out, record durably that it is going out (the
        message counts as taken by the provider, without an id). A bridge killed during the
        send finds the mark at its restart and ends the message UNKNOWN instead of sending it
        a second time (:meth:`_finish_interrupted_sends`). False: not recorded, not sent (the
        message is retried like after a transient failure)."""
        message, name = entry.message, entry.provider
        message.provider, message.provider_message_id = name, ""
        change = StateChange(
            message.id, MessageState.ENROUTE, self.clock(),
            f"sending to {name} (at most once: not sent again if the bridge stops now)",
        )  # fmt: skip
        try:
            await self.store.update_message(message, change)
        except Exception as exc:
            message.provider_message_id = None
            await self._transient(
                entry,
                Outcome(OutcomeKind.TRANSIENT, detail=f"store: {type(exc).__name__}"),
            )
            return False
        return True

    async def _finish_interrupted_sends(self) -> int:
        """At start: a message marked "sending" to an at-most-once provider but never
        recorded as taken was being sent when the bridge stopped. The provider may have it;
        it is not sent again: it ends UNKNOWN (its receipt says so)."""
        interrupted = 0
        async for message in self._scan(self.store.awaiting_report):
            provider = self.providers.get(message.provider or "")
            if (
                message.provider_message_id == ""
                and provider is not None
                and provider.capabilities.at_most_once
            ):
                interrupted += 1
                await self._call_finish(
                    message, MessageState.UNKNOWN, 0,
                    f"the bridge stopped while sending it to {message.provider}; not sent again"
                    " (retry_after_timeout = false)",
                )  # fmt: skip
        if interrupted:
            log.warning("dispatch_interrupted_sends", messages=interrupted, state="UNKNOWN")
        return interrupted

    # ------------------------------------------------------------------ bulk sends

    async def _send_batch(self, batch: list[_Entry], task: asyncio.Task[None], probe: bool) -> None:
        """One bulk request for ``batch`` (all marked sending), guarded like a single send."""
        name = batch[0].provider
        breaker = self.breakers[name]
        self._busy.add(task)
        try:
            await self._attempt_batch(batch, self._batchers[name])
            if probe and breaker.state is BreakerState.HALF_OPEN:
                breaker.abandon_probe(self._now())
        except Exception:
            log.exception(
                "dispatch_failed",
                message_id=batch[0].message.id,
                account=batch[0].message.account,
                provider=name,
                batch=len(batch),
            )
            for entry in batch:
                self._release(entry)
        finally:
            self._busy.discard(task)

    async def _attempt_batch(self, batch: list[_Entry], provider: BatchProvider) -> None:
        """Send several messages in one request; then each goes on with its own outcome, as
        after a single send (accepted, failed over, retried, expired)."""
        name = batch[0].provider
        now = self.clock()
        live: list[_Entry] = []
        for entry in batch:
            if now >= self._deadline(entry.message):
                await self._finish(
                    entry,
                    MessageState.EXPIRED,
                    entry.message.error_code,
                    "validity ended before dispatch",
                )
            else:
                live.append(entry)
        if self.providers[name].capabilities.at_most_once:
            # Each destination marked "sending" before the request, as a single send is.
            live = [entry for entry in live if await self._mark_sending(entry)]
        if not live:
            return
        started = time.perf_counter()
        try:
            outcomes = await provider.send_batch([e.message for e in live])
            if len(outcomes) != len(live):
                raise ValueError(f"{len(outcomes)} outcomes for {len(live)} messages")
        except Exception as exc:
            self._metrics[name].request("error", time.perf_counter() - started)
            self._sampled(
                "warning",
                "provider_send_failed",
                name,
                message_id=live[0].message.id,
                account=live[0].message.account,
                provider=name,
                error=f"{type(exc).__name__}: {exc}"[:200],
            )
            failed = Outcome(OutcomeKind.TRANSIENT, detail=f"exception {type(exc).__name__}")
            outcomes = [failed] * len(live)
        else:
            # One request: one observation (the first destination's outcome names it).
            self._metrics[name].request(outcomes[0].kind.value, time.perf_counter() - started)
        self.metrics.provider_event(name, "bulk_request")
        for _ in live:
            self.metrics.provider_event(name, "bulk_destination")
        # The breaker counts requests: a transient bulk failure is one failure.
        worst = next((o for o in outcomes if o.kind is OutcomeKind.TRANSIENT), outcomes[0])
        self._record_breaker(name, worst)
        for entry, outcome in zip(live, outcomes, strict=True):
            log.debug(
                "dispatch_outcome",
                message_id=entry.message.id,
                account=entry.message.account,
                provider=name,
                outcome=outcome.kind.value,
                provider_message_id=outcome.provider_message_id,
                batch=len(live),
            )
            try:
                await self._apply_outcome(entry, outcome)
            except Exception:
                log.exception(
                    "dispatch_failed",
                    message_id=entry.message.id,
                    account=entry.message.account,
                    provider=name,
                )
                self._release(entry)

    def _accepted(self, entry: _Entry, outcome: Outcome) -> None:
        """The provider took the message: record it (with the correlation its report needs)
        without waiting — the sender goes on to its next message at once; what follows from
        the record (an early report, an intermediate notification, a final outcome) runs in
        :meth:`_taken` once the record is durable."""
        message, name = entry.message, entry.provider
        now = self.clock()
        self._release(entry)
        message.provider = name
        # "" (not None) when the provider gave no id: the message is taken and must not be
        # re-sent after a restart, though no report can be correlated to it.
        message.provider_message_id = outcome.provider_message_id or ""
        message.attempts += 1
        self._note_dispatched()
        self._record_taken(_Taken(message, outcome, name, now))

    def _record_taken(self, taken: _Taken) -> None:
        """Journal a message's acceptance by a provider. The correlation goes in the same
        record as the message: a crash between two writes would leave a taken message whose
        report (pushed or polled) matches nothing."""
        message, outcome, name, now = taken.message, taken.outcome, taken.provider, taken.at
        self._recording += 1
        try:
            self.store.update_message_nowait(
                message,
                StateChange(message.id, MessageState.ENROUTE, now, f"accepted by {name}"),
                self._taken,
                taken,
                correlation=(name, outcome.provider_message_id, now + self.correlation_ttl)
                if outcome.provider_message_id
                else None,
                other_ids=outcome.other_ids if outcome.provider_message_id else (),
            )
        except Exception as exc:  # a closed store raises at once: same path as a failed write
            self._taken(taken, None, exc)

    def _taken(self, taken: _Taken, _result: object, error: BaseException | None) -> None:
        """The acceptance record is durable (``error`` None), or could not be written."""
        self._recording -= 1
        if error is not None:
            # The provider has the message: it must not be forgotten (nor sent again by the
            # next start), so the record is retried until the store takes it (a full disk).
            self.store_retries += 1
            self._sampled(
                "warning",
                "dispatch_store_failed",
                taken.provider,
                message_id=taken.message.id,
                provider=taken.provider,
                error=type(error).__name__,
                retry_in=self.retry_delay,
            )
            self._recording += 1  # still owed: stop() waits for it
            asyncio.get_running_loop().call_later(self.retry_delay, self._retry_taken, taken)
        else:
            self._after_taken(taken)
        if self._recording == 0 and self._recorded is not None:
            self._recorded.set()

    def _retry_taken(self, taken: _Taken) -> None:
        self._recording -= 1
        self._record_taken(taken)

    def _after_taken(self, taken: _Taken) -> None:
        message, outcome, name, now = taken.message, taken.outcome, taken.provider, taken.at
        if outcome.provider_message_id:
            if message.wants_intermediate and not (outcome.state and outcome.state.is_final):
                # registered_delivery bit 0x10: say "handed to a provider" (an ENROUTE
                # intermediate notification) before any final report.
                self._watch(
                    self.finisher.on_report(
                        DeliveryReport(
                            name, outcome.provider_message_id, MessageState.ENROUTE, 0, now
                        )
                    )
                )
            # Providers may push a report before their send call has returned to us.
            self._watch(self.finisher.correlated(name, outcome.provider_message_id))
            for other in outcome.other_ids:
                self._watch(self.finisher.correlated(name, other))
        if outcome.state is not None and outcome.state.is_final:
            self._watch(
                self.finisher.finish(
                    message,
                    outcome.state,
                    outcome.error_code,
                    outcome.detail or f"final from {name}",
                )
            )

    def _watch(self, work: Awaitable[object] | None) -> None:
        """Let ``work`` (the report handler's future, or a coroutine of a test double) run
        without waiting for it; a failure is logged, never lost silently."""
        if work is None:
            return
        future = asyncio.ensure_future(work)  # a future stays itself: no task is made for it
        future.add_done_callback(_log_failure)

    async def _permanent(self, entry: _Entry, outcome: Outcome) -> None:
        detail = f"{entry.provider}: {outcome.detail or 'refused'}"
        if await self._failover(entry, detail):
            return
        state = outcome.state if outcome.state in _FAILURE_STATES else MessageState.REJECTED
        assert state is not None
        await self._finish(entry, state, outcome.error_code, detail)

    async def _transient(self, entry: _Entry, outcome: Outcome) -> None:
        message, name = entry.message, entry.provider
        now = self.clock()
        message.attempts += 1
        message.error_code = outcome.error_code  # what an expiry will report
        detail = f"{name}: {outcome.detail or 'temporary failure'}"
        self._sampled(
            "warning",
            "provider_transient_failure",
            name,
            provider=name,
            detail=outcome.detail or "temporary failure",
            message_id=message.id,
            account=message.account,
        )
        if (
            self.failover_after > 0
            and message.attempts >= self.failover_after
            and await self._failover(entry, f"{detail} ({message.attempts} times)")
        ):
            return
        exponent = min(message.attempts - 1, _MAX_EXPONENT)
        delay = self._rng.uniform(0.0, min(self.backoff_max, self.backoff_base * 2**exponent))
        due = now + delay
        if due >= self._deadline(message):
            await self._finish(
                entry, MessageState.EXPIRED, outcome.error_code, f"{detail}; validity ended"
            )
            return
        message.next_attempt_at = due
        self._metrics[name].retries.inc()
        await self._persist(
            message,
            f"{detail}; attempt {message.attempts} failed, next in {delay:.2f}s",
        )
        if self._entries.get(message.id) is entry:
            self._place(message, name)

    async def _failover(self, entry: _Entry, detail: str) -> bool:
        """Move the message to the next provider in its route; False at the end of it."""
        message, name = entry.message, entry.provider
        index = message.route.index(name) if name in message.route else len(message.route)
        following = self._next_provider(message, index + 1)
        if following is None:
            return False
        self._metrics[name].failovers.inc()
        self._sampled(
            "info",
            "failover",
            name,
            message_id=message.id,
            account=message.account,
            provider=name,
            to=following,
        )
        message.provider = following
        message.attempts = 0
        message.next_attempt_at = 0.0
        await self._persist(message, f"{detail}; failing over to {following}")
        if self._entries.get(message.id) is entry:
            self._place(message, following)
        return True

    async def _persist(self, message: Message, detail: str) -> None:
        """Record an intermediate step. Best effort: while we run, memory is authoritative, and
        a lost write only means the restart resumes from the previous step."""
        change = StateChange(message.id, MessageState.ENROUTE, self.clock(), detail)
        try:
            await self.store.update_message(message, change)
        except Exception:
            log.exception("dispatch_persist_failed", message_id=message.id, account=message.account)

    def _release(self, entry: _Entry) -> None:
        if self._entries.get(entry.message.id) is entry:
            del self._entries[entry.message.id]
        self._ready[entry.provider].pop(entry.message.id, None)
        if entry.key is not None:
            self._unkey(entry)

    async def _finish(
        self, entry: _Entry, state: MessageState, error_code: int, detail: str
    ) -> None:
        self._release(entry)
        self._note_dispatched()
        await self._call_finish(entry.message, state, error_code, detail)

    async def _finish_unheld(
        self, message: Message, state: MessageState, error_code: int, detail: str
    ) -> None:
        self._note_dispatched()
        await self._call_finish(message, state, error_code, detail)

    async def _call_finish(
        self, message: Message, state: MessageState, error_code: int, detail: str
    ) -> None:
        try:
            await self.finisher.finish(message, state, error_code, detail)
        except Exception:
            log.exception(
                "dispatch_finish_failed",
                message_id=message.id,
                account=message.account,
                state=state.name,
            )

    def _note_dispatched(self) -> None:
        if self.on_dispatched is not None:
            self.on_dispatched()

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ polling

    async def _poll_loop(self) -> None:
        """Once at start for every provider (reports pushed while we were down are lost), then
        every ``poll_interval`` for providers whose reports are polled only."""
        everyone = True
        while True:
            try:
                await self.poll_now(everyone=everyone)
            except Exception:
                log.exception("dispatch_poll_failed")
            everyone = False
            if self.poll_interval <= 0:
                return
            await asyncio.sleep(self.poll_interval)

    async def poll_now(self, *, everyone: bool = False, only: str | None = None) -> int:
        """One sweep over the messages awaiting a report; returns how many reports came back.

        A message is polled when due; each poll that brings no final report doubles its
        interval (``poll_interval`` … ``poll_backoff_max``), so old messages cost little.
        ``everyone`` polls every provider (push ones too) and ignores the schedule. Messages of
        push providers are polled too once ``push_poll_after`` seconds have passed since their
        send without a final report (a safety net for lost pushes), on the same schedule. A message
        with no report within ``correlation_ttl`` of its last attempt can never get one (the
        correlation is gone): it is finished UNKNOWN so nothing stays ENROUTE for ever.
        ``only``: that provider's messages only (its circuit closed).
        """
        now = self.clock()
        batches: dict[str, list[Message]] = {}
        seen: set[str] = set()
        async for message in self._scan(self.store.awaiting_report):
            seen.add(message.id)
            if message.id in self._entries or message.provider is None:
                continue
            if only is not None and message.provider != only:
                continue
            last_try = max(message.created_at, message.schedule_at or 0.0, message.next_attempt_at)
            if now > last_try + self.correlation_ttl:
                await self._call_finish(message, MessageState.UNKNOWN, 0, "no delivery report")
                continue
            provider = self.providers.get(message.provider)
            if provider is None:
                continue
            if not everyone:
                if provider.capabilities.reports != "poll" and not (
                    # A push that never came (lost on the way, or sent while we were down
                    # and not yet final at the start-up sweep): ask, as a safety net.
                    self.push_poll_after > 0 and now - last_try >= self.push_poll_after
                ):
                    continue
                if self._poll_due.get(message.id, (0.0, 0))[0] > now:
                    continue
            batches.setdefault(message.provider, []).append(message)
        for stale in self._poll_due.keys() - seen:
            del self._poll_due[stale]
        received = 0
        for name, messages in batches.items():
            for chunk in _chunks(messages, self.poll_batch):
                received += await self._poll_chunk(name, self.providers[name], chunk, now)
        return received

    async def _poll_chunk(
        self, name: str, provider: Provider, messages: Sequence[Message], now: float
    ) -> int:
        try:
            reports = await provider.poll(messages)
        except Exception as exc:
            log.warning(
                "provider_poll_failed", provider=name, error=f"{type(exc).__name__}: {exc}"[:200]
            )
            reports = []
        answered: set[str] = set()
        for report in reports:
            try:
                await self.finisher.on_report(report)
            except Exception:
                log.exception("dispatch_report_failed", provider=name)
                continue
            if report.state.is_final:
                answered.add(report.provider_message_id)
        for message in messages:
            if message.provider_message_id in answered:
                self._poll_due.pop(message.id, None)
                continue
            polls = self._poll_due.get(message.id, (0.0, 0))[1] + 1
            interval = min(self.poll_backoff_max, self.poll_interval * 2 ** min(polls, 30))
            self._poll_due[message.id] = (now + interval, polls)
        return len(reports)

    # ------------------------------------------------------------------ helpers

    async def _scan(
        self, fetch: Callable[..., Awaitable[list[Message]]]
    ) -> AsyncIterator[Message]:
        """Every row of a paged store listing (``limit`` / ``after_id``)."""
        after = ""
        while True:
            page = await fetch(limit=self.page_size, after_id=after)
            for message in page:
                yield message
            if len(page) < self.page_size:
                return
            after = page[-1].id


def _has_health_check(provider: Provider) -> bool:
    """Whether ``healthy()`` really asks the provider (``has_health_check``; an adapter without
    a balance or test call, or the sandbox, answers True without asking: that cannot close a
    circuit)."""
    return bool(getattr(provider, "has_health_check", False))


def _chunks(items: Sequence[Message], size: int) -> Iterator[Sequence[Message]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
