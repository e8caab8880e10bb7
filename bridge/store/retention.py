"""Where finished messages go: the embedded store's archive and retention.

A message final for ``archive_after`` seconds moves from memory to ``finals.db``
(:mod:`bridge.store.archive`), committed before it leaves memory; retention purges final
messages (archived ones first) and expired correlations. Apart from
:mod:`bridge.store.embedded` because none of it is on a message's path: a timer once a second
and the bridge's housekeeping call it.
"""

from __future__ import annotations

import abc
import asyncio
import time
from typing import Any

import msgspec

from bridge.observability import SampledLog
from bridge.store.archive import ArchivedMessage, FinalArchive
from bridge.store.memory import PURGE, UNCORRELATE
from bridge.store.snapshot import Snapshots

__all__ = ["ARCHIVE_FILE", "Retention"]

_decode = msgspec.msgpack.Decoder().decode

ARCHIVE_FILE = "finals.db"
_ARCHIVE_INTERVAL = 1.0  # seconds between two looks for messages due for the archive
_ARCHIVE_BATCH = 20_000  # messages per archive transaction


class Retention(Snapshots, abc.ABC):
    """Archive and retention (a base of :class:`~bridge.store.embedded.EmbeddedStore`, which
    sets these attributes and writes the records)."""

    archive_after: float
    _archive: FinalArchive | None
    _archive_timer: asyncio.TimerHandle | None
    _sampled: SampledLog

    @abc.abstractmethod
    def _write(self, rec: list[Any], obj: Any = None) -> asyncio.Future[Any]:
        """Journal ``rec`` (applied to memory once durable); the future settles then."""

    async def _open_archive(self) -> None:
        loop = asyncio.get_running_loop()
        self._archive = FinalArchive(
            self.directory / ARCHIVE_FILE, _packed_created_at, fsync=self.fsync
        )
        await asyncio.to_thread(self._archive.open, loop)
        self._archive_timer = loop.call_later(_ARCHIVE_INTERVAL, self._archive_step)

    def _stop_archive_timer(self) -> None:
        if self._archive_timer is not None:
            self._archive_timer.cancel()
            self._archive_timer = None

    async def _close_archive(self) -> None:
        self._stop_archive_timer()
        archive, self._archive = self._archive, None
        if archive is not None:
            await archive.close()
        self._archiving.clear()

    async def expire_correlations(self, now: float) -> int:
        """Drop correlations with ``expires_at <= now`` (in memory and in the archive);
        returns how many."""
        n = await self._archive.expire_correlations(now) if self._archive is not None else 0
        gone = [key for key, (_, expires) in self._corr.items() if expires <= now]
        if not gone:
            await self._write([UNCORRELATE, []])  # still a write: /readyz uses it as a probe
            return n
        for start in range(0, len(gone), 10_000):
            n += int(await self._write([UNCORRELATE, gone[start : start + 10_000]]))
        return n

    async def purge_final(self, created_before: float, limit: int = 10_000) -> int:
        """Retention: remove up to ``limit`` final messages, oldest finished first, whose
        ``created_at`` is before ``created_before``; stops at the first younger one (so a
        message is never purged early, at worst a little late). Their correlations go with
        :meth:`expire_correlations`. Archived messages are purged from the archive the same
        way (the archive first: it holds the oldest)."""
        archived = 0
        if self._archive is not None:
            archived = await self._archive.purge(created_before, limit)
            if archived >= limit:
                return archived
            limit -= archived
        ids: list[str] = []
        final = self._final
        for mid in self._final_order:
            if len(ids) >= limit:
                break
            packed = final.get(mid)
            if packed is None:
                continue
            if _decode(_decode(packed)[0])[15] >= created_before:  # created_at
                break
            ids.append(mid)
        if not ids:
            return archived
        return archived + int(await self._write([PURGE, ids]))

    # ------------------------------------------------------------------ the archive

    def _archive_step(self) -> None:
        """Every second: hand the messages that have been final for ``archive_after`` seconds
        to the archive, one transaction at a time; they leave memory once it is committed."""
        loop = asyncio.get_running_loop()
        self._archive_timer = loop.call_later(_ARCHIVE_INTERVAL, self._archive_step)
        archive = self._archive
        if archive is None or self._archiving:
            return
        horizon = time.monotonic() - self.archive_after
        due, final, corr = self._archive_due, self._final, self._corr
        batch: list[ArchivedMessage] = []
        while due and due[0][0] <= horizon and len(batch) < _ARCHIVE_BATCH:
            mid = due.popleft()[1]
            packed = final.get(mid)
            if packed is None:
                continue  # purged or deleted meanwhile
            corrs = [
                (key[0], key[1], found[1])
                for key in self._corr_of.get(mid, ())
                if (found := corr.get(key)) is not None and found[0] == mid
            ]
            batch.append((mid, packed, tuple(self._other_parts.get(mid, ())), corrs))
        if not batch:
            return
        self._archiving = {m[0] for m in batch}
        try:
            archive.put(batch, lambda result, error: self._archived(batch, error))
        except RuntimeError:  # closed meanwhile
            self._archiving = set()

    def _archived(self, batch: list[ArchivedMessage], error: BaseException | None) -> None:
        self._archiving = set()
        if error is not None:
            # Nothing is lost (memory and the journal still hold them): try again later.
            self._sampled(
                "warning", "store.archive_failed", "archive", error=repr(error)[:200],
                messages=len(batch), retry_in=_ARCHIVE_INTERVAL,
            )  # fmt: skip
            self._archive_due.extendleft((0.0, m[0]) for m in reversed(batch))
            return
        final, corr = self._final, self._corr
        for m in batch:
            mid = m[0]
            if final.pop(mid, None) is None:
                continue
            self._drop_part_ids(mid)
            for key in self._corr_of.pop(mid, ()):
                found = corr.get(key)
                if found is not None and found[0] == mid:
                    del corr[key]
        order = self._final_order
        while order and order[0] not in final:
            order.popleft()

    def archived_count(self) -> int:
        """Messages in the archive (a full count: tests and benchmarks)."""
        return self._archive.count() if self._archive is not None else 0

    def finals_in_memory(self) -> int:
        return len(self._final)

def _packed_created_at(packed: bytes) -> float:
    """A final message's created_at, from its packed ``[blob, history]`` (for the archive)."""
    return float(_decode(_decode(packed)[0])[15])
