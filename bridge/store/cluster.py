"""Cluster mode: what one node does besides its own work (README, "Running several nodes").

Every ``interval`` seconds, one :meth:`ClusterNode.step`:

* **heartbeat and takeover**: the node says it is alive for ``dead_after`` seconds; a node whose
  heartbeat ran out is dead, and its queued and awaiting messages move to this node in the same
  script (so two survivors never both take them). Queued ones go to this node's dispatcher
  (a send that was under way at the kill is sent again: the only duplicates), awaiting ones are
  polled from their providers — a report that would have reached the dead node comes that way.
* **delivery leases**: for each account with a receiver/transceiver bound *here*, the node takes
  (or renews) the account's lease; only the lease holder sends that account's delivery stream,
  so an item goes to the ESME once per acknowledgement even when it is bound on several nodes.
  A lease runs out ``dead_after`` after its node died; the next holder sends what was in flight
  again. Nobody bound anywhere: the items stay queued in Redis.
* **shared limits**: the number of live nodes (each enforces its share of an account's TPS) and
  this node's binds per account (for ``max_binds`` across nodes): store/cluster_limits.py.
* **early reports**: a report that came before its correlation was stored is looked for again
  (the correlation may have been stored by another node, whose dispatcher sent the message).
* **cross-node wake**: receipts and MO queued by another node (a provider callback that landed
  there) are noticed from the depths and sent from here.

Nothing here is on the per-message path: one Redis round trip or three per step per node.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import prometheus_client
import structlog

from bridge.core.delivery import DeliveryDone, ReceiptSender
from bridge.core.model import InboundMessage, Message, Receipt
from bridge.observability import SampledLog
from bridge.store.cluster_limits import ClusterRateLimiter, shared_tps
from bridge.store.redis import RedisStore

if TYPE_CHECKING:
    from bridge.app import Bridge

__all__ = ["ClusterNode", "LeasedSender", "attach"]

log = structlog.get_logger("bridge.cluster")


class ClusterNode:
    def __init__(
        self,
        store: RedisStore,
        *,
        accounts: Callable[[], Iterable[str]],
        has_receiver: Callable[[str], bool],
        wake: Callable[[str], None],
        resume: Callable[[Message], None],
        poll: Callable[[], Awaitable[int]],
        bound_count: Callable[[str], int] | None = None,
        on_nodes: Callable[[int], None] | None = None,
        retry_reports: Callable[[], object] | None = None,
        interval: float = 0.5,
        dead_after: float = 10.0,
        registry: prometheus_client.CollectorRegistry | None = None,
    ) -> None:
        self.store = store
        self._accounts = accounts
        self._has_receiver = has_receiver
        self._wake = wake
        self._resume = resume
        self._poll = poll
        self._bound_count = bound_count
        self._on_nodes = on_nodes
        self._retry_reports = retry_reports
        self.interval = interval
        self.dead_after = dead_after
        self.leases: set[str] = set()
        self.taken_over: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._sampled = SampledLog(log)
        self._takeovers = prometheus_client.Counter(
            "bridge_cluster_takeovers",
            "Dead nodes whose work this node took over.",
            registry=registry,
        )
        self._failures = prometheus_client.Counter(
            "bridge_cluster_heartbeat_failures",
            "Heartbeats that could not reach Redis (the node goes on and retries).",
            registry=registry,
        )

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="cluster")

    async def stop(self) -> None:
        # The flag as well as the cancel: a cancel that lands while a Redis call is in flight
        # can be consumed inside the client library without an exception reaching step() (seen:
        # the heartbeat went on and stop() waited for ever); the loop then ends after that step.
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        held, self.leases = self.leases, set()
        if held:  # hand the accounts to the other nodes now rather than after dead_after
            with contextlib.suppress(Exception):
                await self.store.delivery_leases((), held, self.dead_after)

    async def _run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: keep the leases we had, try again
                self._failures.inc()
                self._sampled(
                    "warning",
                    "cluster.heartbeat_failed",
                    "redis",
                    node=self.store.node_id,
                    error=f"{type(exc).__name__}: {exc}"[:200],
                )
            if self._stopping:
                return
            await asyncio.sleep(self.interval)

    async def step(self) -> None:
        """One heartbeat, takeover, lease round and wake (see the module doc)."""
        for node, queued, awaiting in await self.store.heartbeat(self.dead_after):
            self._takeovers.inc()
            self.taken_over.append(node)
            log.warning(
                "cluster.node_taken_over",
                node=self.store.node_id,
                dead_node=node,
                queued=len(queued),
                awaiting=len(awaiting),
            )
            for start in range(0, len(queued), 1000):
                for message in await self.store.messages(queued[start : start + 1000]):
                    self._resume(message)
            if awaiting:
                await self._poll()
        if self._on_nodes is not None:
            self._on_nodes(self.store.live_nodes)
        accounts = list(self._accounts())
        if self._bound_count is not None:
            binds = {a: n for a in accounts if (n := self._bound_count(a))}
            await self.store.publish_binds(binds, self.dead_after)
        bound = [a for a in accounts if self._has_receiver(a)]
        release = [a for a in self.leases if a not in bound]
        self.leases = await self.store.delivery_leases(bound, release, self.dead_after)
        if self._retry_reports is not None:
            self._retry_reports()
        await self.store.refresh_depths()
        for account in self.leases:
            if self.store.delivery_depth(account):
                self._wake(account)


class LeasedSender:
    """A :class:`~bridge.core.delivery.ReceiptSender` that has a receiver for an account only
    while this node holds the account's delivery lease (see :class:`ClusterNode`)."""

    def __init__(self, inner: ReceiptSender, node: ClusterNode) -> None:
        self.inner = inner
        self.node = node

    def has_receiver(self, account: str) -> bool:
        return account in self.node.leases and self.inner.has_receiver(account)

    def send_nowait(
        self, account: str, item: Receipt | InboundMessage, done: DeliveryDone, arg: Any
    ) -> bool:
        return self.inner.send_nowait(account, item, done, arg)


