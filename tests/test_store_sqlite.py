"""SqliteStore against real SQLite files: the Store contract, group commit, failure isolation,
durability across close/reopen and across SIGKILL of a writing process."""

from __future__ import annotations

import asyncio
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.model import Address, InboundMessage, Message, MessageState, Receipt
from bridge.store.base import DeliveryItem, StateChange, Store, StoredPart
from bridge.store.sqlite import (
    SqliteStore,
    _message_from_json,
    _message_to_dict,
    _message_to_json,
    _Op,
)

SENDER = Address("Bridge", 5, 0)
HANDSET = Address("4915112345678")


def msg(message_id: str, **kw: Any) -> Message:
    values: dict[str, Any] = {
        "id": message_id,
        "account": "demo",
        "source": SENDER,
        "destination": HANDSET,
        "text": f"hello {message_id}",
        "part_ids": [message_id],
        "created_at": 1000.0,
    }
    values.update(kw)
    return Message(**values)


def receipt(message_id: str, account: str = "demo", **kw: Any) -> Receipt:
    values: dict[str, Any] = {
        "account": account,
        "message_id": message_id,
        "source": HANDSET,
        "destination": SENDER,
        "state": MessageState.DELIVERED,
        "error_code": 0,
        "submitted_at": 1000.0,
        "done_at": 1010.0,
        "text_head": "hello",
    }
    values.update(kw)
    return Receipt(**values)


def part(key: str, seqnum: int, total: int = 3, **kw: Any) -> StoredPart:
    values: dict[str, Any] = {
        "key": key,
        "seqnum": seqnum,
        "total": total,
        "message_id": f"{key}-p{seqnum}",
        "payload": bytes([seqnum]) * 10,
        "received_at": 1000.0 + seqnum,
        "meta": b"\x00meta\xff",
    }
    values.update(kw)
    return StoredPart(**values)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "db" / "bridge.sqlite")
    await s.open()
    yield s
    await s.close()


async def reopen(s: SqliteStore) -> SqliteStore:
    await s.close()
    fresh = SqliteStore(s.path)
    await fresh.open()
    return fresh


def test_satisfies_the_protocol(tmp_path: Path) -> None:
    s: Store = SqliteStore(tmp_path / "x.sqlite")  # mypy checks the structural match
    assert s is not None


# --------------------------------------------------------------------------- serialisation


def full_message() -> Message:
    """Every field set to something other than its default."""
    return Message(
        id="full-1",
        account="acct",
        source=Address("4930123456", 1, 1),
        destination=Address("ALPHA", 5, 0),
        text="Grüße € 😀 \ud83d",  # emoji and a lone surrogate from a broken UCS2 pair
        data_coding=8,
        binary=b"\x00\xff\x10bin",
        udh=b"\x05\x04\x0b\x84\x23\xf0",
        flash=True,
        registered_delivery=0x11,
        priority=2,
        esm_class=0x40,
        protocol_id=0x7F,
        service_type="CMT",
        part_ids=["full-1", "full-2"],
        created_at=1700000000.123456,
        schedule_at=1700000100.5,
        expire_at=1700086400.25,
        state=MessageState.UNDELIVERABLE,
        attempts=3,
        next_attempt_at=1700000200.75,
        route=["phlymail", "smsflatrate"],
        provider="phlymail",
        provider_message_id="PX-9",
        error_code=42,
        done_at=1700000300.0,
    )


def test_message_json_round_trip_covers_every_field() -> None:
    m = full_message()
    assert set(_message_to_dict(m)) == {f.name for f in fields(Message)}
    for f in fields(Message):  # the sample really differs from the defaults everywhere
        assert getattr(m, f.name) != getattr(msg("x", account=""), f.name) or f.name in (
            "id",
            "account",
        ), f.name
    assert _message_from_json(_message_to_json(m)) == m


addresses = st.builds(Address, st.text(max_size=20), st.integers(0, 6), st.integers(0, 18))
floats = st.floats(allow_nan=False, allow_infinity=False)
ids = st.text(min_size=1, max_size=64)


