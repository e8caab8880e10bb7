"""The Redis store's connection: connect and load the scripts, send the writes queued in a loop
pass as one pipeline (group commit) and call their ``done`` callbacks, the depths every batch
returns, and the calls the cluster makes of its own (heartbeat and takeover, delivery leases,
rate limits, binds: :mod:`bridge.store.cluster`).

Apart from :mod:`bridge.store.redis` (what is stored and how it is read) because this is how
anything reaches Redis at all; :class:`~bridge.store.redis.RedisStore` is built on
:class:`RedisConnection` (a base class: a write costs the calls it did in one module).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bridge.core.store import Done, settle_future
from bridge.observability import Metrics
from bridge.store.common import DuplicateMessage, OpenClose, StoreUnavailable
from bridge.store.redis_scripts import SCRIPTS

__all__ = ["RedisConnection", "redact_url", "to_str"]

log = structlog.get_logger("bridge.store.redis")


def redact_url(url: str) -> str:
    """A store URL fit for logs and replies: the password (and user) replaced."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


def to_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Op:
    """One queued write: one command (or none: a barrier), its local effect and its callback."""

    __slots__ = ("apply", "arg", "args", "done", "script")

    def __init__(
        self,
        script: str | None,
        args: Sequence[Any],
        apply: Callable[[Any], Any] | None,
        done: Done,
        arg: Any,
    ) -> None:
        self.script = script
        self.args = args
        self.apply = apply
        self.done = done
        self.arg = arg



