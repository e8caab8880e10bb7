"""One-shot import of the SQLite store (``bridge.db``) of bridges before engine v2.

An operator who upgrades keeps every promise the old bridge made: at the first start on a data
directory that holds a ``bridge.db`` and no journal yet, everything in it — messages queued or
awaiting a report (with their history), final messages (for query_sm until retention), provider
correlations, reassembly parts and the receipts and MO waiting for their ESME — is written into
the new store, durably, before the bridge takes traffic. The old file is then renamed
``bridge.db.imported`` (kept, never read again), so the import happens once and can be checked
or undone by hand. A failed import leaves ``bridge.db`` as it was and stops the start.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import structlog

from bridge.core.model import Message
from bridge.store.embedded import EmbeddedStore
from bridge.store.journal import segments, snapshots
from bridge.store.sqlite import SqliteStore, _message_from_json

__all__ = ["LEGACY_FILE", "import_legacy"]

log = structlog.get_logger("bridge.store")

LEGACY_FILE = "bridge.db"
_CHUNK = 2000  # writes in flight at once: one journal batch each, memory bounded


async def import_legacy(data_dir: Path, store_dir: Path) -> dict[str, int] | None:
    """Before the store at ``store_dir`` opens: import ``data_dir/bridge.db`` into it if there is
    one and the store is new. Returns what was imported, or None when there was nothing to do.

    The import is written into a directory beside the store and renamed into place when it is
    complete and durable, so a crash half-way leaves no half-imported store: the next start
    imports again from the untouched ``bridge.db``."""
    legacy = data_dir / LEGACY_FILE
    if not legacy.exists():
        return None
    if store_dir.is_dir() and (segments(store_dir) or snapshots(store_dir)):
        log.warning(
            "store.legacy_ignored",
            file=str(legacy),
            reason="the new store already holds data; the old file is left as it is",
        )
        return None
    started = time.perf_counter()
    staging = store_dir.with_name(store_dir.name + ".importing")
    shutil.rmtree(staging, ignore_errors=True)  # a crashed import's leftovers
    old = SqliteStore(legacy)
    await old.open()
    try:
        new = EmbeddedStore(staging)
        await new.open()
        try:
            counts = await _copy(old, new)
        finally:
            await new.close()
    finally:
        await old.close()
    if store_dir.exists():
        store_dir.rmdir()  # empty (checked above); a non-empty one raises rather than mixes
    staging.rename(store_dir)
    for suffix in ("", "-wal", "-shm"):
        side = legacy.with_name(LEGACY_FILE + suffix)
        if side.exists():
            side.rename(side.with_name(LEGACY_FILE + ".imported" + suffix))
    log.info(
        "store.legacy_imported",
        file=str(legacy),
        seconds=round(time.perf_counter() - started, 1),
        **counts,
    )
    return counts


class _Writes:
    """At most ``_CHUNK`` store writes in flight; the first failure stops the import."""

    def __init__(self) -> None:
        self.pending: list[Awaitable[Any]] = []

    async def add(self, write: Awaitable[Any]) -> None:
        self.pending.append(write)
        if len(self.pending) >= _CHUNK:
            await self.flush()

    async def flush(self) -> None:
        batch, self.pending = self.pending, []
        await asyncio.gather(*batch)


async def _copy(old: SqliteStore, store: EmbeddedStore) -> dict[str, int]:
    writes = _Writes()
    rows = old._rows("SELECT data FROM messages ORDER BY created_at, id")
    messages = live = 0
    for (data,) in rows:
        message: Message = _message_from_json(data)
        history = old.history(message.id)
        # The message as it is now, then its steps: the store keeps history per message.
        await writes.add(store.add_message(message))
        for change in history:
            await writes.add(store.update_message(message, change))
        messages += 1
        live += not message.state.is_final
    await writes.flush()  # the messages first: correlations and parts refer to them
    correlations = 0
    for provider, pid, mid, expires in old._rows(
        "SELECT provider, provider_message_id, message_id, expires_at FROM correlations"
    ):
        await writes.add(store.correlate(provider, pid, mid, expires))
        correlations += 1
    parts = 0
    for part in old.all_parts():
        await writes.add(store.add_part(part))
        parts += 1
    deliveries = 0
    for account in old.delivery_accounts():
        after = 0
        while batch := old.pending_deliveries(account, 1000, after):
            for item in batch:  # queue order kept; new queue ids
                await writes.add(store.enqueue_delivery(account, item.item, item.enqueued_at))
            deliveries += len(batch)
            after = batch[-1].id
    await writes.flush()
    return {
        "messages": messages,
        "live": live,
        "correlations": correlations,
        "parts": parts,
        "deliveries": deliveries,
    }

