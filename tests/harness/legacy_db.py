"""A ``bridge.db`` as bridges before engine v2 wrote it, for the tests of the one-shot import
(:mod:`bridge.store.legacy`): the old schema's own SQL, WAL mode, and rows in the old encoding
(JSON ``data`` columns: bytes as base64, addresses as ``[digits, ton, npi]``, states as numbers,
message fields at their default left out). The bridge itself only reads such files."""

from __future__ import annotations

import base64
import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import Any

from bridge.core.model import Address, InboundMessage, Message, Receipt
from bridge.core.store import StateChange, StoredPart

# The tables of the old store's schema (version 1), as it created them.
SCHEMA = """
CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    state INTEGER NOT NULL,
    provider_message_id TEXT,
    next_attempt_at REAL NOT NULL,
    created_at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE message_parts (part_id TEXT PRIMARY KEY, message_id TEXT NOT NULL);
CREATE TABLE history (
    message_id TEXT NOT NULL,
    state INTEGER NOT NULL,
    at REAL NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE parts (
    key TEXT NOT NULL,
    seqnum INTEGER NOT NULL,
    total INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    received_at REAL NOT NULL,
    meta BLOB NOT NULL,
    PRIMARY KEY (key, seqnum)
);
CREATE TABLE correlations (
    provider TEXT NOT NULL,
    provider_message_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (provider, provider_message_id)
);
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
PRAGMA user_version=1;
"""

_ALWAYS = ("id", "account", "source", "destination", "text", "part_ids", "created_at", "state")


def _value(value: Any) -> Any:
    if isinstance(value, Address):
        return [value.digits, value.ton, value.npi]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii") if value else ""
    if isinstance(value, tuple | list):
        return [_value(v) for v in value]
    if isinstance(value, int):  # enums (states) as their number
        return int(value)
    return value


def _json(obj: Any, keep: tuple[str, ...] = ()) -> str:
    """A dataclass as the old JSON; with ``keep``, only those fields and the non-default ones."""
    d = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        default = f.default
        if keep and f.name not in keep and default is not dataclasses.MISSING and value == default:
            continue
        d[f.name] = _value(value)
    return json.dumps(d, separators=(",", ":"))


class OldBridgeDb:
    """Writes rows into a new ``bridge.db`` the way the old store did."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def message(self, m: Message, *history: StateChange) -> None:
        self.conn.execute(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)",
            (m.id, m.account, int(m.state), m.provider_message_id, m.next_attempt_at,
             m.created_at, _json(m, _ALWAYS)),
        )  # fmt: skip
        self.conn.executemany(
            "INSERT INTO message_parts VALUES (?, ?)",
            [(pid, m.id) for pid in m.part_ids if pid != m.id],
        )
        self.conn.executemany(
            "INSERT INTO history VALUES (?, ?, ?, ?)",
            [(c.message_id, int(c.state), c.at, c.detail) for c in history],
        )

    def correlation(self, provider: str, pid: str, message_id: str, expires: float) -> None:
        self.conn.execute(
            "INSERT INTO correlations VALUES (?, ?, ?, ?)", (provider, pid, message_id, expires)
        )

    def part(self, p: StoredPart) -> None:
        self.conn.execute(
            "INSERT INTO parts VALUES (?, ?, ?, ?, ?, ?, ?)",
            (p.key, p.seqnum, p.total, p.message_id, p.payload, p.received_at, p.meta),
        )

    def delivery(self, account: str, item: Receipt | InboundMessage, at: float) -> None:
        kind = "receipt" if isinstance(item, Receipt) else "mo"
        self.conn.execute(
            "INSERT INTO deliveries(account, kind, data, enqueued_at) VALUES (?, ?, ?, ?)",
            (account, kind, _json(item), at),
        )