@settings(max_examples=200, deadline=None)
@given(
    st.builds(
        Message,
        id=ids,
        account=st.text(max_size=16),
        source=addresses,
        destination=addresses,
        text=st.none() | st.text(),
        data_coding=st.integers(0, 255),
        binary=st.binary(max_size=140),
        udh=st.binary(max_size=20),
        flash=st.booleans(),
        registered_delivery=st.integers(0, 255),
        priority=st.integers(0, 3),
        esm_class=st.integers(0, 255),
        protocol_id=st.integers(0, 255),
        service_type=st.text(max_size=5),
        part_ids=st.lists(ids, max_size=4),
        created_at=floats,
        schedule_at=st.none() | floats,
        expire_at=st.none() | floats,
        state=st.sampled_from(MessageState),
        attempts=st.integers(0, 1000),
        next_attempt_at=floats,
        route=st.lists(st.text(max_size=12), max_size=3),
        provider=st.none() | st.text(max_size=12),
        provider_message_id=st.none() | st.text(max_size=40),
        error_code=st.integers(0, 0xFFFF),
        done_at=st.none() | floats,
    )
)
def test_message_json_round_trip_property(m: Message) -> None:
    assert _message_from_json(_message_to_json(m)) == m


def test_default_fields_are_left_out_of_the_json() -> None:
    assert set(_message_to_dict(msg("m1"))) == {
        "id", "account", "source", "destination", "text", "part_ids", "created_at", "state",
        "route",
    }  # fmt: skip


def test_message_json_tolerates_unknown_and_missing_keys() -> None:
    text = _message_to_json(msg("m1")).replace('"route":[]', '"from_the_future":1')
    assert '"route"' not in text
    assert _message_from_json(text) == msg("m1")


# --------------------------------------------------------------------------- messages


async def test_add_and_get_message_round_trip(store: SqliteStore) -> None:
    m = full_message()
    await store.add_message(m)
    assert store.get_message("full-1") == m
    assert store.get_message("nope") is None


async def test_get_message_by_part_id(store: SqliteStore) -> None:
    m = msg("m1", part_ids=["m1", "m1-2", "m1-3"])
    await store.add_message(m)
    for any_id in ("m1", "m1-2", "m1-3"):
        assert store.get_message(any_id) == m


async def test_add_messages_is_all_or_nothing(store: SqliteStore) -> None:
    await store.add_messages([msg("a"), msg("b")])
    assert store.get_message("a") is not None and store.get_message("b") is not None
    with pytest.raises(sqlite3.IntegrityError):
        await store.add_messages([msg("c"), msg("a")])
    assert store.get_message("c") is None
    await store.add_messages([])


async def test_message_snapshot_taken_at_call_time(store: SqliteStore) -> None:
    m = msg("m1")
    pending = asyncio.ensure_future(store.add_message(m))
    await asyncio.sleep(0)
    m.text = "changed after the call"
    await pending
    loaded = store.get_message("m1")
    assert loaded is not None and loaded.text == "hello m1"


async def test_update_message_and_history_order(store: SqliteStore) -> None:
    m = msg("m1")
    await store.add_message(m)
    m.provider, m.provider_message_id, m.attempts = "sandbox", "P-1", 1
    await store.update_message(m, StateChange("m1", MessageState.ENROUTE, 1001.0, "sent"))
    m.state, m.done_at = MessageState.DELIVERED, 1005.0
    await store.update_message(m, StateChange("m1", MessageState.DELIVERED, 1005.0, "dlr"))
    await store.update_message(m)  # no history row
    assert store.get_message("m1") == m
    assert store.history("m1") == [
        StateChange("m1", MessageState.ENROUTE, 1001.0, "sent"),
        StateChange("m1", MessageState.DELIVERED, 1005.0, "dlr"),
    ]
    assert store.history("unknown") == []


async def test_history_keeps_record_order_not_time_order(store: SqliteStore) -> None:
    await store.add_message(msg("m1"))
    for at in (5.0, 3.0, 4.0):
        await store.update_message(msg("m1"), StateChange("m1", MessageState.ENROUTE, at))
    assert [c.at for c in store.history("m1")] == [5.0, 3.0, 4.0]


