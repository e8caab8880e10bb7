"""Where the dispatcher holds a message: the waiting heap (scheduled, backing off), one ready
queue per provider (and, for a provider that sends in bulk, the ready entries by batch key), and
the timer that moves due messages on (the module docstring of :mod:`bridge.core.dispatcher` has
the whole picture).

The dispatcher is one class in four modules, along its seams, each a base class of the next:
this one (its state and the placing of messages), :mod:`bridge.core.dispatch_outcomes` (what
an outcome does: acceptance, retry with backoff, failover, polls for reports),
:mod:`bridge.core.dispatch_send` (the per-provider sender loops, single and bulk sends) and
:mod:`bridge.core.dispatcher` (lifecycle and the public surface). Base classes, not objects
passed around, so a send makes the same calls it did in one module.
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
    Hashable,
    Mapping,
)
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog

from bridge.core.breaker import CircuitBreaker
from bridge.core.model import DeliveryReport, Message, MessageState, Outcome
from bridge.core.provider import BatchProvider, Provider
from bridge.core.store import Store
from bridge.observability import Metrics, ProviderMetrics, SampledLog
from bridge.ratelimit import limiter_for_rate

__all__ = ["MAX_SLEEP", "DispatchQueues", "Entry", "Finisher", "RateLimiter", "Taken"]

class RateLimiter(Protocol):
    """What a provider's send limiter offers: the sliding window of bridge.ratelimit, or a
    cluster-wide one (bridge.store.cluster_limits)."""

    async def acquire(self) -> None: ...


log = structlog.get_logger("bridge.dispatch")

#: The timer never sleeps longer than this, so a wall-clock step (NTP) is noticed soon.
MAX_SLEEP = 1.0

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


Status = Literal["waiting", "queued", "sending"]


@dataclass(eq=False, slots=True)
class Entry:
    """The dispatcher's hold on one message. A new entry is made each time the message moves
    (due, failover); the heap and queues drop entries that are no longer the current one, so
    cancelling is O(1)."""

    message: Message
    provider: str
    status: Status
    since: float = 0.0  # when it became ready to send (for oldest_age)
    key: Hashable | None = None  # batch key, for a provider that sends in bulk


@dataclass(eq=False, slots=True)
class Taken:
    """A provider's acceptance of a message, on its way to the journal."""

    message: Message
    outcome: Outcome
    provider: str
    at: float


class DispatchQueues:
    """The dispatcher's state and the placing of messages (a base of
    :class:`~bridge.core.dispatcher.Dispatcher`, whose docstring describes the arguments)."""

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

        self._entries: dict[str, Entry] = {}
        self._heap: list[tuple[float, int, Entry]] = []
        self._seq = itertools.count()
        self._queues: dict[str, asyncio.PriorityQueue[tuple[int, int, Entry]]] = {}
        self._ready: dict[str, dict[str, Entry]] = {}  # insertion order = ready order
        self._limiters: dict[str, RateLimiter] = {}
        #: Providers that send in bulk, and their queued entries by batch key (ready order).
        self._batchers: dict[str, BatchProvider] = {
            name: p
            for name, p in providers.items()
            if p.capabilities.max_batch > 1 and isinstance(p, BatchProvider)
        }
        self._keyed: dict[str, dict[Hashable, dict[str, Entry]]] = {
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
        entry = Entry(message, name, "waiting")
        self._entries[message.id] = entry
        if due > self.clock():
            if not self._heap or due < self._heap[0][0]:
                self._wake.set()
            heapq.heappush(self._heap, (due, next(self._seq), entry))
        else:
            self._make_ready(entry)

    def _make_ready(self, entry: Entry) -> None:
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

    def _unkey(self, entry: Entry) -> None:
        """Drop a queued entry from its batch key's group (it is sent, cancelled or moved)."""
        if entry.key is None:
            return
        group = self._keyed[entry.provider].get(entry.key)
        if group is not None and group.get(entry.message.id) is entry:
            del group[entry.message.id]
            if not group:
                del self._keyed[entry.provider][entry.key]

    def _take_batch(self, entry: Entry) -> list[Entry]:
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

    def _current(self, entry: Entry, status: Status) -> bool:
        return entry.status == status and self._entries.get(entry.message.id) is entry

    async def _timer_loop(self) -> None:
        """Move due messages from the heap to their provider's queue."""
        while True:
            now = self.clock()
            while self._heap and self._heap[0][0] <= now:
                _, _, entry = heapq.heappop(self._heap)
                if self._current(entry, "waiting"):
                    self._make_ready(entry)
            timeout = min(self._heap[0][0] - now, MAX_SLEEP) if self._heap else None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

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


