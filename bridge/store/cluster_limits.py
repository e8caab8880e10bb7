"""Limits that hold across all nodes of a cluster (README, "Running several nodes").

Kept apart from the local limiters (aiolimiter in the dispatcher and the SMPP server): a small
interface of its own, :class:`~bridge.core.dispatcher.RateLimiter` (``async acquire()``).

* :class:`ClusterRateLimiter` — a provider's documented request rate (smsflatrate: 10
  requests/s) as a sliding-window log in Redis, measured on Redis's clock: in no window of
  ``window`` seconds do all nodes together take more than ``rate`` slots. One Redis round trip
  per send, which is fine for the providers that have such a limit (slow ones, by their nature).
  A margin (``margin``, 5 % of the window by default) absorbs the network jitter between taking
  a slot and the request reaching the provider. While Redis is unreachable no slot is taken:
  the sends wait (nothing can be recorded then anyway).
* Account TPS: each node enforces ``tps / live nodes`` locally (no round trip per submit_sm);
  :func:`shared_tps` computes the accounts with that share, applied as live nodes come and go.
* ``max_binds``: a bind asks Redis whether one more fits with every live node's binds counted
  (:meth:`RedisStore.bind_fits`); each node publishes its binds with its heartbeat, so an
  unbind or a dead node frees its places within one heartbeat (or ``dead_after``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Iterable

import structlog

from bridge.core.accounts import Account
from bridge.observability import SampledLog
from bridge.store.redis import RedisStore

__all__ = ["ClusterRateLimiter", "shared_tps"]

log = structlog.get_logger("bridge.cluster")


class ClusterRateLimiter:
    """At most ``rate`` acquisitions per ``window`` seconds across every node on ``store``."""

    def __init__(
        self,
        store: RedisStore,
        name: str,
        rate: float,
        *,
        window: float = 1.0,
        margin: float = 0.05,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        # Below one per window: one slot per 1/rate seconds.
        self.limit = max(1, math.floor(rate * window))
        self.window = (window if rate * window >= 1 else 1 / rate) * (1 + margin)
        self.store = store
        self.name = name
        self._sampled = SampledLog(log)

    async def acquire(self) -> None:
        while True:
            try:
                wait = await self.store.rate_wait(self.name, self.limit, self.window)
            except Exception as exc:  # Redis away: take nothing, ask again
                self._sampled(
                    "warning",
                    "cluster.rate_limit_unavailable",
                    self.name,
                    limit=self.name,
                    error=f"{type(exc).__name__}: {exc}"[:200],
                )
                wait = 1.0
            if wait <= 0:
                return
            await asyncio.sleep(wait)


def shared_tps(accounts: Iterable[Account], nodes: int) -> list[Account]:
    """The accounts with each TPS limit divided among ``nodes`` live nodes (0 stays unlimited)."""
    nodes = max(1, nodes)
    return [
        dataclasses.replace(a, tps=a.tps / nodes) if a.tps and nodes > 1 else a
        for a in accounts
    ]
