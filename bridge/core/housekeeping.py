"""The bridge's background chores: time out incomplete concatenated messages, forget expired
correlations, purge old final messages, and refuse submits while the store's disk is nearly
full.

Why a module of its own: each is a domain rule on the pipeline and the store port, run on a
timer; none touches a socket or a file format (the free space is asked through a function the
wiring passes in), and none belongs to the start/stop wiring in ``bridge.app``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from bridge.core.pipeline import Pipeline
from bridge.core.store import Store
from bridge.observability import Metrics

__all__ = ["Housekeeper"]

log = structlog.get_logger("bridge.app")

_MIB = 1024 * 1024


class Housekeeper:
    """Runs the chores as tasks of the event loop between :meth:`start` and :meth:`stop`."""

    def __init__(
        self,
        pipeline: Pipeline,
        store: Store,
        clock: Callable[[], float],
        metrics: Metrics,
        *,
        retention: float,
        min_free_mb: int,
        free_bytes: Callable[[], int],
        data_dir: str,
    ) -> None:
        self._pipeline = pipeline
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._retention = retention
        self._min_free_mb = min_free_mb
        self._free_bytes = free_bytes
        self._data_dir = data_dir
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._reap_parts(), name="reassembly-timeouts"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        self.check_disk()
        self._tasks.append(asyncio.create_task(self._watch_disk(), name="disk-watch"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _reap_parts(self) -> None:
        """Time out incomplete concatenated messages (each part gets a failure receipt)."""
        while True:
            deadline = self._pipeline.reassembly.next_deadline()
            now = self._clock()
            delay = 1.0 if deadline is None else min(1.0, max(0.0, deadline - now))
            await asyncio.sleep(delay)
            try:
                await self._pipeline.expire_parts()
            except Exception:
                log.exception("pipeline.expire_parts_failed")

    async def _housekeeping(self, interval: float = 300.0) -> None:
        """Forget provider-id correlations past their expiry (reports for them count as
        unknown) and purge final messages past ``[storage] retention``, so the database does
        not grow for ever. Purging runs in batches of short transactions."""
        while True:
            await asyncio.sleep(interval)
            try:
                removed = await self._store.expire_correlations(self._clock())
                if removed:
                    log.info("store.correlations_expired", count=removed)
                if self._retention > 0:
                    purged = await self.purge(self._clock() - self._retention)
                    if purged:
                        log.info("store.messages_purged", count=purged)
            except Exception:
                log.exception("store.housekeeping_failed")

    async def purge(self, created_before: float, batch: int = 10_000) -> int:
        """Purge in batches, one short transaction each, so live writes are never held up
        for long, until the backlog is gone."""
        total = 0
        while True:
            n = await self._store.purge_final(created_before, batch)
            total += n
            if n < batch:
                return total
            await asyncio.sleep(0)

    async def _watch_disk(self, interval: float = 1.0) -> None:
        """Every second: is there room on the store's disk? (One statvfs call, microseconds.)"""
        while True:
            await asyncio.sleep(interval)
            self.check_disk()

    def check_disk(self) -> None:
        """Refuse new submits (ESME_RMSGQFUL) while free space is under ``[storage]
        min_free_mb``, and say so once — a WARNING when it starts, INFO when it ends — rather
        than one line per refusal on the very disk that is full."""
        minimum = self._min_free_mb * _MIB
        try:
            free = self._free_bytes()
        except OSError as exc:
            log.warning("store.disk_unreadable", error=repr(exc))
            return
        self._metrics.store_free_bytes.set(free)
        low = minimum > 0 and free < minimum
        if low == self._pipeline.disk_low:
            return
        self._pipeline.disk_low = low
        if low:
            log.warning(
                "store.disk_low",
                free_mb=free // _MIB,
                min_free_mb=self._min_free_mb,
                data_dir=self._data_dir,
                action="new submits refused with ESME_RMSGQFUL until space is freed",
            )
        else:
            log.info("store.disk_ok", free_mb=free // _MIB, submits="accepted again")
