"""Cluster mode on Redis: the core's report path over a RedisStore shared by two "nodes" (two
store instances on one real redis-server started here), and the start-up contract."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import smpplib.exceptions
import smpplib.gsm

from bridge.core.model import DeliveryReport, MessageState
from bridge.core.reports import ReportHandler
from bridge.store.cluster_limits import ClusterRateLimiter, shared_tps
from bridge.store.redis import RedisStore
from tests.harness.daemon import BridgeThread, bridge_config
from tests.harness.esme import Esme, receipt_id, receipts_by_id
from tests.harness.loop import LoopThread, wait_until
from tests.harness.records import msg
from tests.harness.redis_server import RedisServer, redis_server
from tests.harness.server import make_account

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


def clock() -> float:
    return 2000.0


async def test_a_report_landing_on_another_node_finds_the_message_and_queues_its_receipt(
    redis: RedisServer,
) -> None:
    prefix = f"c{next(_prefixes)}:"
    async with RedisStore(redis.url, prefix=prefix) as a, RedisStore(
        redis.url, prefix=prefix
    ) as b:
        m = msg("m1", registered_delivery=1)
        await a.add_message(m)
        m.provider, m.provider_message_id = "sandbox", "P1"
        await a.update_message(m, correlation=("sandbox", "P1", 9e9))

        handler = ReportHandler(b, clock)  # the provider's callback reached node B
        report = DeliveryReport("sandbox", "P1", MessageState.DELIVERED, done_at=1500.0)
        assert await handler.on_report(report) is True
        queued = await b.pending_deliveries("demo")
        assert [(d.item.message_id, d.item.state) for d in queued] == [  # type: ignore[union-attr]
            ("m1", MessageState.DELIVERED)
        ]
        final = await a.get_message("m1")
        assert final is not None and final.state is MessageState.DELIVERED
        # the same report again (providers resend), on either node: no second receipt
        assert await ReportHandler(a, clock).on_report(report) is True
        assert await handler.on_report(report) is True
        assert len(await b.pending_deliveries("demo")) == 1
        assert handler.duplicate_reports == 1


async def test_a_report_for_an_unknown_id_is_parked_not_lost(redis: RedisServer) -> None:
    prefix = f"c{next(_prefixes)}:"
    async with RedisStore(redis.url, prefix=prefix) as store:
        handler = ReportHandler(store, clock)
        report = DeliveryReport("sandbox", "nope", MessageState.DELIVERED)
        assert await handler.on_report(report) is False
        assert handler.early_reports == 1


async def test_an_early_report_on_one_node_is_applied_once_another_node_stores_the_correlation(
    redis: RedisServer,
) -> None:
    prefix = f"c{next(_prefixes)}:"
    async with RedisStore(redis.url, prefix=prefix, node_id="a") as a, RedisStore(
        redis.url, prefix=prefix, node_id="b"
    ) as b:
        m = msg("m1", registered_delivery=1)
        await a.add_message(m)
        handler = ReportHandler(b, clock)  # the push reached B before A recorded the send
        report = DeliveryReport("sandbox", "P1", MessageState.DELIVERED, done_at=1500.0)
        assert await handler.on_report(report) is False
        assert handler.early_reports == 1
        assert handler.retry_early() == 1
        await asyncio.sleep(0.05)
        assert await b.pending_deliveries("demo") == []  # still unknown: still parked
        m.provider, m.provider_message_id = "sandbox", "P1"
        await a.update_message(m, correlation=("sandbox", "P1", 9e9))
        handler.retry_early()
        for _ in range(100):
            if await b.pending_deliveries("demo"):
                break
            await asyncio.sleep(0.01)
        assert len(await b.pending_deliveries("demo")) == 1
        assert handler.retry_early() == 0  # matched: no longer parked
        assert (handler.early_reports, handler.unknown_reports, handler.reports) == (1, 0, 1)


async def test_reports_wait_for_redis_to_return_and_are_applied_then(tmp_path: Path) -> None:
    with redis_server(tmp_path / "r") as server:
        async with RedisStore(server.url, timeout=1.0) as a, RedisStore(
            server.url, timeout=1.0
        ) as b:
            m = msg("m1", registered_delivery=1)
            await a.add_message(m)
            m.provider, m.provider_message_id = "sandbox", "P1"
            await a.update_message(m, correlation=("sandbox", "P1", 9e9))
            handler = ReportHandler(b, clock, retry_delay=0.2)
            server.kill()
            pending = handler.on_report(
                DeliveryReport("sandbox", "P1", MessageState.DELIVERED, done_at=1500.0)
            )
            await asyncio.sleep(0.5)
            assert not pending.done() and handler.store_retries >= 1
            server.start()
            assert await asyncio.wait_for(pending, 10) is True
            assert len(await b.pending_deliveries("demo")) == 1


# --------------------------------------------------------------------------- the start-up contract


class RedisBridge(BridgeThread):
    """A whole bridge (sandbox provider) on the test redis-server: ``[storage] url`` and
    ``[cluster] node_id`` in its config."""

    def __init__(self, data_dir: Path, url: str, node: str, prefix: str, **config: Any) -> None:
        self.data_dir = data_dir
        text = bridge_config(data_dir, **config)
        self.config_text = text.replace(
            "[storage]\n", f'[storage]\nurl = "{url}"\nprefix = "{prefix}"\n'
        ) + f'[cluster]\nnode_id = "{node}"\n'
        LoopThread.__init__(self)
        self._stopped = False
        try:
            self.bridge = self.call(self._start(), timeout=15.0)
        except BaseException:
            self.close_loop()
            raise
        self.port = self.bridge.smpp.ports["smpp"]


@pytest.fixture
def cluster(tmp_path: Path, redis: RedisServer) -> Iterator[Callable[[str], RedisBridge]]:
    prefix = f"b{next(_prefixes)}:"
    started: list[RedisBridge] = []

    def start(node: str) -> RedisBridge:
        b = RedisBridge(tmp_path / node, redis.url, node, prefix)
        started.append(b)
        return b

    yield start
    for b in reversed(started):
        b.stop()


def test_a_bridge_on_redis_accepts_answers_query_sm_and_sends_the_receipt(
    cluster: Callable[[str], RedisBridge],
) -> None:
    node = cluster("alpha")
    assert isinstance(node.bridge.store, RedisStore)
    with Esme(node.port) as esme:
        esme.bind("transceiver")
        message_id = esme.submit_ok(registered_delivery=1)
        [dlr] = esme.receipts(1)
        assert receipt_id(dlr) == message_id
        assert int(esme.query(message_id).message_state) == MessageState.DELIVERED
    health = node.call(node.bridge.health())
    checks = health.to_json()["checks"]
    assert checks["redis"] is True and checks["node"] == "alpha"
    metrics = node.run(node.bridge._metrics_text).decode()
    assert 'bridge_node_info{node="alpha",store="redis"} 1.0' in metrics


def test_query_sm_answers_on_every_node_and_receipts_reach_the_node_with_the_receiver(
    cluster: Callable[[str], RedisBridge],
) -> None:
    a, b = cluster("a"), cluster("b")
    with Esme(b.port) as receiver, Esme(a.port) as sender:
        receiver.bind("receiver")
        sender.bind("transmitter")
        ids = [sender.submit_ok(registered_delivery=1) for _ in range(5)]
        got = receipts_by_id(receiver.receipts(5, timeout=10))
        assert set(got) == set(ids)
    with Esme(b.port) as other:
        other.bind("transmitter")
        for message_id in ids:
            assert int(other.query(message_id).message_state) == MessageState.DELIVERED


def test_receipts_wait_in_redis_while_nobody_is_bound_and_go_to_the_node_that_binds(
    cluster: Callable[[str], RedisBridge],
) -> None:
    a, b = cluster("a"), cluster("b")
    with Esme(a.port) as sender:
        sender.bind("transmitter")
        ids = [sender.submit_ok(registered_delivery=1) for _ in range(3)]
        assert wait_until(lambda: a.run(lambda: a.bridge.store.delivery_depth("demo")) == 3)
    with Esme(b.port) as receiver:
        receiver.bind("receiver")
        assert set(receipts_by_id(receiver.receipts(3, timeout=10))) == set(ids)


def test_an_account_bound_on_two_nodes_gets_each_receipt_once(
    cluster: Callable[[str], RedisBridge],
) -> None:
    a, b = cluster("a"), cluster("b")
    with Esme(a.port) as on_a, Esme(b.port) as on_b:
        on_a.bind("transceiver")
        on_b.bind("receiver")
        time.sleep(1.0)  # both nodes have seen their binds (one of them holds the lease)
        ids = [on_a.submit_ok(registered_delivery=1) for _ in range(20)]


        def all_acked() -> bool:
            on_a.pump(0.05)
            on_b.pump(0.05)
            return a.run(lambda: a.bridge.store.delivery_depth("demo")) == 0

        assert wait_until(all_acked, timeout=10)
        for _ in range(10):  # anything sent twice would arrive now
            on_a.pump(0.05)
            on_b.pump(0.05)
        delivered = [receipt_id(p) for p in (*on_a.delivered, *on_b.delivered)]
        assert sorted(delivered) == sorted(ids)


async def test_a_dead_nodes_queued_and_awaiting_messages_move_to_one_survivor(
    redis: RedisServer,
) -> None:
    prefix = f"c{next(_prefixes)}:"
    a = RedisStore(redis.url, prefix=prefix, node_id="a", dead_after=0.3)
    b = RedisStore(redis.url, prefix=prefix, node_id="b", dead_after=5.0)
    c = RedisStore(redis.url, prefix=prefix, node_id="c", dead_after=5.0)
    async with a, b, c:
        await a.add_messages([msg("q1"), msg("q2"), msg("w1")])
        taken = msg("w1", provider="p", provider_message_id="P1")
        await a.update_message(taken)
        assert [m.id for m in await a.pending_messages()] == ["q1", "q2"]
        assert await b.pending_messages() == []  # a's work, not b's
        await asyncio.sleep(0.5)  # a stops heartbeating (b and c beat now)
        moved = [*await b.heartbeat(5.0), *await c.heartbeat(5.0)]
        assert moved == [("a", ["q1", "q2"], ["w1"])]  # one survivor took it, whole
        survivor = b if (await b.pending_messages()) else c
        assert [m.id for m in await survivor.pending_messages()] == ["q1", "q2"]
        assert [m.id for m in await survivor.awaiting_report()] == ["w1"]
        assert await a.pending_messages() == []


# --------------------------------------------------------------------------- limits across nodes


async def test_a_provider_rate_limit_holds_across_nodes(redis: RedisServer) -> None:
    """smsflatrate allows 10 requests/s: two nodes with two senders each never take more than
    10 slots in any one-second window together."""
    prefix = f"c{next(_prefixes)}:"
    async with RedisStore(redis.url, prefix=prefix, node_id="a") as a, RedisStore(
        redis.url, prefix=prefix, node_id="b"
    ) as b:
        limiters = [ClusterRateLimiter(s, "provider:smsflatrate", 10.0) for s in (a, b, a, b)]
        taken: list[float] = []

        async def sender(limiter: ClusterRateLimiter) -> None:
            for _ in range(8):
                await limiter.acquire()
                taken.append(time.monotonic())

        await asyncio.gather(*(sender(lim) for lim in limiters))
        taken.sort()
        assert len(taken) == 32
        most = max(sum(1 for t in taken[i:] if t - start < 1.0) for i, start in enumerate(taken))
        assert most <= 10, most


def test_account_tps_is_shared_among_the_live_nodes() -> None:
    accounts = [make_account(system_id="a", tps=90.0), make_account(system_id="b", tps=0.0)]
    assert [x.tps for x in shared_tps(accounts, 3)] == [30.0, 0.0]
    assert shared_tps(accounts, 1) == accounts


def test_max_binds_counts_the_binds_on_every_node(
    tmp_path: Path, redis: RedisServer
) -> None:
    prefix = f"b{next(_prefixes)}:"
    a = RedisBridge(tmp_path / "a", redis.url, "a", prefix, account={"max_binds": 2})
    b = RedisBridge(tmp_path / "b", redis.url, "b", prefix, account={"max_binds": 2})
    try:
        with Esme(a.port) as first, Esme(b.port) as second:
            first.bind("transmitter")
            second.bind("receiver")
            with Esme(a.port) as third, pytest.raises(smpplib.exceptions.PDUError):
                third.bind("transmitter")  # ESME_RBINDFAIL: 2 bound, on two nodes
            first.unbind()
            time.sleep(1.0)  # a heartbeat publishes the unbind
            with Esme(b.port) as fourth:
                fourth.bind("transmitter")
    finally:
        a.stop()
        b.stop()


def test_the_parts_of_a_long_message_sent_over_binds_on_two_nodes_make_one_message(
    cluster: Callable[[str], RedisBridge],
) -> None:
    a, b = cluster("a"), cluster("b")
    text = ("Parts may come in over binds on different nodes of a cluster. " * 7)[:400]
    parts, encoding, esm_class = smpplib.gsm.make_parts(text)
    assert len(parts) == 3
    with Esme(a.port) as on_a, Esme(b.port) as on_b:
        on_a.bind("transceiver")
        on_b.bind("transmitter")
        ids = [
            esme.submit_ok(short_message=part, esm_class=esm_class, data_coding=encoding)
            for esme, part in zip((on_a, on_b, on_a), parts, strict=True)
        ]
        receipts = receipts_by_id(on_a.receipts(3, timeout=10))
    assert set(receipts) == set(ids)
    whole = b.call(b.bridge.store.get_message(ids[1]))
    assert whole is not None and whole.text == text and whole.part_ids == ids
    assert a.bridge.pipeline.incomplete == b.bridge.pipeline.incomplete == 0


class _CancelSwallowingStore:
    """Stands for a Redis store whose client consumed a cancel in flight: its heartbeat returns
    normally although the task awaiting it was cancelled (seen in a full run: stop hung)."""

    node_id = "a"
    live_nodes = 1

    def __init__(self) -> None:
        self.heartbeats = 0
        self.in_heartbeat = asyncio.Event()

    async def heartbeat(self, dead_after: float) -> list[Any]:
        self.heartbeats += 1
        self.in_heartbeat.set()
        # The library's bug: the cancel ends here, no exception goes up.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.2)
        return []

    async def delivery_leases(self, bound: Any, release: Any, dead_after: float) -> set[str]:
        return set()

    async def refresh_depths(self) -> None:
        return None

    def delivery_depth(self, account: str) -> int:
        return 0


async def test_a_cluster_node_stops_even_when_a_redis_call_swallows_the_cancel() -> None:
    import prometheus_client

    from bridge.store.cluster import ClusterNode

    store = _CancelSwallowingStore()

    async def poll() -> int:
        return 0

    node = ClusterNode(
        store,  # type: ignore[arg-type]
        accounts=lambda: [],
        has_receiver=lambda account: False,
        wake=lambda account: None,
        resume=lambda message: None,
        poll=poll,
        interval=0.05,
        registry=prometheus_client.CollectorRegistry(),
    )
    node.start()
    await asyncio.wait_for(store.in_heartbeat.wait(), 5.0)
    stopping = asyncio.ensure_future(node.stop())
    done, _ = await asyncio.wait({stopping}, timeout=5.0)
    assert done, "stop() did not return: the heartbeat loop outlived its cancel"
    beats = store.heartbeats
    await asyncio.sleep(0.3)
    assert store.heartbeats == beats == 1