async def test_update_of_unknown_message_is_ignored(store: SqliteStore) -> None:
    await store.update_message(msg("ghost"), StateChange("ghost", MessageState.DELIVERED, 1.0))
    assert store.get_message("ghost") is None
    assert store.history("ghost") == []


async def test_pending_messages_and_awaiting_report(store: SqliteStore) -> None:
    await store.add_messages([msg(f"m{i}") for i in (3, 1, 2, 4, 5)])
    taken = msg("m2", provider="p", provider_message_id="P2")
    final = msg("m4", state=MessageState.DELIVERED)
    final_taken = msg("m5", state=MessageState.REJECTED, provider_message_id="P5")
    for m in (taken, final, final_taken):
        await store.update_message(m)
    assert [m.id for m in store.pending_messages()] == ["m1", "m3"]
    assert [m.id for m in store.pending_messages(limit=1)] == ["m1"]
    assert [m.id for m in store.pending_messages(after_id="m1")] == ["m3"]
    assert store.queue_depth() == 2
    assert store.awaiting_report() == [taken]
    assert store.awaiting_report(after_id="m2") == []


async def test_pending_queries_use_the_partial_indexes(store: SqliteStore) -> None:
    read = store._reader()
    for sql, index in (
        ("provider_message_id IS NULL", "messages_pending"),
        ("provider_message_id IS NOT NULL", "messages_awaiting"),
    ):
        plan = read.execute(
            "EXPLAIN QUERY PLAN SELECT data FROM messages WHERE state = 1 AND "
            f"{sql} AND id > ? ORDER BY id LIMIT ?",
            ("", 10),
        ).fetchall()
        assert index in str(plan), plan


async def test_queue_depth_follows_every_change(store: SqliteStore) -> None:
    assert store.queue_depth() == 0
    await store.add_messages([msg("a"), msg("b"), msg("c")])
    await store.add_message(msg("final", state=MessageState.REJECTED))
    assert store.queue_depth() == 3
    await store.update_message(msg("a", provider_message_id="P"))
    assert store.queue_depth() == 2
    await store.update_message(msg("a", provider_message_id=None))  # a retry gives it back
    assert store.queue_depth() == 3
    await store.update_message(msg("b", state=MessageState.EXPIRED))
    await store.update_message(msg("b", state=MessageState.EXPIRED, attempts=2))  # no change
    assert store.queue_depth() == 2
    assert await store.delete_message("c")
    assert await store.delete_message("final")
    assert store.queue_depth() == 1


async def test_delete_message_by_any_id(store: SqliteStore) -> None:
    await store.add_message(msg("m1", part_ids=["m1", "m1-2"]))
    await store.update_message(msg("m1"), StateChange("m1", MessageState.ENROUTE, 1.0))
    await store.add_message(msg("m2"))
    assert await store.delete_message("m1-2")
    assert store.get_message("m1") is None and store.get_message("m1-2") is None
    assert store.history("m1") == []
    assert not await store.delete_message("m1")
    assert not await store.delete_message("never")
    assert await store.delete_message("m2")
    # the part id is free again
    await store.add_message(msg("m3", part_ids=["m3", "m1-2"]))


# --------------------------------------------------------------------------- parts


async def test_parts_round_trip_and_replace_on_duplicate(store: SqliteStore) -> None:
    await store.add_part(part("k1", 2))
    await store.add_part(part("k1", 1))
    await store.add_part(part("k2", 1, total=2))
    assert store.parts("k1") == [part("k1", 1), part("k1", 2)]
    again = part("k1", 2, message_id="resent", payload=b"new")
    await store.add_part(again)
    assert store.parts("k1") == [part("k1", 1), again]
    assert store.all_parts() == [part("k1", 1), again, part("k2", 1, total=2)]
    assert store.parts("none") == []
    await store.drop_parts("k1")
    assert store.all_parts() == [part("k2", 1, total=2)]


async def test_complete_parts_is_atomic(store: SqliteStore) -> None:
    for n in (1, 2, 3):
        await store.add_part(part("k", n))
    whole = msg("k-p1", part_ids=["k-p1", "k-p2", "k-p3"], text="whole text")
    await store.complete_parts("k", whole)
    assert store.parts("k") == []
    assert store.get_message("k-p3") == whole

    # a message that cannot be added leaves the parts where they are
    for n in (1, 2):
        await store.add_part(part("j", n, total=2))
    with pytest.raises(sqlite3.IntegrityError):
        await store.complete_parts("j", msg("k-p1"))
    assert len(store.parts("j")) == 2


