"""EmbeddedStore against real files: the Store contract, group commit, journal replay across
close/reopen, torn tails, snapshots and compaction, a really full disk, and SIGKILL of a writing
process."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.model import Address, InboundMessage, Message, MessageState
from bridge.core.store import DeliveryItem, StateChange, Store
from bridge.store.common import (
    DuplicateMessage,
    StoreUnavailable,
    message_from_blob,
    message_to_blob,
)
from bridge.store.embedded import EmbeddedStore
from bridge.store.journal import segments, snapshots
from tests.harness.records import HANDSET, full_message, msg, part, receipt


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EmbeddedStore]:
    s = EmbeddedStore(tmp_path / "store")
    await s.open()
    yield s
    await s.close()


async def reopen(s: EmbeddedStore, **kw: Any) -> EmbeddedStore:
    await s.close()
    fresh = EmbeddedStore(s.directory, **kw)
    await fresh.open()
    return fresh


def test_satisfies_the_protocol(tmp_path: Path) -> None:
    s: Store = EmbeddedStore(tmp_path / "x")  # mypy checks the structural match
    assert s is not None


# --------------------------------------------------------------------------- serialisation




def test_message_blob_round_trip_covers_every_field() -> None:
    m = full_message()
    for f in fields(Message):  # the sample really differs from the defaults everywhere
        assert getattr(m, f.name) != getattr(msg("x", account=""), f.name) or f.name in (
            "id",
            "account",
        ), f.name
    assert message_from_blob(message_to_blob(m)) == m


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
def test_message_blob_round_trip_property(m: Message) -> None:
    assert message_from_blob(message_to_blob(m)) == m


# --------------------------------------------------------------------------- messages


async def test_add_and_get_message_round_trip(store: EmbeddedStore) -> None:
    m = full_message()
    await store.add_message(m)
    assert store.get_message_now("full-1") == m
    assert store.get_message_now("nope") is None


async def test_get_message_by_part_id(store: EmbeddedStore) -> None:
    m = msg("m1", part_ids=["m1", "m1-2", "m1-3"])
    await store.add_message(m)
    for any_id in ("m1", "m1-2", "m1-3"):
        assert store.get_message_now(any_id) == m


async def test_add_messages_is_all_or_nothing(store: EmbeddedStore) -> None:
    await store.add_messages([msg("a"), msg("b")])
    assert store.get_message_now("a") is not None and store.get_message_now("b") is not None
    with pytest.raises(DuplicateMessage):
        await store.add_messages([msg("c"), msg("a")])
    assert store.get_message_now("c") is None
    await store.add_messages([])


async def test_what_is_durable_is_the_message_at_call_time(store: EmbeddedStore) -> None:
    m = msg("m1")
    pending = asyncio.ensure_future(store.add_message(m))
    await asyncio.sleep(0)
    m.text = "changed after the call"  # the live object is the caller's; the record is not
    await pending
    store = await reopen(store)
    try:
        loaded = store.get_message_now("m1")
        assert loaded is not None and loaded.text == "hello m1"
    finally:
        await store.close()


async def test_update_message_and_history_order(store: EmbeddedStore) -> None:
    m = msg("m1")
    await store.add_message(m)
    m.provider, m.provider_message_id, m.attempts = "sandbox", "P-1", 1
    await store.update_message(m, StateChange("m1", MessageState.ENROUTE, 1001.0, "sent"))
    m.state, m.done_at = MessageState.DELIVERED, 1005.0
    await store.update_message(m, StateChange("m1", MessageState.DELIVERED, 1005.0, "dlr"))
    await store.update_message(m)  # no history row
    assert store.get_message_now("m1") == m
    assert store.history_now("m1") == [
        StateChange("m1", MessageState.ENROUTE, 1001.0, "sent"),
        StateChange("m1", MessageState.DELIVERED, 1005.0, "dlr"),
    ]
    assert store.history_now("unknown") == []


async def test_history_keeps_record_order_not_time_order(store: EmbeddedStore) -> None:
    await store.add_message(msg("m1"))
    for at in (5.0, 3.0, 4.0):
        await store.update_message(msg("m1"), StateChange("m1", MessageState.ENROUTE, at))
    assert [c.at for c in store.history_now("m1")] == [5.0, 3.0, 4.0]


async def test_update_of_unknown_message_is_ignored(store: EmbeddedStore) -> None:
    await store.update_message(msg("ghost"), StateChange("ghost", MessageState.DELIVERED, 1.0))
    assert store.get_message_now("ghost") is None
    assert store.history_now("ghost") == []


async def test_pending_messages_and_awaiting_report(store: EmbeddedStore) -> None:
    await store.add_messages([msg(f"m{i}") for i in (3, 1, 2, 4, 5)])
    taken = msg("m2", provider="p", provider_message_id="P2")
    final = msg("m4", state=MessageState.DELIVERED)
    final_taken = msg("m5", state=MessageState.REJECTED, provider_message_id="P5")
    for m in (taken, final, final_taken):
        await store.update_message(m)
    assert [m.id for m in store.pending_messages_now()] == ["m1", "m3"]
    assert [m.id for m in store.pending_messages_now(limit=1)] == ["m1"]
    assert [m.id for m in store.pending_messages_now(after_id="m1")] == ["m3"]
    assert store.queue_depth() == 2
    assert store.awaiting_report_now() == [taken]
    assert store.awaiting_report_now(after_id="m2") == []



async def test_delete_message_by_any_id(store: EmbeddedStore) -> None:
    await store.add_message(msg("m1", part_ids=["m1", "m1-2"]))
    await store.update_message(msg("m1"), StateChange("m1", MessageState.ENROUTE, 1.0))
    await store.add_message(msg("m2"))
    assert await store.delete_message("m1-2")
    assert store.get_message_now("m1") is None and store.get_message_now("m1-2") is None
    assert store.history_now("m1") == []
    assert not await store.delete_message("m1")
    assert not await store.delete_message("never")
    assert await store.delete_message("m2")
    # the part id is free again
    await store.add_message(msg("m3", part_ids=["m3", "m1-2"]))


# --------------------------------------------------------------------------- parts


async def test_parts_round_trip_and_replace_on_duplicate(store: EmbeddedStore) -> None:
    await store.add_part(part("k1", 2))
    await store.add_part(part("k1", 1))
    await store.add_part(part("k2", 1, total=2))
    assert store.parts_now("k1") == [part("k1", 1), part("k1", 2)]
    again = part("k1", 2, message_id="resent", payload=b"new")
    await store.add_part(again)
    assert store.parts_now("k1") == [part("k1", 1), again]
    assert store.all_parts_now() == [part("k1", 1), again, part("k2", 1, total=2)]
    assert store.parts_now("none") == []
    await store.drop_parts("k1")
    assert store.all_parts_now() == [part("k2", 1, total=2)]


async def test_complete_parts_is_atomic(store: EmbeddedStore) -> None:
    for n in (1, 2, 3):
        await store.add_part(part("k", n))
    whole = msg("k-p1", part_ids=["k-p1", "k-p2", "k-p3"], text="whole text")
    await store.complete_parts("k", whole)
    assert store.parts_now("k") == []
    assert store.get_message_now("k-p3") == whole

    # a message that cannot be added leaves the parts where they are
    for n in (1, 2):
        await store.add_part(part("j", n, total=2))
    with pytest.raises(DuplicateMessage):
        await store.complete_parts("j", msg("k-p1"))
    assert len(store.parts_now("j")) == 2


# --------------------------------------------------------------------------- correlations


async def test_correlations_lookup_replace_and_expiry(store: EmbeddedStore) -> None:
    await store.correlate("sandbox", "P1", "m1", 100.0)
    await store.correlate("sandbox", "P2", "m2", 200.0)
    await store.correlate("other", "P1", "m9", 300.0)
    assert store.lookup_now("sandbox", "P1") == "m1"
    assert store.lookup_now("other", "P1") == "m9"
    assert store.lookup_now("sandbox", "nope") is None
    await store.correlate("sandbox", "P1", "m1b", 150.0)
    assert store.lookup_now("sandbox", "P1") == "m1b"
    assert await store.expire_correlations(150.0) == 1
    assert store.lookup_now("sandbox", "P1") is None
    assert store.lookup_now("sandbox", "P2") == "m2"
    assert await store.expire_correlations(150.0) == 0


async def test_update_message_correlates_every_part_id_in_one_transaction(
    store: EmbeddedStore,
) -> None:
    m = msg("m1")
    await store.add_messages([m])
    m.provider, m.provider_message_id = "up", "A1"
    await store.update_message(m, correlation=("up", "A1", 500.0), other_ids=("A2", "A3"))
    assert [store.lookup_now("up", pmid) for pmid in ("A1", "A2", "A3")] == ["m1"] * 3
    assert await store.expire_correlations(500.0) == 3


# --------------------------------------------------------------------------- deliveries


async def test_delivery_queue_order_remove_accounts_and_expiry(store: EmbeddedStore) -> None:
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

    assert store.pending_deliveries_now("demo") == [
        DeliveryItem(first, "demo", r1, 10.0),
        DeliveryItem(second, "demo", mo, 20.0),
        DeliveryItem(batch[0], "demo", receipt("m3"), 40.0),
    ]
    assert [d.id for d in store.pending_deliveries_now("demo", after=first, limit=1)] == [second]
    assert store.delivery_accounts_now() == ["acme", "demo", "zeta"]
    assert (store.delivery_depth(), store.delivery_depth("demo")) == (5, 3)
    assert store.delivery_depth("nobody") == 0

    await store.note_delivery_attempt(second)
    await store.note_delivery_attempt(second)
    assert store.pending_deliveries_now("demo")[1].attempts == 2

    await store.remove_delivery(first)
    await store.remove_delivery(first)  # idempotent
    await store.remove_delivery(other)
    assert store.delivery_accounts_now() == ["demo", "zeta"]
    assert [d.id for d in store.pending_deliveries_now("demo")] == [second, batch[0]]

    assert await store.expire_deliveries(40.0) == 1  # only `second` (20.0) is older
    assert store.delivery_depth() == 2
    assert await store.expire_deliveries(41.0) == 2
    assert store.delivery_accounts_now() == []
    assert store.delivery_depth() == 0


async def test_delivery_ids_never_reused_after_reopen(store: EmbeddedStore) -> None:
    ids = [await store.enqueue_delivery("demo", receipt(f"m{i}"), 1.0) for i in range(3)]
    for delivery_id in ids:
        await store.remove_delivery(delivery_id)
    store = await reopen(store)
    try:
        assert await store.enqueue_delivery("demo", receipt("m9"), 2.0) > ids[-1]
    finally:
        await store.close()


# --------------------------------------------------------------------------- group commit


async def test_concurrent_writes_share_few_commits(store: EmbeddedStore) -> None:
    before = store.commits
    await asyncio.gather(*(store.add_message(msg(f"m{i:04d}")) for i in range(1000)))
    commits = store.commits - before
    assert commits <= 10, commits
    store = await reopen(store)
    try:
        assert store.queue_depth() == 1000
        assert len(store.pending_messages_now()) == 1000
    finally:
        await store.close()



async def test_producers_waiting_in_turn_are_batched(store: EmbeddedStore) -> None:
    async def producer(worker: int) -> None:
        for n in range(20):
            await store.add_message(msg(f"w{worker}-{n}"))

    await asyncio.gather(*(producer(w) for w in range(50)))
    assert store.queue_depth() == 1000
    assert store.commits < 100
    assert store.largest_batch > 1

async def test_a_cancelled_caller_does_not_break_the_writer(store: EmbeddedStore) -> None:
    task = asyncio.ensure_future(store.add_message(msg("m1")))
    await asyncio.sleep(0)
    task.cancel()
    await store.add_message(msg("m2"))
    assert store.get_message_now("m2") is not None
    # the write itself was already queued: it is committed all the same
    assert store.get_message_now("m1") is not None


# --------------------------------------------------------------------------- lifecycle


async def test_data_survives_close_and_reopen(store: EmbeddedStore) -> None:
    m1 = msg("m1", part_ids=["m1", "m1-2"])
    await store.add_message(m1)
    m1.attempts = 1
    await store.update_message(m1, StateChange("m1", MessageState.ENROUTE, 5.0, "x"))
    await store.add_part(part("k", 1))
    await store.correlate("p", "P1", "m1", 99.0)
    delivery_id = await store.enqueue_delivery("demo", receipt("m1"), 7.0)
    store = await reopen(store)
    try:
        assert store.get_message_now("m1-2") == m1
        assert store.history_now("m1") == [StateChange("m1", MessageState.ENROUTE, 5.0, "x")]
        assert store.parts_now("k") == [part("k", 1)]
        assert store.lookup_now("p", "P1") == "m1"
        assert store.pending_deliveries_now("demo") == [
            DeliveryItem(delivery_id, "demo", receipt("m1"), 7.0)
        ]
        assert (store.queue_depth(), store.delivery_depth("demo")) == (1, 1)
    finally:
        await store.close()


async def test_close_commits_what_is_queued(tmp_path: Path) -> None:
    s = EmbeddedStore(tmp_path / "x")
    await s.open()
    tasks = [asyncio.ensure_future(s.add_message(msg(f"m{i}"))) for i in range(200)]
    await asyncio.sleep(0)  # the tasks have queued their ops, none has been committed yet
    await s.close()
    await asyncio.gather(*tasks)
    async with EmbeddedStore(s.directory) as again:
        assert again.queue_depth() == 200




async def test_purge_removes_old_final_messages_with_parts_and_history(
    store: EmbeddedStore,
) -> None:
    old = msg("old", part_ids=["old", "old-2"], created_at=100.0)
    live = msg("live", created_at=100.0)  # ENROUTE: never purged, however old
    recent = msg("recent", created_at=900.0)
    for m in (old, live, recent):
        await store.add_message(m)
    for m in (old, recent):
        m.state = MessageState.DELIVERED
        await store.update_message(m, StateChange(m.id, MessageState.DELIVERED, 950.0, "dlr"))
    assert await store.purge_final(created_before=500.0) == 1
    assert store.get_message_now("old") is None and store.get_message_now("old-2") is None
    assert store.history_now("old") == []
    assert store.get_message_now("live") is not None
    assert store.get_message_now("recent") is not None
    assert store.queue_depth() == 1  # the live one; the counters were not disturbed


async def test_purge_works_in_batches(store: EmbeddedStore) -> None:
    for i in range(5):
        m = msg(f"m{i}", created_at=1.0, state=MessageState.REJECTED)
        await store.add_message(m)
    assert await store.purge_final(created_before=10.0, limit=2) == 2
    assert await store.purge_final(created_before=10.0, limit=2) == 2
    assert await store.purge_final(created_before=10.0, limit=2) == 1
    assert await store.purge_final(created_before=10.0, limit=2) == 0


# --------------------------------------------------------------------------- the hot path


async def test_add_message_nowait_calls_back_once_durable_without_a_future(
    store: EmbeddedStore,
) -> None:
    done: list[tuple[Any, Any, BaseException | None]] = []

    def on_durable(arg: Any, result: Any, error: BaseException | None) -> None:
        # memory already holds it when the callback runs: a query_sm right after ESME_ROK works
        done.append((arg, store.get_message_now(arg), error))

    for i in range(100):
        store.add_message_nowait(msg(f"n{i:03d}"), on_durable, f"n{i:03d}")
    assert done == [] and store.get_message_now("n000") is None  # nothing before the disk
    await asyncio.sleep(0.2)
    while len(done) < 100:
        await asyncio.sleep(0.01)
    assert [d[0] for d in done] == [f"n{i:03d}" for i in range(100)]  # in append order
    assert all(d[1] is not None and d[2] is None for d in done)
    assert store.commits <= 5


async def test_add_message_nowait_refuses_a_duplicate_id_at_once(store: EmbeddedStore) -> None:
    await store.add_message(msg("m1", part_ids=["m1", "m1-2"]))
    for taken in ("m1", "m1-2"):
        with pytest.raises(DuplicateMessage):
            store.add_message_nowait(msg(taken), lambda *a: None)


# --------------------------------------------------------------------------- journal replay


async def test_a_torn_tail_is_cut_off_and_everything_before_it_replays(tmp_path: Path) -> None:
    s = EmbeddedStore(tmp_path / "j")
    await s.open()
    for i in range(10):
        await s.add_message(msg(f"m{i}"))
    await s.close()
    ((_, segment),) = segments(tmp_path / "j")
    whole = segment.stat().st_size
    with open(segment, "ab") as f:  # a crash in the middle of a write
        f.write(b"\x40\x00\x00\x00\x12\x34partial record")
    s = EmbeddedStore(tmp_path / "j")
    await s.open()
    try:
        assert s.queue_depth() == 10
        await s.add_message(msg("after"))  # appended where the torn record began
    finally:
        await s.close()
    assert segment.stat().st_size > whole
    async with EmbeddedStore(tmp_path / "j") as again:
        assert again.queue_depth() == 11 and again.get_message_now("after") is not None


async def test_a_corrupt_record_stops_the_replay_there(tmp_path: Path) -> None:
    s = EmbeddedStore(tmp_path / "j")
    await s.open()
    await s.add_message(msg("m1"))
    await s.add_message(msg("m2"))
    await s.close()
    ((_, segment),) = segments(tmp_path / "j")
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in the last record: its crc no longer matches
    segment.write_bytes(bytes(data))
    async with EmbeddedStore(tmp_path / "j") as again:
        assert again.get_message_now("m1") is not None
        assert again.get_message_now("m2") is None


# --------------------------------------------------------------------------- snapshots


async def finish(
    s: EmbeddedStore, m: Message, state: MessageState = MessageState.DELIVERED
) -> None:
    m.state, m.done_at = state, 2000.0
    await s.update_message(m, StateChange(m.id, state, 2000.0, "dlr"))


async def test_snapshots_bound_the_journal_and_restore_the_whole_state(tmp_path: Path) -> None:
    s = EmbeddedStore(tmp_path / "j", segment_bytes=16 * 1024)
    await s.open()
    ids = [f"m{i:04d}" for i in range(600)]
    for i, mid in enumerate(ids):
        m = msg(mid, part_ids=[mid, mid + "-2"])
        await s.add_message(m)
        m.provider, m.provider_message_id = "p", "P" + mid
        await s.update_message(m, StateChange(mid, MessageState.ENROUTE, 1.0, "sent"),
                               correlation=("p", "P" + mid, 9e9))
        if i % 2:
            await finish(s, m)
    r = await s.enqueue_delivery("demo", receipt("m0001"), 5.0)
    await s.add_part(part("k", 1))
    await s.snapshot_now()
    assert s.snapshots_written >= 2
    assert len(snapshots(tmp_path / "j")) == 1
    assert len(segments(tmp_path / "j")) == 1  # older segments were deleted
    await s.add_message(msg("after-snapshot"))
    s = await reopen(s)
    try:
        assert s.replayed_records == 1
        assert len(s.awaiting_report_now()) == 300
        assert s.get_message_now("m0001-2") is not None
        assert s.get_message_now("m0001") == s.get_message_now("m0001-2")
        assert [c.detail for c in s.history_now("m0001")] == ["sent", "dlr"]
        assert s.lookup_now("p", "Pm0599") == "m0599"
        assert [d.id for d in s.pending_deliveries_now("demo")] == [r]
        assert s.parts_now("k") == [part("k", 1)]
        assert s.get_message_now("after-snapshot") is not None
        assert await s.enqueue_delivery("demo", receipt("x"), 6.0) > r
    finally:
        await s.close()


async def test_an_unreadable_snapshot_falls_back_to_the_journal(tmp_path: Path) -> None:
    s = EmbeddedStore(tmp_path / "j")
    await s.open()
    await s.add_message(msg("m1"))
    await s.close()
    (tmp_path / "j" / "snapshot-00000000.bin").write_bytes(b"not msgpack")
    async with EmbeddedStore(tmp_path / "j") as again:
        assert again.get_message_now("m1") is not None


# --------------------------------------------------------------------------- a full disk


@pytest.fixture
def tiny_disk(tmpfs: Callable[[str], Path]) -> Path:
    """A real 1 MiB filesystem (tmpfs), so ENOSPC comes from the kernel, not from a mock."""
    return tmpfs("1m")


async def test_a_full_disk_refuses_writes_loses_nothing_and_recovers(tiny_disk: Path) -> None:
    s = EmbeddedStore(tiny_disk / "store", segment_bytes=1 << 30)
    await s.open()
    await s.add_message(msg("before"))
    ballast = tiny_disk / "ballast"
    with open(ballast, "wb", buffering=0) as f, pytest.raises(OSError):
        while True:
            f.write(b"\0" * 65536)
    with pytest.raises(OSError):
        await s.add_message(msg("refused", text="x" * 4000))
    assert s.get_message_now("refused") is None  # memory holds only what the disk holds
    failures: list[BaseException | None] = []
    s.add_message_nowait(msg("refused-2", text="y" * 4000), lambda a, r, e: failures.append(e))
    while not failures:
        await asyncio.sleep(0.01)
    assert isinstance(failures[0], OSError)
    ballast.unlink()  # the operator frees space: writes work again, no restart needed
    await s.add_message(msg("after"))
    await s.close()
    async with EmbeddedStore(tiny_disk / "store") as again:
        assert again.get_message_now("before") is not None
        assert again.get_message_now("after") is not None  # not hidden behind a torn record
        assert again.get_message_now("refused") is None


async def test_writes_after_close_raise(store: EmbeddedStore) -> None:
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.add_message(msg("m1"))
    with pytest.raises(StoreUnavailable):
        store.add_message_nowait(msg("m2"), lambda *a: None)
    await store.open()  # the same object opens again
    await store.add_message(msg("m1"))
    assert store.get_message_now("m1") is not None


# --------------------------------------------------------------------------- crash


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    """Everything crash_writer.py acknowledged before SIGKILL is in the store when it reopens
    (the writer snapshots every 256 KiB, so the kill can land during a snapshot too)."""
    path = tmp_path / "crash"
    script = Path(__file__).parent / "harness" / "crash_writer.py"
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
    deadline = time.monotonic() + 60
    try:
        while len(acked) < 5000:
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

    complete = [  # whole acknowledgement lines (the store's own log lines go to stdout too)
        line.split() for line in acked if line.endswith("\n") and line[:2] in ("m ", "d ")
    ]
    message_ids = [value for kind, value in complete if kind == "m"]
    delivery_ids = {int(value) for kind, value in complete if kind == "d"}
    assert len(message_ids) >= 4900 - len(delivery_ids) and delivery_ids

    async def check() -> None:
        async with EmbeddedStore(path) as s:
            missing = [m for m in message_ids if s.get_message_now(m) is None]
            assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:5]}"
            stored_deliveries = {d.id for d in s.pending_deliveries_now("crash", limit=10**9)}
            assert delivery_ids <= stored_deliveries
            assert s.snapshots_written == 0 and snapshots(path)  # it did snapshot before the kill

    asyncio.run(check())
    assert os.path.isdir(path)


# --------------------------------------------------------------------------- the archive


async def finish_taken(s: EmbeddedStore, message_id: str, *, created_at: float = 1000.0) -> Message:
    """Add a message, let a provider take it (with a correlation), then make it final."""
    m = msg(message_id, part_ids=[message_id, f"{message_id}-2"], created_at=created_at)
    await s.add_message(m)
    m.provider, m.provider_message_id = "prov", f"p-{message_id}"
    await s.update_message(
        m,
        StateChange(m.id, MessageState.ENROUTE, 1001.0, "accepted by prov"),
        correlation=("prov", m.provider_message_id, 9e9),
    )
    m.state = MessageState.DELIVERED
    await s.update_message(m, StateChange(m.id, m.state, 1002.0, "report from prov"))
    return m


async def archived(s: EmbeddedStore, count: int) -> None:
    async with asyncio.timeout(10):
        while s.archived_count() < count or s.finals_in_memory():
            await asyncio.sleep(0.05)


async def test_finished_messages_leave_memory_for_the_archive_and_stay_queryable(
    tmp_path: Path,
) -> None:
    s = EmbeddedStore(tmp_path / "store", archive_after=0.0)
    await s.open()
    try:
        for i in range(3):
            await finish_taken(s, f"m{i}")
        live = msg("live")
        await s.add_message(live)
        await archived(s, 3)
        assert s.finals_in_memory() == 0
        assert s.get_message_now("m1") is None  # memory holds only what is being worked on
        found = await s.get_message("m1")
        assert found is not None and found.state is MessageState.DELIVERED
        assert (await s.get_message("m1-2")) is not None  # by a part id too
        assert [c.detail for c in await s.history("m1")] == [
            "accepted by prov", "report from prov",
        ]  # fmt: skip
        assert await s.lookup("prov", "p-m1") == "m1"
        assert s.lookup_now("prov", "p-m1") is None
        assert (await s.get_message("live")) is not None
        assert await s.get_message("nothing") is None
    finally:
        await s.close()


async def test_the_archive_survives_a_restart_and_a_snapshot(tmp_path: Path) -> None:
    s = EmbeddedStore(tmp_path / "store", archive_after=0.0)
    await s.open()
    await finish_taken(s, "old")
    await archived(s, 1)
    await s.snapshot_now()
    await finish_taken(s, "new")  # after the snapshot: replayed, then archived again
    s = await reopen(s, archive_after=0.0)
    try:
        await archived(s, 2)
        for mid in ("old", "new"):
            found = await s.get_message(mid)
            assert found is not None and found.state is MessageState.DELIVERED, mid
    finally:
        await s.close()


async def test_retention_purges_archived_messages_and_expiry_their_correlations(
    tmp_path: Path,
) -> None:
    s = EmbeddedStore(tmp_path / "store", archive_after=0.0)
    await s.open()
    try:
        await finish_taken(s, "old", created_at=1000.0)
        await finish_taken(s, "young", created_at=5000.0)
        await archived(s, 2)
        assert await s.purge_final(created_before=2000.0) == 1
        assert await s.get_message("old") is None
        assert await s.get_message("old-2") is None
        assert await s.lookup("prov", "p-old") is None
        assert await s.get_message("young") is not None
        assert await s.expire_correlations(now=9e9 + 1) == 1
        assert await s.lookup("prov", "p-young") is None
    finally:
        await s.close()


async def test_memory_keeps_finished_messages_for_archive_after_seconds(
    store: EmbeddedStore,
) -> None:
    await finish_taken(store, "m1")
    await asyncio.sleep(1.5)  # more than one archive step: the default keeps it an hour
    assert store.finals_in_memory() == 1 and store.archived_count() == 0
    assert store.lookup_now("prov", "p-m1") == "m1"  # a late duplicate report is recognised
