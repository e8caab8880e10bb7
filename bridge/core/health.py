"""Readiness checks of the parts the domain depends on: can the store take a write, do the
providers answer their health checks.

Why a module of its own: these checks go only through the ports (``Store``, ``Provider``), so
they are the domain's, while what serves them (``/readyz``, the status page, the
``bridge_provider_up`` gauge) sits above; ``bridge.app`` joins them with the listeners' state
into a :class:`~bridge.web.server.HealthReport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping

import structlog

from bridge.core.provider import Provider
from bridge.core.store import Store

__all__ = [
    "PROVIDER_HEALTH_TIMEOUT",
    "PROVIDER_HEALTH_TTL",
    "PROVIDER_UP_INTERVAL",
    "ProviderHealth",
    "store_writable",
]

log = structlog.get_logger("bridge.app")

#: Provider health checks may be remote calls (a balance query): /readyz reuses a result this
#: many seconds old rather than hitting every provider on every probe, and gives up on a
#: provider that has not answered within PROVIDER_HEALTH_TIMEOUT (it counts as unhealthy).
PROVIDER_HEALTH_TTL = 5.0
PROVIDER_HEALTH_TIMEOUT = 2.0
#: bridge_provider_up: providers are checked this often in the background (and whenever /readyz
#: asks); the gauge shows the last answer.
PROVIDER_UP_INTERVAL = 30.0


async def store_writable(store: Store, timeout: float = PROVIDER_HEALTH_TIMEOUT) -> bool:
    """A write transaction that changes nothing (expiring correlations up to time 0) goes
    through the same writer thread and commit as a submit_sm, so it fails when the store is
    closed, its writer died or the disk refuses writes."""
    try:
        await asyncio.wait_for(store.expire_correlations(0.0), timeout)
        return True
    except Exception as exc:
        log.warning("health.store_failed", error=type(exc).__name__)
        return False


class ProviderHealth:
    """Each provider's ``healthy()``, asked concurrently at most every ``ttl`` seconds
    (concurrent probes share one round); a timeout or an exception is unhealthy. A provider
    may also report its health itself (:meth:`set`, its context's ``set_healthy``)."""

    def __init__(
        self,
        providers: Mapping[str, Provider],
        *,
        ttl: float = PROVIDER_HEALTH_TTL,
        timeout: float = PROVIDER_HEALTH_TIMEOUT,
    ) -> None:
        self._providers = providers
        self._ttl = ttl
        self._timeout = timeout
        #: The last answer per provider (absent until the first check): bridge_provider_up.
        self.last: dict[str, bool] = {}
        self._at = float("-inf")
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None

    def set(self, name: str, healthy: bool) -> None:
        self.last[name] = healthy

    async def check(self) -> dict[str, bool]:
        """Each provider's last health check (refreshed when older than ``ttl``)."""

        async def check(name: str, provider: Provider) -> bool:
            try:
                return bool(await asyncio.wait_for(provider.healthy(), self._timeout))
            except Exception as exc:
                log.warning("health.provider_failed", provider=name, error=type(exc).__name__)
                return False

        async with self._lock:
            now = time.monotonic()
            if now - self._at >= self._ttl:
                names = list(self._providers)
                results = await asyncio.gather(*(check(n, self._providers[n]) for n in names))
                self.last = dict(zip(names, results, strict=True))
                self._at = time.monotonic()
            return dict(self.last)

    def start(self, interval: float = PROVIDER_UP_INTERVAL) -> None:
        """Keep :attr:`last` (bridge_provider_up) current even when nothing probes /readyz."""
        self._watcher = asyncio.create_task(self._watch(interval), name="provider-health")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    async def _watch(self, interval: float) -> None:
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("health.provider_check_failed")
            await asyncio.sleep(interval)