# --------------------------------------------------------------------------- correlations


async def test_correlations_lookup_replace_and_expiry(store: SqliteStore) -> None:
    await store.correlate("sandbox", "P1", "m1", 100.0)
    await store.correlate("sandbox", "P2", "m2", 200.0)
    await store.correlate("other", "P1", "m9", 300.0)
    assert store.lookup("sandbox", "P1") == "m1"
    assert store.lookup("other", "P1") == "m9"
    assert store.lookup("sandbox", "nope") is None
    await store.correlate("sandbox", "P1", "m1b", 150.0)
    assert store.lookup("sandbox", "P1") == "m1b"
    assert await store.expire_correlations(150.0) == 1
    assert store.lookup("sandbox", "P1") is None
    assert store.lookup("sandbox", "P2") == "m2"
    assert await store.expire_correlations(150.0) == 0


async def test_update_message_correlates_every_part_id_in_one_transaction(
    store: SqliteStore,
) -> None:
    m = msg("m1")
    await store.add_messages([m])
    m.provider, m.provider_message_id = "up", "A1"
    await store.update_message(m, correlation=("up", "A1", 500.0), other_ids=("A2", "A3"))
    assert [store.lookup("up", pmid) for pmid in ("A1", "A2", "A3")] == ["m1"] * 3
    assert await store.expire_correlations(500.0) == 3


# --------------------------------------------------------------------------- deliveries


async def test_delivery_queue_order_remove_accounts_and_expiry(store: SqliteStore) -> None:
    mo = InboundMessage(
        account="demo",
        source=HANDSET,
        destination=Address("12345", 3, 0),
        text=None,
        binary=b"\x01\x02",
        received_at=999.0,
        provider="sandbox",
    )
    r1 = receipt("m1", network_error=(3, 11), intermediate=True)
    first = await store.enqueue_delivery("demo", r1, 10.0)
    second = await store.enqueue_delivery("demo", mo, 20.0)
    other = await store.enqueue_delivery("acme", receipt("m2", account="acme"), 30.0)
    batch = await store.enqueue_deliveries(
        [("demo", receipt("m3")), ("zeta", receipt("m4", account="zeta"))], 40.0
    )
    assert first < second < other < batch[0] < batch[1]
    assert await store.enqueue_deliveries([], 50.0) == []

    assert store.pending_deliveries("demo") == [
        DeliveryItem(first, "demo", r1, 10.0),
        DeliveryItem(second, "demo", mo, 20.0),
        DeliveryItem(batch[0], "demo", receipt("m3"), 40.0),
    ]
    assert [d.id for d in store.pending_deliveries("demo", after=first, limit=1)] == [second]
    assert store.delivery_accounts() == ["acme", "demo", "zeta"]
    assert (store.delivery_depth(), store.delivery_depth("demo")) == (5, 3)
    assert store.delivery_depth("nobody") == 0

    await store.note_delivery_attempt(second)
    await store.note_delivery_attempt(second)
    assert store.pending_deliveries("demo")[1].attempts == 2

    await store.remove_delivery(first)
    await store.remove_delivery(first)  # idempotent
    await store.remove_delivery(other)
    assert store.delivery_accounts() == ["demo", "zeta"]
    assert [d.id for d in store.pending_deliveries("demo")] == [second, batch[0]]

    assert await store.expire_deliveries(40.0) == 1  # only `second` (20.0) is older
    assert store.delivery_depth() == 2
    assert await store.expire_deliveries(41.0) == 2
    assert store.delivery_accounts() == []
    assert store.delivery_depth() == 0


async def test_enqueue_rejects_foreign_objects_at_once(store: SqliteStore) -> None:
    with pytest.raises(TypeError):
        await store.enqueue_delivery("demo", msg("m1"), 1.0)  # type: ignore[arg-type]
    assert store.delivery_depth() == 0


