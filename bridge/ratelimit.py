"""A rate limiter with no burst: at most ``max_calls`` in any sliding window of ``period``.

Providers document their limits as "at most N calls per second" (smsflatrate: "Maximal 10
Aufrufe pro Sekunde"). A token bucket (aiolimiter) lets a whole period's capacity out at once
and refills while it does, so ``AsyncLimiter(10, 1)`` sends 18–20 requests in its first second.
:class:`SlidingWindowLimiter` remembers the start times of the last ``max_calls`` acquisitions
and lets the next one go only once the oldest is a full window old, so no window of
``period`` seconds — wherever it starts — holds more than ``max_calls`` (README, "Reliability").

A small ``margin`` is added to the window: the provider measures arrival times, which jitter by
a few milliseconds against our send times. This module is a leaf (no bridge imports), so the
sans-IO core may use it; it needs only a running event loop's clock.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

__all__ = ["SlidingWindowLimiter", "limiter_for_rate"]

#: Added to every window (50 ms: 5 % of a second): arrival-time jitter at the provider (network,
#: a busy loop on either side) must not make 11 out of 10.
DEFAULT_MARGIN = 0.05


class SlidingWindowLimiter:
    """``await acquire()`` returns once a call may start without a window of ``period``
    seconds holding more than ``max_calls`` calls. Waiters go in FIFO order."""

    __slots__ = ("_lock", "_starts", "max_calls", "period")

    def __init__(self, max_calls: int, period: float = 1.0, margin: float = DEFAULT_MARGIN) -> None:
        if max_calls < 1:
            raise ValueError("max_calls must be at least 1")
        if period <= 0:
            raise ValueError("period must be positive")
        self.max_calls = max_calls
        self.period = period + margin
        self._starts: deque[float] = deque(maxlen=max_calls)
        self._lock: asyncio.Lock | None = None  # created in the loop that first uses it

    def try_acquire(self) -> bool:
        """Take a slot now if one is free (no waiting)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        starts = self._starts
        if len(starts) < self.max_calls or now - starts[0] >= self.period:
            starts.append(now)  # maxlen drops the oldest
            return True
        return False

    async def acquire(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # FIFO: one waiter computes its slot at a time
            loop = asyncio.get_running_loop()
            starts = self._starts
            while True:
                now = loop.time()
                if len(starts) < self.max_calls:
                    break
                wait = starts[0] + self.period - now
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            starts.append(loop.time())

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        return None


def limiter_for_rate(rate: float) -> SlidingWindowLimiter | None:
    """The limiter for "at most ``rate`` calls per second" (None for 0 = unlimited).

    A whole number of calls per second is exact; a fractional rate above 1 is rounded down
    (never above the documented limit); below 1/s it is one call per ``1/rate`` seconds."""
    if rate <= 0:
        return None
    if rate >= 1:
        return SlidingWindowLimiter(math.floor(rate), 1.0)
    return SlidingWindowLimiter(1, 1.0 / rate)