def attach(bridge: Bridge, sender: ReceiptSender) -> tuple[ClusterNode, ReceiptSender]:
    """Cluster mode for ``bridge`` (its store is a RedisStore): the node's loop, the leased
    sender for its delivery queue, max_binds and provider rates across nodes, TPS shares.
    Returns the node and the sender to use."""
    store = bridge.store
    assert isinstance(store, RedisStore)
    cfg = bridge.cfg

    def share_limits(nodes: int) -> None:
        wanted = shared_tps(bridge.cfg.to_accounts(), nodes)
        if any(
            (have := bridge.accounts.get(a.system_id)) is None or have.tps != a.tps
            for a in wanted
        ):
            bridge.accounts.replace(wanted)
            log.info("cluster.tps_shared", node=store.node_id, nodes=nodes)

    async def bind_gate(system_id: str, max_binds: int, here: int) -> bool:
        # Redis away: this node's binds only (the local check passed); not refused for that.
        try:
            return await store.bind_fits(system_id, max_binds, here, cfg.cluster.dead_after)
        except Exception as exc:
            log.warning("cluster.bind_check_failed", error=type(exc).__name__)
            return True

    node = ClusterNode(
        store,
        accounts=lambda: list(bridge.policies),
        has_receiver=bridge.smpp.has_receiver,
        wake=lambda account: bridge.deliveries.wake(account),
        resume=bridge.dispatcher.submit,
        poll=lambda: bridge.dispatcher.poll_now(everyone=True),
        bound_count=bridge.smpp.bound_count,
        on_nodes=share_limits,
        retry_reports=bridge.reports.retry_early,
        interval=cfg.cluster.heartbeat_interval,
        dead_after=cfg.cluster.dead_after,
        registry=bridge.registry,
    )
    bridge.smpp.bind_gate = bind_gate
    bridge.pipeline.shared_parts = True
    for name, provider in bridge.providers.items():
        rps = provider.capabilities.requests_per_second
        if rps > 0:  # a provider's documented rate holds for all nodes together
            bridge.dispatcher.set_limiter(name, ClusterRateLimiter(store, f"provider:{name}", rps))
    return node, LeasedSender(sender, node)