async def test_delivery_ids_never_reused_after_reopen(store: SqliteStore) -> None:
    ids = [await store.enqueue_delivery("demo", receipt(f"m{i}"), 1.0) for i in range(3)]
    for delivery_id in ids:
        await store.remove_delivery(delivery_id)
    store = await reopen(store)
    try:
        assert await store.enqueue_delivery("demo", receipt("m9"), 2.0) > ids[-1]
    finally:
        await store.close()


# --------------------------------------------------------------------------- group commit


async def test_concurrent_writes_share_few_commits(store: SqliteStore) -> None:
    before = store.commits
    await asyncio.gather(*(store.add_message(msg(f"m{i:04d}")) for i in range(1000)))
    commits = store.commits - before
    assert commits <= 10, commits
    assert store.replays == 0
    store = await reopen(store)
    try:
        assert store.queue_depth() == 1000
        assert len(store.pending_messages()) == 1000
    finally:
        await store.close()


async def test_producers_waiting_in_turn_are_batched(store: SqliteStore) -> None:
    async def producer(worker: int) -> None:
        for n in range(20):
            await store.add_message(msg(f"w{worker}-{n}"))

    await asyncio.gather(*(producer(w) for w in range(50)))
    assert store.queue_depth() == 1000
    assert store.commits < 100
    assert store.largest_batch > 1


async def test_max_batch_bounds_a_transaction(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "x.sqlite", max_batch=7) as s:
        await asyncio.gather(*(s.add_message(msg(f"m{i}")) for i in range(50)))
        assert s.largest_batch <= 7
        assert s.commits >= 8
        assert s.queue_depth() == 50
    with pytest.raises(ValueError):
        SqliteStore(tmp_path / "y.sqlite", max_batch=0)


async def test_a_failing_op_fails_only_itself(store: SqliteStore) -> None:
    await store.add_message(msg("dup"))
    await store.add_message(msg("gone"))
    await store.correlate("p", "P1", "m1", 1.0)
    before = store.commits
    results = await asyncio.gather(
        *(store.add_message(msg(f"a{i}")) for i in range(5)),
        store.delete_message("gone"),
        store.expire_correlations(5.0),
        store.add_message(msg("dup")),
        store.update_message(msg("a0", text="updated")),
        store.enqueue_delivery("demo", receipt("a1"), 1.0),
        store.add_part(part("k", 1)),
        *(store.add_message(msg(f"b{i}")) for i in range(5)),
        return_exceptions=True,
    )
    assert store.commits - before == 1  # all in one transaction
    assert store.replays == 1
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], sqlite3.IntegrityError), results
    assert results[5:7] == [True, 1]  # results of the replay, not of the rolled-back pass
    assert store.get_message("gone") is None and store.lookup("p", "P1") is None
    for i in range(5):
        assert store.get_message(f"a{i}") is not None
        assert store.get_message(f"b{i}") is not None
    updated = store.get_message("a0")
    assert updated is not None and updated.text == "updated"
    assert store.delivery_depth() == 1 and len(store.parts("k")) == 1


async def test_a_value_sqlite_cannot_bind_fails_only_its_op(store: SqliteStore) -> None:
    too_big = 1 << 70
    results = await asyncio.gather(
        store.add_message(msg("ok1")),
        store.correlate("p", "P1", "m1", 1.0),
        store.add_part(StoredPart("k", too_big, 2, "m", b"", 1.0, b"")),  # OverflowError
        store.add_part(part("k", 2)),
        store.add_message(msg("ok2")),
        return_exceptions=True,
    )
    assert isinstance(results[2], OverflowError), results
    assert [r for i, r in enumerate(results) if i != 2] == [None] * 4
    assert [p.seqnum for p in store.parts("k")] == [2]
    assert store.lookup("p", "P1") == "m1"


class _FailingConnection:
    """Wraps the writer's connection to make one statement fail."""

    def __init__(self, conn: sqlite3.Connection, fail_on: str, lose_transaction: bool) -> None:
        self.conn, self.fail_on, self.lose = conn, fail_on, lose_transaction

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.startswith(self.fail_on):
            if self.lose:  # what SQLite does on SQLITE_FULL / SQLITE_IOERR
                self.conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("disk I/O error")
        return self.conn.execute(sql, *args)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        if sql.startswith(self.fail_on):
            return self.execute(sql)
        return self.conn.executemany(sql, rows)


