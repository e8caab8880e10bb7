"""The Store contract, run against both implementations: the embedded journal and Redis (a real
redis-server started by this module: temp dir, AOF with fsync always, a free port).

Only the port's own methods are used (async reads; the ``*_now`` reads after a prefetch where the
store has one), so what passes here holds for either store. The embedded store's internals
(journal, snapshots, a full disk) are tested in test_store_embedded.py; Redis's own (restart,
scripts lost, unreachable) at the end of this file.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.core.model import Address, InboundMessage, MessageState
from bridge.core.store import DeliveryItem, StateChange, Store
from bridge.store.common import DuplicateMessage, StoreUnavailable
from bridge.store.embedded import EmbeddedStore
from bridge.store.redis import RedisStore
from bridge.store.redis_client import redact_url
from tests.harness.records import full_message, msg, part, receipt
from tests.harness.redis_server import RedisServer, redis_server

HANDSET = Address("4915112345678")

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


Factory = Callable[[], Store]


@pytest.fixture(params=["embedded", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """A factory for the store under test; every call opens the same data again."""
    if request.param == "embedded":
        return lambda: EmbeddedStore(tmp_path / "store")
    server: RedisServer = request.getfixturevalue("redis")
    prefix = f"t{next(_prefixes)}:"
    return lambda: RedisStore(server.url, prefix=prefix)


@pytest.fixture
async def store(make_store: Factory) -> AsyncIterator[Store]:
    s = make_store()
    await s.open()
    yield s
    await s.close()


async def reopen(s: Store, make_store: Factory) -> Store:
    await s.close()
    fresh = make_store()
    await fresh.open()
    return fresh


def test_redis_store_satisfies_the_protocol() -> None:
    s: Store = RedisStore("redis://127.0.0.1:1/0")  # mypy checks the structural match
    assert s is not None


# --------------------------------------------------------------------------- messages


async def test_add_and_get_message_round_trip(store: Store) -> None:
    m = full_message()
    await store.add_message(m)
    assert await store.get_message("full-1") == m
    assert await store.get_message("full-2") == m
    assert await store.get_message("nope") is None


async def test_add_messages_is_all_or_nothing(store: Store) -> None:
    await store.add_messages([msg("a"), msg("b")])
    with pytest.raises(DuplicateMessage):
        await store.add_messages([msg("c"), msg("a")])
    assert await store.get_message("c") is None
    with pytest.raises(DuplicateMessage):
        await store.add_messages([msg("d", part_ids=["d", "x"]), msg("e", part_ids=["e", "x"])])
    assert await store.get_message("d") is None
    await store.add_messages([])


async def test_what_is_durable_is_the_message_at_call_time(
    store: Store, make_store: Factory
) -> None:
    m = msg("m1")
    pending = asyncio.ensure_future(store.add_message(m))
    await asyncio.sleep(0)
    m.text = "changed after the call"
    await pending
    store = await reopen(store, make_store)
    try:
        loaded = await store.get_message("m1")
        assert loaded is not None and loaded.text == "hello m1"
    finally:
        await store.close()


async def test_update_message_and_history_order(store: Store) -> None:
    m = msg("m1")
    await store.add_message(m)
    m.provider, m.provider_message_id, m.attempts = "sandbox", "P-1", 1
    await store.update_message(m, StateChange("m1", MessageState.ENROUTE, 1001.0, "sent"))
    m.state, m.done_at = MessageState.DELIVERED, 1005.0
    await store.update_message(m, StateChange("m1", MessageState.DELIVERED, 1005.0, "dlr"))
    await store.update_message(m)  # no history row
    assert await store.get_message("m1") == m
    assert await store.history("m1") == [
        StateChange("m1", MessageState.ENROUTE, 1001.0, "sent"),
        StateChange("m1", MessageState.DELIVERED, 1005.0, "dlr"),
    ]
    assert await store.history("unknown") == []


async def test_a_late_step_of_a_final_message_keeps_its_history_not_its_fields(
    store: Store,
) -> None:
    m = msg("m1", state=MessageState.DELIVERED)
    await store.add_message(m)
    late = msg("m1", state=MessageState.UNDELIVERABLE)
    await store.update_message(late, StateChange("m1", MessageState.UNDELIVERABLE, 9.0, "late"))
    got = await store.get_message("m1")
    assert got is not None and got.state is MessageState.DELIVERED
    assert [c.detail for c in await store.history("m1")] == ["late"]


async def test_update_of_unknown_message_is_ignored(store: Store) -> None:
    await store.update_message(msg("ghost"), StateChange("ghost", MessageState.DELIVERED, 1.0))
    assert await store.get_message("ghost") is None
    assert await store.history("ghost") == []


async def test_pending_messages_and_awaiting_report(store: Store) -> None:
    await store.add_messages([msg(f"m{i}") for i in (3, 1, 2, 4, 5)])
    taken = msg("m2", provider="p", provider_message_id="P2")
    final = msg("m4", state=MessageState.DELIVERED)
    final_taken = msg("m5", state=MessageState.REJECTED, provider_message_id="P5")
    for m in (taken, final, final_taken):
        await store.update_message(m)
    assert [m.id for m in await store.pending_messages()] == ["m1", "m3"]
    assert [m.id for m in await store.pending_messages(limit=1)] == ["m1"]
    assert [m.id for m in await store.pending_messages(after_id="m1")] == ["m3"]
    assert store.queue_depth() == 2
    assert await store.awaiting_report() == [taken]
    assert await store.awaiting_report(after_id="m2") == []


async def test_queue_depth_follows_every_change(store: Store) -> None:
    assert store.queue_depth() == 0
    await store.add_messages([msg("a"), msg("b"), msg("c")])
    await store.add_message(msg("final", state=MessageState.REJECTED))
    assert store.queue_depth() == 3
    await store.update_message(msg("a", provider_message_id="P"))
    assert store.queue_depth() == 2
    await store.update_message(msg("a", provider_message_id=None))  # a retry gives it back
    assert store.queue_depth() == 3
    await store.update_message(msg("b", state=MessageState.EXPIRED))
    await store.update_message(msg("b", state=MessageState.EXPIRED, attempts=2))
    assert store.queue_depth() == 2
    assert await store.delete_message("c")
    assert await store.delete_message("final")
    assert store.queue_depth() == 1


async def test_delete_message_by_any_id(store: Store) -> None:
    await store.add_message(msg("m1", part_ids=["m1", "m1-2"]))
    await store.update_message(msg("m1"), StateChange("m1", MessageState.ENROUTE, 1.0))
    await store.add_message(msg("m2"))
    assert await store.delete_message("m1-2")
    assert await store.get_message("m1") is None and await store.get_message("m1-2") is None
    assert await store.history("m1") == []
    assert not await store.delete_message("m1")
    assert not await store.delete_message("never")
    assert await store.delete_message("m2")
    await store.add_message(msg("m3", part_ids=["m3", "m1-2"]))  # the part id is free again


async def test_add_message_nowait_calls_back_once_durable_in_order(store: Store) -> None:
    done: list[tuple[Any, BaseException | None]] = []

    def on_durable(arg: Any, result: Any, error: BaseException | None) -> None:
        done.append((arg, error))

    for i in range(100):
        store.add_message_nowait(msg(f"n{i:03d}"), on_durable, f"n{i:03d}")
    assert done == []
    while len(done) < 100:
        await asyncio.sleep(0.01)
    assert [d[0] for d in done] == [f"n{i:03d}" for i in range(100)]
    assert all(d[1] is None for d in done)
    assert await store.get_message("n099") is not None
    assert store.queue_depth() == 100


async def test_add_message_nowait_refuses_a_duplicate_id(store: Store) -> None:
    await store.add_message(msg("m1", part_ids=["m1", "m1-2"]))
    for taken in ("m1", "m1-2"):
        with pytest.raises(DuplicateMessage):
            store.add_message_nowait(msg(taken), lambda *a: None)


async def test_writes_after_close_raise(store: Store) -> None:
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.add_message(msg("m1"))
    with pytest.raises(StoreUnavailable):
        store.add_message_nowait(msg("m2"), lambda *a: None)
    await store.open()  # the same object opens again
    await store.add_message(msg("m1"))
    assert await store.get_message("m1") is not None


# --------------------------------------------------------------------------- local reads


async def test_local_reads_answer_for_what_this_node_wrote_or_prefetched(
    store: Store, make_store: Factory
) -> None:
    m = msg("m1", part_ids=["m1", "m1-2"])
    await store.add_message(m)
    m.provider, m.provider_message_id = "up", "A1"
    await store.update_message(
        m, StateChange("m1", MessageState.ENROUTE, 2.0, "sent"), correlation=("up", "A1", 9e9)
    )
    assert store.get_message_now("m1-2") is m
    assert store.lookup_now("up", "A1") == "m1"
    assert [c.detail for c in store.history_now("m1")] == ["sent"]

    other = await reopen(store, make_store)  # this node after a restart (or another node)
    try:
        prefetch = getattr(other, "prefetch", None)
        if prefetch is not None:  # a networked store: one round trip for what is missing
            pending = prefetch([("up", "A1"), ("up", "nope")], ["m1-2", "never"])
            assert pending is not None
            await pending
            assert prefetch([], ["m1", "m1-2"]) is None  # all here now
        assert other.lookup_now("up", "A1") == "m1"
        assert other.lookup_now("up", "nope") is None
        seen = other.get_message_now("m1-2")
        assert seen is not None and seen.provider_message_id == "A1"
        assert [c.detail for c in other.history_now("m1")] == ["sent"]
    finally:
        await other.close()


# --------------------------------------------------------------------------- parts


async def test_parts_round_trip_and_replace_on_duplicate(store: Store) -> None:
    await store.add_part(part("k1", 2))
    await store.add_part(part("k1", 1))
    await store.add_part(part("k2", 1, total=2))
    assert await store.parts("k1") == [part("k1", 1), part("k1", 2)]
    again = part("k1", 2, message_id="resent", payload=b"new")
    await store.add_part(again)
    assert await store.parts("k1") == [part("k1", 1), again]
    assert await store.all_parts() == [part("k1", 1), again, part("k2", 1, total=2)]
    assert await store.parts("none") == []
    await store.drop_parts("k1")
    assert await store.all_parts() == [part("k2", 1, total=2)]


async def test_complete_parts_is_atomic(store: Store) -> None:
    for n in (1, 2, 3):
        await store.add_part(part("k", n))
    whole = msg("k-p1", part_ids=["k-p1", "k-p2", "k-p3"], text="whole text")
    await store.complete_parts("k", whole)
    assert await store.parts("k") == []
    assert await store.get_message("k-p3") == whole

    for n in (1, 2):
        await store.add_part(part("j", n, total=2))
    with pytest.raises(DuplicateMessage):
        await store.complete_parts("j", msg("k-p1"))
    assert len(await store.parts("j")) == 2


# --------------------------------------------------------------------------- correlations


async def test_correlations_lookup_replace_and_expiry(store: Store) -> None:
    await store.correlate("sandbox", "P1", "m1", 100.0)
    await store.correlate("sandbox", "P2", "m2", 200.0)
    await store.correlate("other", "P1", "m9", 300.0)
    assert await store.lookup("sandbox", "P1") == "m1"
    assert await store.lookup("other", "P1") == "m9"
    assert await store.lookup("sandbox", "nope") is None
    await store.correlate("sandbox", "P1", "m1b", 150.0)
    assert await store.lookup("sandbox", "P1") == "m1b"
    assert await store.expire_correlations(150.0) == 1
    assert await store.lookup("sandbox", "P1") is None
    assert store.lookup_now("sandbox", "P1") is None
    assert await store.lookup("sandbox", "P2") == "m2"
    assert await store.expire_correlations(150.0) == 0


async def test_update_message_correlates_every_part_id_in_one_transaction(store: Store) -> None:
    m = msg("m1")
    await store.add_messages([m])
    m.provider, m.provider_message_id = "up", "A1"
    await store.update_message(m, correlation=("up", "A1", 500.0), other_ids=("A2", "A3"))
    assert [await store.lookup("up", pmid) for pmid in ("A1", "A2", "A3")] == ["m1"] * 3
    assert await store.expire_correlations(500.0) == 3


# --------------------------------------------------------------------------- deliveries


async def test_delivery_queue_order_remove_accounts_and_expiry(store: Store) -> None:
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

    assert await store.pending_deliveries("demo") == [
        DeliveryItem(first, "demo", r1, 10.0),
        DeliveryItem(second, "demo", mo, 20.0),
        DeliveryItem(batch[0], "demo", receipt("m3"), 40.0),
    ]
    assert [d.id for d in await store.pending_deliveries("demo", after=first, limit=1)] == [
        second
    ]
    assert await store.delivery_accounts() == ["acme", "demo", "zeta"]
    assert (store.delivery_depth(), store.delivery_depth("demo")) == (5, 3)
    assert store.delivery_depth("nobody") == 0

    await store.note_delivery_attempt(second)
    await store.note_delivery_attempt(second)
    assert (await store.pending_deliveries("demo"))[1].attempts == 2

    await store.remove_delivery(first)
    await store.remove_delivery(first)  # idempotent
    await store.remove_delivery(other)
    assert await store.delivery_accounts() == ["demo", "zeta"]
    assert [d.id for d in await store.pending_deliveries("demo")] == [second, batch[0]]

    assert await store.expire_deliveries(40.0) == 1  # only `second` (20.0) is older
    assert store.delivery_depth() == 2
    assert await store.expire_deliveries(41.0) == 2
    assert await store.delivery_accounts() == []
    assert store.delivery_depth() == 0


async def test_a_removed_delivery_is_not_read_again(store: Store) -> None:
    ids = await store.enqueue_deliveries([("demo", receipt(f"m{i}")) for i in range(3)], 1.0)
    store.remove_delivery_nowait(ids[0])
    assert [d.id for d in await store.pending_deliveries("demo")] == ids[1:]
    store.note_delivery_attempt_nowait(ids[1])
    await store.note_delivery_attempt(ids[2])  # a later write: everything before it is done
    assert [(d.id, d.attempts) for d in await store.pending_deliveries("demo")] == [
        (ids[1], 1),
        (ids[2], 1),
    ]


async def test_enqueue_rejects_foreign_objects_at_once(store: Store) -> None:
    with pytest.raises(TypeError):
        await store.enqueue_delivery("demo", msg("m1"), 1.0)  # type: ignore[arg-type]
    assert store.delivery_depth() == 0


async def test_delivery_ids_never_reused_after_reopen(store: Store, make_store: Factory) -> None:
    ids = [await store.enqueue_delivery("demo", receipt(f"m{i}"), 1.0) for i in range(3)]
    for delivery_id in ids:
        await store.remove_delivery(delivery_id)
    store = await reopen(store, make_store)
    try:
        assert await store.enqueue_delivery("demo", receipt("m9"), 2.0) > ids[-1]
    finally:
        await store.close()


# --------------------------------------------------------------------------- batching, lifecycle


async def test_concurrent_writes_share_few_commits(store: Store, make_store: Factory) -> None:
    before = getattr(store, "commits", 0)
    await asyncio.gather(*(store.add_message(msg(f"m{i:04d}")) for i in range(1000)))
    assert getattr(store, "commits", 0) - before <= 10
    store = await reopen(store, make_store)
    try:
        assert store.queue_depth() == 1000
        assert len(await store.pending_messages()) == 1000
    finally:
        await store.close()


async def test_data_survives_close_and_reopen(store: Store, make_store: Factory) -> None:
    m1 = msg("m1", part_ids=["m1", "m1-2"])
    await store.add_message(m1)
    m1.attempts = 1
    await store.update_message(m1, StateChange("m1", MessageState.ENROUTE, 5.0, "x"))
    await store.add_part(part("k", 1))
    await store.correlate("p", "P1", "m1", 99.0)
    delivery_id = await store.enqueue_delivery("demo", receipt("m1"), 7.0)
    store = await reopen(store, make_store)
    try:
        assert await store.get_message("m1-2") == m1
        assert await store.history("m1") == [StateChange("m1", MessageState.ENROUTE, 5.0, "x")]
        assert await store.parts("k") == [part("k", 1)]
        assert await store.lookup("p", "P1") == "m1"
        assert await store.pending_deliveries("demo") == [
            DeliveryItem(delivery_id, "demo", receipt("m1"), 7.0)
        ]
        assert (store.queue_depth(), store.delivery_depth("demo")) == (1, 1)
    finally:
        await store.close()


async def test_purge_removes_old_final_messages_with_parts_and_history(store: Store) -> None:
    old = msg("old", part_ids=["old", "old-2"], created_at=100.0)
    live = msg("live", created_at=100.0)  # ENROUTE: never purged, however old
    recent = msg("recent", created_at=900.0)
    for m in (old, live, recent):
        await store.add_message(m)
    for m in (old, recent):
        m.state = MessageState.DELIVERED
        await store.update_message(m, StateChange(m.id, MessageState.DELIVERED, 950.0, "dlr"))
    assert await store.purge_final(created_before=500.0) == 1
    assert await store.get_message("old") is None and await store.get_message("old-2") is None
    assert await store.history("old") == []
    assert await store.get_message("live") is not None
    assert await store.get_message("recent") is not None
    assert store.queue_depth() == 1


async def test_purge_works_in_batches(store: Store) -> None:
    for i in range(5):
        await store.add_message(msg(f"m{i}", created_at=1.0, state=MessageState.REJECTED))
    assert await store.purge_final(created_before=10.0, limit=2) == 2
    assert await store.purge_final(created_before=10.0, limit=2) == 2
    assert await store.purge_final(created_before=10.0, limit=2) == 1
    assert await store.purge_final(created_before=10.0, limit=2) == 0


# --------------------------------------------------------------------------- Redis only


def test_the_store_url_is_redacted_for_logs() -> None:
    assert redact_url("redis://:s3cret@host:6379/0") == "redis://***@host:6379/0"
    assert redact_url("rediss://user:pw@h/1") == "rediss://***@h/1"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"


async def test_acknowledged_writes_survive_a_redis_kill_with_appendfsync_always(
    tmp_path: Path,
) -> None:
    with redis_server(tmp_path / "r") as server:
        store = RedisStore(server.url)
        await store.open()
        acked: list[str] = []

        def done(arg: Any, result: Any, error: BaseException | None) -> None:
            if error is None:
                acked.append(arg)

        for i in range(500):
            store.add_message_nowait(msg(f"k{i:03d}"), done, f"k{i:03d}")
        while len(acked) < 500:
            await asyncio.sleep(0.01)
        server.kill()  # SIGKILL: only what was fsynced before the replies is there
        server.start()
        await asyncio.sleep(0)
        assert len(await store.pending_messages()) == 500
        await store.close()


async def test_redis_down_fails_writes_and_the_store_recovers_when_it_returns(
    tmp_path: Path,
) -> None:
    with redis_server(tmp_path / "r") as server:
        store = RedisStore(server.url, timeout=1.0)
        await store.open()
        await store.add_message(msg("before"))
        server.kill()
        with pytest.raises(StoreUnavailable):
            await store.add_message(msg("while-down"))
        errors: list[BaseException | None] = []
        store.add_message_nowait(msg("nowait-down"), lambda a, r, e: errors.append(e))
        while not errors:
            await asyncio.sleep(0.01)
        assert isinstance(errors[0], StoreUnavailable)
        server.start()  # same port, same AOF: the scripts are gone, the data is not
        await store.add_message(msg("after"))
        assert [m.id for m in await store.pending_messages()] == ["after", "before"]
        assert await store.ping()
        await store.close()


async def test_a_password_protected_redis_with_the_password_in_the_url(tmp_path: Path) -> None:
    with redis_server(tmp_path / "r", password="s3cret") as server:
        async with RedisStore(server.url) as store:
            await store.add_message(msg("m1"))
            assert await store.get_message("m1") is not None
            assert "s3cret" not in store.description


async def test_an_acknowledged_delivery_removed_while_redis_is_away_is_removed_when_it_returns(
    tmp_path: Path,
) -> None:
    with redis_server(tmp_path / "r") as server:
        async with RedisStore(server.url, timeout=1.0) as store:
            ids = await store.enqueue_deliveries(
                [("demo", receipt("m1")), ("demo", receipt("m2"))], 1.0
            )
            server.kill()
            store.remove_delivery_nowait(ids[0])
            await asyncio.sleep(0.2)  # the removal failed once
            server.start()
            for _ in range(100):
                await asyncio.sleep(0.05)
                if not store._removing:
                    break
            assert [d.id for d in await store.pending_deliveries("demo")] == ids[1:]
