"""One-shot import of the SQLite store (``bridge.db``) of bridges before engine v2.

An operator who upgrades keeps every promise the old bridge made: at the first start on a data
directory that holds a ``bridge.db`` and no journal yet, everything in it — messages queued or
awaiting a report (with their history), final messages (for query_sm until retention), provider
correlations, reassembly parts and the receipts and MO waiting for their ESME — is written into
the new store, durably, before the bridge takes traffic. The old file is then renamed
``bridge.db.imported`` (kept, never read again), so the import happens once and can be checked
or undone by hand. A failed import leaves ``bridge.db`` as it was and stops the start.

The old file is only read: :class:`_OldDb` below knows the old schema (the tables ``messages``,
``history``, ``correlations``, ``parts`` and ``deliveries``, JSON in the ``data`` columns) and
nothing else of the SQLite store that wrote it, which is gone from the tree. The tests write such
a file with the old schema's own SQL (``tests/harness/legacy_db.py``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import msgspec
import structlog

from bridge.core.model import Address, InboundMessage, Message, MessageState, Receipt
from bridge.core.store import StateChange, StoredPart
from bridge.store.embedded import EmbeddedStore
from bridge.store.journal import segments, snapshots

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
    old = await asyncio.to_thread(_OldDb, legacy)
    try:
        new = EmbeddedStore(staging)
        await new.open()
        try:
            counts = await _copy(old, new)
        finally:
            await new.close()
    finally:
        old.close()
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


async def _copy(old: _OldDb, store: EmbeddedStore) -> dict[str, int]:
    writes = _Writes()
    messages = live = 0
    for message in old.messages():
        # The message as it is now, then its steps: the store keeps history per message.
        await writes.add(store.add_message(message))
        for change in old.history(message.id):
            await writes.add(store.update_message(message, change))
        messages += 1
        live += not message.state.is_final
    await writes.flush()  # the messages first: correlations and parts refer to them
    correlations = 0
    for provider, pid, mid, expires in old.rows(
        "SELECT provider, provider_message_id, message_id, expires_at FROM correlations"
    ):
        await writes.add(store.correlate(provider, pid, mid, expires))
        correlations += 1
    parts = 0
    for part in old.parts():
        await writes.add(store.add_part(part))
        parts += 1
    deliveries = 0
    for account, item, enqueued_at in old.deliveries():  # queue order kept; new queue ids
        await writes.add(store.enqueue_delivery(account, item, enqueued_at))
        deliveries += 1
    await writes.flush()
    return {
        "messages": messages,
        "live": live,
        "correlations": correlations,
        "parts": parts,
        "deliveries": deliveries,
    }


# --------------------------------------------------------------------------- the old file


class _OldDb:
    """``bridge.db``, only read: its rows as the domain's objects.

    The ``data`` columns hold JSON (written by msgspec, or by the stdlib when a text held a lone
    UTF-16 surrogate): bytes as base64, addresses as ``[digits, ton, npi]``, states as numbers,
    and for messages only the fields that differ from their default."""

    def __init__(self, path: Path) -> None:
        # Not ``mode=ro``: a file the old bridge left with a WAL may need recovery, which writes.
        self.conn = sqlite3.connect(path, check_same_thread=False)
        self.conn.execute("PRAGMA query_only=ON")

    def close(self) -> None:
        self.conn.close()

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return self.conn.execute(sql, params).fetchall()

    def messages(self) -> Iterator[Message]:
        for (data,) in self.rows("SELECT data FROM messages ORDER BY created_at, id"):
            yield _message(data)

    def history(self, message_id: str) -> list[StateChange]:
        return [
            StateChange(message_id, MessageState(state), at, detail)
            for state, at, detail in self.rows(
                "SELECT state, at, detail FROM history WHERE message_id = ? ORDER BY rowid",
                (message_id,),
            )
        ]

    def parts(self) -> list[StoredPart]:
        return [
            StoredPart(*row)
            for row in self.rows(
                "SELECT key, seqnum, total, message_id, payload, received_at, meta FROM parts"
                " ORDER BY key, seqnum"
            )
        ]

    def deliveries(self) -> Iterator[tuple[str, Receipt | InboundMessage, float]]:
        """Every queued receipt and MO: by account, in queue order."""
        for account, kind, data, enqueued_at in self.rows(
            "SELECT account, kind, data, enqueued_at FROM deliveries ORDER BY account, id"
        ):
            if kind == "receipt":
                yield account, _receipt(data), enqueued_at
            elif kind == "mo":
                yield account, _inbound(data), enqueued_at
            else:
                raise ValueError(f"unknown delivery kind {kind!r}")


_MESSAGE_FIELDS = frozenset(f.name for f in fields(Message))
_msgspec_decode = msgspec.json.Decoder().decode
_stdlib_decode = json.JSONDecoder().decode


def _json(text: str | bytes) -> Any:
    try:
        return _msgspec_decode(text)
    except msgspec.DecodeError:  # a lone surrogate, written escaped by the stdlib
        return _stdlib_decode(text if isinstance(text, str) else text.decode())


def _unb64(text: str) -> bytes:
    return base64.b64decode(text) if text else b""


def _address(value: list[Any]) -> Address:
    return Address(value[0], value[1], value[2])


def _message(text: str | bytes) -> Message:
    """Missing keys take the field's default (that is how defaults were stored); keys this
    version does not know are ignored."""
    d: dict[str, Any] = _json(text)
    d["source"] = _address(d["source"])
    d["destination"] = _address(d["destination"])
    if "binary" in d:
        d["binary"] = _unb64(d["binary"])
    if "udh" in d:
        d["udh"] = _unb64(d["udh"])
    if "state" in d:
        d["state"] = MessageState(d["state"])
    if not _MESSAGE_FIELDS.issuperset(d):
        d = {k: v for k, v in d.items() if k in _MESSAGE_FIELDS}
    return Message(**d)


def _receipt(text: str) -> Receipt:
    d: dict[str, Any] = _json(text)
    network_error = d.get("network_error")
    return Receipt(
        account=d["account"],
        message_id=d["message_id"],
        source=_address(d["source"]),
        destination=_address(d["destination"]),
        state=MessageState(d["state"]),
        error_code=d["error_code"],
        submitted_at=d["submitted_at"],
        done_at=d["done_at"],
        text_head=d["text_head"],
        intermediate=d.get("intermediate", False),
        network_error=(network_error[0], network_error[1]) if network_error else None,
    )


def _inbound(text: str) -> InboundMessage:
    d: dict[str, Any] = _json(text)
    return InboundMessage(
        account=d["account"],
        source=_address(d["source"]),
        destination=_address(d["destination"]),
        text=d["text"],
        binary=_unb64(d.get("binary", "")),
        received_at=d.get("received_at", 0.0),
        provider=d.get("provider", ""),
    )