@pytest.mark.parametrize(
    ("fail_on", "lose"), [("COMMIT", False), ("DELETE FROM parts", True)], ids=["commit", "lost"]
)
async def test_a_failed_transaction_fails_the_whole_batch(
    store: SqliteStore, fail_on: str, lose: bool
) -> None:
    """Ops that went through before the failure are not durable either: all get the error."""
    await store.close()  # drive _apply by hand, without the writer thread
    conn = sqlite3.connect(store.path, isolation_level=None)
    try:
        ops = [
            _Op("add_message", [("INSERT INTO history VALUES (?, 1, 1.0, '')", [("x",)])]),
            _Op("", [("DELETE FROM parts WHERE key = ?", [("k",)])]),
            _Op("", [("INSERT INTO history VALUES (?, 1, 1.0, '')", [("y",)])]),
        ]
        failing = _FailingConnection(conn, fail_on, lose)
        outcomes = store._apply(failing, ops)  # type: ignore[arg-type]
        assert all(isinstance(o, sqlite3.OperationalError) for o in outcomes), outcomes
        assert not conn.in_transaction
        assert conn.execute("SELECT COUNT(*) FROM history").fetchall() == [(0,)]
    finally:
        conn.close()


async def test_a_cancelled_caller_does_not_break_the_writer(store: SqliteStore) -> None:
    task = asyncio.ensure_future(store.add_message(msg("m1")))
    await asyncio.sleep(0)
    task.cancel()
    await store.add_message(msg("m2"))
    assert store.get_message("m2") is not None
    # the write itself was already queued: it is committed all the same
    assert store.get_message("m1") is not None