class RedisConnection(OpenClose):
    """One connection to the Redis at ``url``, keys under ``prefix``, this node ``node_id``."""

    def __init__(
        self,
        url: str,
        *,
        metrics: Metrics | None = None,
        prefix: str = "sb:",
        node_id: str = "",
        timeout: float = 5.0,
        password: str | None = None,
        dead_after: float = 10.0,
    ) -> None:
        self.url = url
        self._password = password
        self.dead_after = dead_after
        self.live_nodes = 1
        self._members = itertools.count()
        self.metrics = metrics if metrics is not None else Metrics()
        self.prefix = prefix
        self.node_id = node_id
        self.timeout = timeout
        self._redis: aioredis.Redis | None = None
        self._shas: dict[str, str] = {}
        self._ops: list[_Op] = []
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.commits = 0
        self.largest_batch = 0
        self.failed_batches = 0
        # Local state (see the module doc, "local reads").
        self._queue_depth = 0
        self._delivery_depths: dict[str, int] = {}
        self._local_state()

    def _local_state(self) -> None:
        """Set up what the store keeps on this node (:class:`~bridge.store.redis.RedisStore`)."""

    @property
    def description(self) -> str:
        return redact_url(self.url)


    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Connect, load the scripts and read the depths; raises if Redis does not answer."""
        if self._writer is not None:
            return
        # One immediate retry on a broken connection (a pooled connection from before a Redis
        # restart); no backoff: while Redis is down, writes fail at once (ESME_RSYSERR) rather
        # than hang. A replayed write is harmless: adds recognise themselves, receipts are
        # at-least-once.
        client = aioredis.from_url(
            self.url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            **({"password": self._password} if self._password is not None else {}),
        )
        try:
            await client.ping()
            await self._load_scripts(client)
        except BaseException:
            await client.aclose()
            raise
        self._redis = client
        self._closing = False
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="redis-store-writer")
        # Alive from now on; the work of nodes found dead moves here, and the dispatcher's
        # start-up scan of pending_messages / awaiting_report resumes it like our own.
        taken = await self.heartbeat(self.dead_after)
        await self.refresh_depths()
        log.info(
            "store.opened",
            store=self.description,
            node=self.node_id,
            took_over=[node for node, _, _ in taken],
        )

    async def _load_scripts(self, client: aioredis.Redis) -> None:
        for name, body in SCRIPTS.items():
            self._shas[name] = to_str(await client.script_load(body))

    async def close(self) -> None:
        """Send what is queued, stop the writer, disconnect; writes after this raise."""
        writer = self._writer
        if writer is None:
            return
        self._closing = True
        assert self._wake is not None
        self._wake.set()
        await writer
        self._writer = None
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()

    async def ping(self) -> bool:
        """True when Redis answers (for /readyz)."""
        client = self._redis
        if client is None:
            return False
        try:
            return bool(await client.ping())
        except (RedisError, OSError):
            return False

    async def _eval(self, name: str, *args: Any) -> Any:
        """A read-side script call; loads the scripts again after a Redis restart lost them."""
        client = self._client()
        try:
            return await client.evalsha(self._shas[name], 0, self.prefix, *args)
        except NoScriptError:
            await self._load_scripts(client)
            return await client.evalsha(self._shas[name], 0, self.prefix, *args)

    def _client(self) -> aioredis.Redis:
        client = self._redis
        if client is None or self._closing:
            raise StoreUnavailable("the store is closed")
        return client

    # ------------------------------------------------------------------ the writer

    def _queue(
        self,
        script: str | None,
        args: Sequence[Any],
        done: Done,
        arg: Any = None,
        apply: Callable[[Any], Any] | None = None,
    ) -> None:
        if self._writer is None or self._closing:
            raise StoreUnavailable("the store is closed")
        self._ops.append(_Op(script, args, apply, done, arg))
        if len(self._ops) == 1:
            assert self._wake is not None
            self._wake.set()

    def _write(
        self, script: str | None, args: Sequence[Any], apply: Callable[[Any], Any] | None = None
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue(script, args, settle_future, future, apply)
        return future

    async def _write_loop(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            if not self._ops:
                if self._closing:
                    return
                await wake.wait()
                wake.clear()
                continue
            batch, self._ops = self._ops, []
            await self._send(batch)

    async def _send(self, batch: list[_Op], *, again: bool = False) -> None:
        client = self._redis
        assert client is not None
        started = time.perf_counter()
        results: list[Any]
        try:
            pipe = client.pipeline(transaction=False)
            for op in batch:
                if op.script is not None:
                    pipe.evalsha(self._shas[op.script], 0, self.prefix, *op.args)
            pipe.evalsha(self._shas["depths"], 0, self.prefix)
            results = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # connection lost / refused: every write of the batch failed
            self._failed(batch, exc)
            return
        self.commits += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        self.metrics.store_commit(len(batch), time.perf_counter() - started)
        self._set_depths(results[-1])
        if not again and any(isinstance(r, NoScriptError) for r in results):
            # Redis restarted and lost its script cache; a NOSCRIPT write did nothing, so the
            # batch is sent again (writes that did run recognise themselves or are idempotent
            # enough: see open()) after loading the scripts.
            try:
                await self._load_scripts(client)
            except Exception as exc:
                self._failed(batch, exc)
                return
            await self._send(batch, again=True)
            return
        i = 0
        for op in batch:
            result: Any = None
            if op.script is not None:
                result = results[i]
                i += 1
            if isinstance(result, BaseException):
                self.metrics.store_error()
                op.done(op.arg, None, _error(result))
                continue
            try:
                if op.apply is not None:
                    result = op.apply(result)
            except Exception as exc:  # a bug in an apply: the caller learns, the store goes on
                log.exception("store.apply_failed", script=op.script)
                op.done(op.arg, None, exc)
                continue
            op.done(op.arg, result, None)

    def _failed(self, batch: list[_Op], exc: BaseException) -> None:
        self.failed_batches += 1
        log.warning(
            "store.redis_write_failed",
            store=self.description,
            writes=len(batch),
            error=f"{type(exc).__name__}: {exc}"[:200],
        )
        error = StoreUnavailable(f"redis: {type(exc).__name__}: {exc}"[:300])
        for op in batch:
            self.metrics.store_error()
            op.done(op.arg, None, error)

    def _set_depths(self, raw: Any) -> None:
        if isinstance(raw, BaseException) or not raw:
            return
        self._queue_depth = int(raw[0])
        self._delivery_depths = {
            to_str(raw[i]): int(raw[i + 1]) for i in range(1, len(raw) - 1, 2)
        }

    async def refresh_depths(self) -> None:
        """Read the depths again (a node that writes nothing still sees other nodes' work)."""
        self._set_depths(await self._eval("depths"))


    async def heartbeat(self, dead_after: float) -> list[tuple[str, list[str], list[str]]]:
        """Say this node is alive for ``dead_after`` seconds and take over the work of every
        node whose heartbeat has run out: [(dead node, queued ids, awaiting ids)] moved to this
        node (README, "Running several nodes"). Sets :attr:`live_nodes`."""
        rows = await self._eval(
            "heartbeat", self.node_id, max(1, int(dead_after * 1000)), time.time()
        )
        self.live_nodes = max(1, int(rows[0]))
        out = []
        for i in range(1, len(rows), 3):
            node, queued, awaiting = to_str(rows[i]), rows[i + 1], rows[i + 2]
            out.append((node, [to_str(x) for x in queued], [to_str(x) for x in awaiting]))
        return out

    async def delivery_leases(
        self, hold: Iterable[str], release: Iterable[str], ttl: float
    ) -> set[str]:
        """Take or renew this node's lease on the delivery queue of each account in ``hold``
        (it has a receiver bound there), give up those in ``release``; returns the accounts it
        holds. One node at a time sends an account's queue, so an item goes out once."""
        args: list[Any] = [self.node_id, max(1, int(ttl * 1000))]
        for account in hold:
            args += ["h", account]
        for account in release:
            args += ["r", account]
        return {to_str(a) for a in await self._eval("lease", *args)}

    async def rate_wait(self, name: str, limit: int, window: float) -> float:
        """Take one slot of the cluster-wide limit ``name`` (at most ``limit`` in any
        ``window`` seconds): 0.0 when taken, else the seconds to wait before asking again."""
        member = f"{self.node_id}:{next(self._members)}"
        wait = await self._eval("rate", name, limit, max(1, int(window * 1000)), member)
        return float(wait) / 1000

    async def bind_fits(self, account: str, max_binds: int, here: int, ttl: float) -> bool:
        """One more bind of ``account`` fits under ``max_binds`` with every live node's binds
        counted (``here`` on this node); counted at once when it does."""
        ttl_ms = max(1, int(ttl * 1000))
        return bool(
            await self._eval("binds", self.node_id, ttl_ms, "gate", account, max_binds, here)
        )

    async def publish_binds(self, binds: dict[str, int], ttl: float) -> None:
        """This node's binds per account, for the other nodes' :meth:`bind_fits`."""
        args: list[Any] = []
        for account, n in binds.items():
            args += [account, n]
        await self._eval("binds", self.node_id, max(1, int(ttl * 1000)), "publish", *args)


def _error(result: BaseException) -> BaseException:
    if isinstance(result, ResponseError):
        text = str(result)
        marker = text.find("DUP ")
        if marker >= 0:
            return DuplicateMessage(f"message id {text[marker + 4 :]!r} is already stored")
        return StoreUnavailable(f"redis: {text}"[:300])
    return result
