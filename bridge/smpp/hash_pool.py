"""A bounded pool for password hashing (pbkdf2) during binds.

Issue 14, finding 7: 600 wrong binds on a pbkdf2 account cost 21.6 CPU-seconds and delayed the
right bind by 18.6 s, because every guess queued for a thread. Here at most ``max_pending``
verifications wait or run at once, and at most ``per_address`` of them come from one address
(an IPv4 address, an IPv6 /64): a flood from one host is refused (the bind is answered
ESME_RBINDFAIL at once) instead of queueing ahead of everyone else's binds. hashlib releases
the GIL, so ``workers`` threads hash in parallel with the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from bridge.core.accounts import address_key

__all__ = ["HashPool", "PoolBusy"]

T = TypeVar("T")


class PoolBusy(Exception):
    """No room for another verification (from this address, or at all)."""


class HashPool:
    def __init__(self, workers: int = 1, max_pending: int = 16, per_address: int = 2) -> None:
        self.workers = workers
        self.max_pending = max_pending
        self.per_address = per_address
        self._executor: ThreadPoolExecutor | None = None
        self._pending: dict[str, int] = {}
        self.pending = 0

    async def run(self, ip: str, fn: Callable[[], T]) -> T:
        """``fn()`` in a pool thread; PoolBusy at once when the limits are reached."""
        key = address_key(ip)
        mine = self._pending.get(key, 0)
        if self.pending >= self.max_pending or mine >= self.per_address:
            raise PoolBusy
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="bind-hash")
        self._pending[key] = mine + 1
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        finally:
            self.pending -= 1
            left = self._pending[key] - 1
            if left:
                self._pending[key] = left
            else:
                del self._pending[key]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