# the thread re-raises on purpose, so that threading.excepthook logs the bug
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_dead_writer_fails_writes_instead_of_hanging(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(conn: object, batch: object) -> list[Any]:
        raise ZeroDivisionError("a bug in the writer")

    monkeypatch.setattr(store, "_apply", broken)
    with pytest.raises(RuntimeError, match="writer thread died") as info:
        await asyncio.wait_for(store.add_message(msg("m1")), 5)
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    with pytest.raises(RuntimeError, match="writer thread died"):
        await store.add_message(msg("m2"))
    await asyncio.wait_for(store.close(), 5)


# --------------------------------------------------------------------------- lifecycle


async def test_data_survives_close_and_reopen(store: SqliteStore) -> None:
    m1 = msg("m1", part_ids=["m1", "m1-2"])
    await store.add_message(m1)
    m1.attempts = 1
    await store.update_message(m1, StateChange("m1", MessageState.ENROUTE, 5.0, "x"))
    await store.add_part(part("k", 1))
    await store.correlate("p", "P1", "m1", 99.0)
    delivery_id = await store.enqueue_delivery("demo", receipt("m1"), 7.0)
    store = await reopen(store)
    try:
        assert store.get_message("m1-2") == m1
        assert store.history("m1") == [StateChange("m1", MessageState.ENROUTE, 5.0, "x")]
        assert store.parts("k") == [part("k", 1)]
        assert store.lookup("p", "P1") == "m1"
        assert store.pending_deliveries("demo") == [
            DeliveryItem(delivery_id, "demo", receipt("m1"), 7.0)
        ]
        assert (store.queue_depth(), store.delivery_depth("demo")) == (1, 1)
    finally:
        await store.close()


async def test_close_commits_what_is_queued(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "x.sqlite")
    await s.open()
    tasks = [asyncio.ensure_future(s.add_message(msg(f"m{i}"))) for i in range(200)]
    await asyncio.sleep(0)  # the tasks have queued their ops, none has been committed yet
    await s.close()
    await asyncio.gather(*tasks)
    async with SqliteStore(s.path) as again:
        assert again.queue_depth() == 200


async def test_use_after_close_raises(store: SqliteStore) -> None:
    await store.close()
    with pytest.raises(RuntimeError):
        await store.add_message(msg("m1"))
    with pytest.raises(RuntimeError):
        await store.remove_delivery(1)
    with pytest.raises(RuntimeError):
        store.get_message("m1")
    await store.close()  # twice is fine
    await store.open()  # and the same object opens again
    await store.add_message(msg("m1"))
    assert store.get_message("m1") is not None


async def test_counters_are_recomputed_on_open(store: SqliteStore) -> None:
    await store.add_messages([msg("a"), msg("b")])
    await store.enqueue_delivery("demo", receipt("a"), 1.0)
    await store.close()
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE counters SET n = 99")
        conn.execute("UPDATE delivery_counts SET n = 42")
    conn.close()
    async with SqliteStore(store.path) as again:
        assert again.queue_depth() == 2
        assert again.delivery_depth() == 1


async def test_wal_and_full_sync_are_on(store: SqliteStore) -> None:
    assert store._reader().execute("PRAGMA journal_mode").fetchall() == [("wal",)]
    assert store._write is not None
    # synchronous is per connection: ask the writer's (FULL = 2) from its own thread's view
    assert store._write.execute("PRAGMA synchronous").fetchall() == [(2,)]


async def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        await SqliteStore(path).open()


# --------------------------------------------------------------------------- crash


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    """Everything crash_writer.py acknowledged before SIGKILL is in the database."""
    path = tmp_path / "crash.sqlite"
    script = Path(__file__).with_name("crash_writer.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    acked: list[str] = []
    deadline = time.monotonic() + 30
    try:
        while len(acked) < 2000:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                assert proc.stderr is not None
                pytest.fail(f"crash_writer exited early: {proc.stderr.read()}")
            acked.append(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    reader.join(timeout=10)
    while (line := lines.get(timeout=1)) is not None:  # acknowledged before the kill landed
        acked.append(line)
    assert proc.returncode == -signal.SIGKILL
    assert proc.stderr is not None
    proc.stderr.close()

    complete = [line.split() for line in acked if line.endswith("\n")]
    message_ids = [value for kind, value in complete if kind == "m"]
    delivery_ids = {int(value) for kind, value in complete if kind == "d"}
    assert len(message_ids) >= 2000 - len(delivery_ids) and delivery_ids

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored = {row[0] for row in conn.execute("SELECT id FROM messages")}
        stored_deliveries = {row[0] for row in conn.execute("SELECT id FROM deliveries")}
    finally:
        conn.close()
    missing = [m for m in message_ids if m not in stored]
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:5]}"
    assert delivery_ids <= stored_deliveries

    async def check() -> None:  # and the store itself opens on the crashed file
        async with SqliteStore(path) as s:
            assert s.queue_depth() == len(stored)
            assert s.get_message(message_ids[-1]) is not None

    asyncio.run(check())


# ---------------------------------------------------------------------------- retention


async def test_purge_removes_old_final_messages_with_parts_and_history(store: SqliteStore) -> None:
    old = msg("old", part_ids=["old", "old-2"], created_at=100.0)
    live = msg("live", created_at=100.0)  # ENROUTE: never purged, however old
    recent = msg("recent", created_at=900.0)
    for m in (old, live, recent):
        await store.add_message(m)
    for m in (old, recent):
        m.state = MessageState.DELIVERED
        await store.update_message(m, StateChange(m.id, MessageState.DELIVERED, 950.0, "dlr"))
    assert await store.purge_final(created_before=500.0) == 1
    assert store.get_message("old") is None and store.get_message("old-2") is None
    assert store.history("old") == []
    assert store.get_message("live") is not None
    assert store.get_message("recent") is not None
    assert store.queue_depth() == 1  # the live one; the counters were not disturbed


async def test_purge_works_in_batches(store: SqliteStore) -> None:
    for i in range(5):
        m = msg(f"m{i}", created_at=1.0, state=MessageState.REJECTED)
        await store.add_message(m)
    assert await store.purge_final(created_before=10.0, limit=2) == 2
    assert await store.purge_final(created_before=10.0, limit=2) == 2
    assert await store.purge_final(created_before=10.0, limit=2) == 1
    assert await store.purge_final(created_before=10.0, limit=2) == 0
