"""The cluster store: the store port on Redis (``--store-url redis://…``), shared by all nodes.

Why Redis and how it is used: README, "Running several nodes". In short:

* **Writes are batched per loop pass.** Every write is *one* command — a Lua script where it
  touches several keys, so each write is atomic on its own — queued on the loop; one writer
  sends everything queued as one pipeline on one connection (in order), and calls the ``done``
  callbacks after the replies. Redis with ``appendonly yes`` / ``appendfsync always`` writes and
  fsyncs the AOF before it replies, once per its own event-loop pass, so a pipeline shares one
  fsync: group commit, as the embedded journal does it. Not a MULTI: each write stands alone
  (a refused duplicate must not take the rest of the batch with it), and one command per write
  means a failed batch (Redis gone, scripts lost by a restart) fails each write whole, never
  half.
* **Layout** (every key under ``prefix``, default ``sb:``): ``m:<id>`` a hash per message
  (blob, state, other part ids, created_at); ``h:<id>`` its history (a list); ``p:<part id>``
  → message id; sorted sets ``q`` (queued, by id), ``a`` (awaiting a report, by id), ``f``
  (final, by created_at, for retention); ``c`` a hash of correlations (``provider NUL id`` →
  message id) with ``cx``, their expiry times; ``r:<key>`` a hash of reassembly parts by
  seqnum with ``rk`` the set of keys; ``d:<account>`` one Stream per account (the delivery
  queue; entry ids ``0-<n>`` from the counter ``dseq``, so the port's integer delivery ids are
  the stream ids), ``dt`` delivery attempts, ``da`` the accounts with a queue.
* **Local reads** (``*_now``): a networked store cannot answer for what it has not seen. This
  node keeps what it created or updated (live messages, their history, correlations) and
  :meth:`RedisStore.prefetch` fetches the rest for a batch of reports in one round trip; the
  report handler awaits it once per batch, only when something is missing.
* **Depths** (:meth:`queue_depth`, :meth:`delivery_depth`) are synchronous estimates: each write
  batch ends with a script that returns them, so they are at most one batch old.

Not Redis Cluster (sharded): scripts touch keys they compute, so one primary (with replicas or
Sentinel for failover) holds all keys. Redis ≥ 7.0.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bridge.core.model import InboundMessage, Message, MessageState, Receipt
from bridge.core.store import DeliveryItem, Done, StateChange, StoredPart, settle_future
from bridge.observability import Metrics
from bridge.store.embedded import (
    DuplicateMessage,
    StoreUnavailable,
    item_from_wire,
    item_to_wire,
    message_from_blob,
    message_to_blob,
)

__all__ = ["RedisStore", "redact_url"]

log = structlog.get_logger("bridge.store.redis")

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


_ENROUTE = int(MessageState.ENROUTE)

#: A correlation read from Redis is kept this many seconds on this node.
_CACHED_CORRELATION = 600.0
#: Final messages read from Redis kept on this node (the newest), for duplicate reports.
_CACHED_FINALS = 10_000

# --------------------------------------------------------------------------- scripts
# ARGV[1] is always the key prefix. Scripts compute their keys (one Redis primary holds all).

_ADD = """
local P, N = ARGV[1], ARGV[2]
local pk = ARGV[3]
local n = tonumber(ARGV[4])
local i = 5
local seen = {}
for k = 1, n do
  local id = ARGV[i]
  local no = tonumber(ARGV[i + 5])
  -- the same message again (a write replayed after a lost reply) is not a duplicate
  if n == 1 and redis.call('HGET', P .. 'm:' .. id, 'b') == ARGV[i + 1] then return n end
  for j = 0, no do
    local x = id
    if j > 0 then x = ARGV[i + 5 + j] end
    if seen[x] or redis.call('EXISTS', P .. 'm:' .. x) == 1
        or redis.call('EXISTS', P .. 'p:' .. x) == 1 then
      return redis.error_reply('DUP ' .. x)
    end
    seen[x] = true
  end
  i = i + 6 + no
end
i = 5
for k = 1, n do
  local id, blob, state = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local has_pid, created = ARGV[i + 3], ARGV[i + 4]
  local no = tonumber(ARGV[i + 5])
  local others = {}
  for j = 1, no do
    others[j] = ARGV[i + 5 + j]
    redis.call('SET', P .. 'p:' .. others[j], id)
  end
  redis.call('HSET', P .. 'm:' .. id, 'b', blob, 's', state, 'c', created,
             'o', cmsgpack.pack(others), 'n', N)
  if tonumber(state) ~= 1 then
    redis.call('ZADD', P .. 'f', created, id)
  elseif has_pid == '1' then
    redis.call('ZADD', P .. 'a:' .. N, 0, id)
  else
    redis.call('ZADD', P .. 'q:' .. N, 0, id)
  end
  i = i + 6 + no
end
if pk ~= '' then
  redis.call('DEL', P .. 'r:' .. pk)
  redis.call('SREM', P .. 'rk', pk)
end
return n
"""

_UPDATE = """
local P, id, blob, state, has_pid, change = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local nc = tonumber(ARGV[7])
for j = 0, nc - 1 do
  local field, expires = ARGV[8 + 2 * j], ARGV[9 + 2 * j]
  redis.call('HSET', P .. 'c', field, id)
  redis.call('ZADD', P .. 'cx', expires, field)
end
local key = P .. 'm:' .. id
local s = redis.call('HGET', key, 's')
if not s then return 0 end
if tonumber(s) ~= 1 then
  if change ~= '' then redis.call('RPUSH', P .. 'h:' .. id, change) end
  return 1
end
redis.call('HSET', key, 'b', blob, 's', state)
if change ~= '' then redis.call('RPUSH', P .. 'h:' .. id, change) end
local N = redis.call('HGET', key, 'n')  -- the node that owns it (takeover moves it)
if tonumber(state) ~= 1 then
  redis.call('ZREM', P .. 'q:' .. N, id)
  redis.call('ZREM', P .. 'a:' .. N, id)
  redis.call('ZADD', P .. 'f', redis.call('HGET', key, 'c'), id)
elseif has_pid == '1' then
  redis.call('ZREM', P .. 'q:' .. N, id)
  redis.call('ZADD', P .. 'a:' .. N, 0, id)
else
  redis.call('ZREM', P .. 'a:' .. N, id)
  redis.call('ZADD', P .. 'q:' .. N, 0, id)
end
return 1
"""

# Delete one message (by any id) or, with ARGV[2] == 'purge', final messages created before
# ARGV[3], at most ARGV[4] of them.
_DELETE = """
local P = ARGV[1]
local function drop(mid)
  local key = P .. 'm:' .. mid
  local o = redis.call('HGET', key, 'o')
  if not o then return 0 end
  local N = redis.call('HGET', key, 'n')
  for _, pid in ipairs(cmsgpack.unpack(o)) do redis.call('DEL', P .. 'p:' .. pid) end
  redis.call('DEL', key, P .. 'h:' .. mid)
  redis.call('ZREM', P .. 'q:' .. N, mid)
  redis.call('ZREM', P .. 'a:' .. N, mid)
  redis.call('ZREM', P .. 'f', mid)
  return 1
end
if ARGV[2] == 'purge' then
  local ids = redis.call('ZRANGEBYSCORE', P .. 'f', '-inf', '(' .. ARGV[3], 'LIMIT', 0, ARGV[4])
  local n = 0
  for _, mid in ipairs(ids) do n = n + drop(mid) end
  return n
end
local mid = redis.call('GET', P .. 'p:' .. ARGV[3]) or ARGV[3]
return drop(mid)
"""

_CORRELATE = """
local P = ARGV[1]
for j = 0, (#ARGV - 1) / 3 - 1 do
  local field, mid, expires = ARGV[2 + 3 * j], ARGV[3 + 3 * j], ARGV[4 + 3 * j]
  redis.call('HSET', P .. 'c', field, mid)
  redis.call('ZADD', P .. 'cx', expires, field)
end
return 0
"""

_EXPIRE_CORRELATIONS = """
local P = ARGV[1]
local gone = redis.call('ZRANGEBYSCORE', P .. 'cx', '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
for _, field in ipairs(gone) do
  redis.call('HDEL', P .. 'c', field)
  redis.call('ZREM', P .. 'cx', field)
end
return #gone
"""

_PART = """
local P = ARGV[1]
if ARGV[2] == 'drop' then
  redis.call('DEL', P .. 'r:' .. ARGV[3])
  redis.call('SREM', P .. 'rk', ARGV[3])
  return 0
end
redis.call('HSET', P .. 'r:' .. ARGV[3], ARGV[4], ARGV[5])
redis.call('SADD', P .. 'rk', ARGV[3])
return 0
"""

_ENQUEUE = """
local P, at = ARGV[1], ARGV[2]
local ids = {}
for j = 3, #ARGV, 2 do
  local account = ARGV[j]
  local n = redis.call('INCR', P .. 'dseq')
  redis.call('XADD', P .. 'd:' .. account, '0-' .. n, 'w', ARGV[j + 1], 't', at)
  redis.call('SADD', P .. 'da', account)
  ids[#ids + 1] = n
end
return ids
"""

# ARGV[2] = '' (any account) or one account; ARGV[3..] delivery ids.
_REMOVE = """
local P = ARGV[1]
local accounts
if ARGV[2] ~= '' then accounts = {ARGV[2]} else accounts = redis.call('SMEMBERS', P .. 'da') end
local ids = {}
for j = 3, #ARGV do
  ids[#ids + 1] = '0-' .. ARGV[j]
  redis.call('HDEL', P .. 'dt', ARGV[j])
end
local n = 0
for _, account in ipairs(accounts) do
  local key = P .. 'd:' .. account
  n = n + redis.call('XDEL', key, unpack(ids))
  if redis.call('XLEN', key) == 0 then redis.call('SREM', P .. 'da', account) end
end
return n
"""

_ATTEMPT = """
redis.call('HINCRBY', ARGV[1] .. 'dt', ARGV[2], 1)
return 0
"""

_DEPTHS = """
local P = ARGV[1]
local queued = 0
for _, node in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
  queued = queued + redis.call('ZCARD', P .. 'q:' .. node)
end
local out = {queued}
for _, account in ipairs(redis.call('SMEMBERS', P .. 'da')) do
  out[#out + 1] = account
  out[#out + 1] = redis.call('XLEN', P .. 'd:' .. account)
end
return out
"""

# Everything a batch of reports needs, in one call: ARGV[2..] pairs of (kind, key): kind 'c' a
# correlation field, 'm' a message id. Returns per pair: {message id or false, blob or false,
# history list}.
_FETCH = """
local P = ARGV[1]
local out = {}
for j = 2, #ARGV, 2 do
  local mid
  if ARGV[j] == 'c' then
    mid = redis.call('HGET', P .. 'c', ARGV[j + 1])
  else
    mid = redis.call('GET', P .. 'p:' .. ARGV[j + 1]) or ARGV[j + 1]
  end
  if mid then
    local blob = redis.call('HGET', P .. 'm:' .. mid, 'b')
    if blob then
      out[#out + 1] = {mid, blob, redis.call('LRANGE', P .. 'h:' .. mid, 0, -1)}
    else
      out[#out + 1] = {mid, false, {}}
    end
  else
    out[#out + 1] = {false, false, {}}
  end
end
return out
"""

# A node's heartbeat: ARGV[2] node, ARGV[3] milliseconds until it counts as dead. Then every
# registered node without a heartbeat is dead: its queued and awaiting messages move to this
# node (one atomic step, so two survivors cannot both take them). Returns
# {dead node, queued ids moved, awaiting ids moved, ...}.
_HEARTBEAT = """
local P, me, ttl = ARGV[1], ARGV[2], ARGV[3]
redis.call('SET', P .. 'hb:' .. me, ARGV[4], 'PX', ttl)
redis.call('SADD', P .. 'nodes', me)
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
  if node ~= me and redis.call('EXISTS', P .. 'hb:' .. node) == 0 then
    local moved = {}
    for _, kind in ipairs({'q', 'a'}) do
      local ids = redis.call('ZRANGE', P .. kind .. ':' .. node, 0, -1)
      for _, id in ipairs(ids) do
        redis.call('ZADD', P .. kind .. ':' .. me, 0, id)
        redis.call('HSET', P .. 'm:' .. id, 'n', me)
      end
      redis.call('DEL', P .. kind .. ':' .. node)
      moved[#moved + 1] = ids
    end
    redis.call('SREM', P .. 'nodes', node)
    redis.call('DEL', P .. 'binds:' .. node)
    out[#out + 1] = node
    out[#out + 1] = moved[1]
    out[#out + 1] = moved[2]
  end
end
table.insert(out, 1, redis.call('SCARD', P .. 'nodes'))
return out
"""

# A sliding-window log (README, "Running several nodes"): ARGV[2] the limit's name, ARGV[3] at
# most this many in ARGV[4] ms, ARGV[5] a unique member. 0 = taken; else ms to wait. Redis's
# clock, so every node measures the same window.
_RATE = """
local key = ARGV[1] .. 'rl:' .. ARGV[2]
local limit, window = tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now, ARGV[5])
  redis.call('PEXPIRE', key, window)
  return 0
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now + 1)
"""

# Binds across nodes. ARGV[2] node, ARGV[3] ttl ms; 'gate': ARGV[5] account, ARGV[6] max_binds,
# ARGV[7] binds on this node → 1 (and counted) when one more fits, else 0; 'publish': ARGV[5..]
# pairs of account, binds on this node.
_BINDS = """
local P, me, ttl = ARGV[1], ARGV[2], ARGV[3]
local mine = P .. 'binds:' .. me
if ARGV[4] == 'publish' then
  redis.call('DEL', mine)
  for j = 5, #ARGV, 2 do redis.call('HSET', mine, ARGV[j], ARGV[j + 1]) end
  redis.call('PEXPIRE', mine, ttl)
  return 1
end
local account, max, here = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local total = here
for _, node in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
  if node ~= me and redis.call('EXISTS', P .. 'hb:' .. node) == 1 then
    total = total + (tonumber(redis.call('HGET', P .. 'binds:' .. node, account)) or 0)
  end
end
if total + 1 > max then return 0 end
redis.call('HSET', mine, account, here + 1)
redis.call('PEXPIRE', mine, ttl)
return 1
"""

# Delivery leases: ARGV[2] node, ARGV[3] ttl ms, then 'h' accounts to hold (take or renew)
# and 'r' accounts to release. Returns the accounts held.
_LEASE = """
local P, me, ttl = ARGV[1], ARGV[2], ARGV[3]
local held = {}
for j = 4, #ARGV, 2 do
  local key = P .. 'dl:' .. ARGV[j + 1]
  local owner = redis.call('GET', key)
  if ARGV[j] == 'h' then
    if owner == me then
      redis.call('PEXPIRE', key, ttl)
      held[#held + 1] = ARGV[j + 1]
    elseif not owner then
      redis.call('SET', key, me, 'PX', ttl)
      held[#held + 1] = ARGV[j + 1]
    end
  elseif owner == me then
    redis.call('DEL', key)
  end
end
return held
"""

_SCRIPTS = {
    "rate": _RATE,
    "binds": _BINDS,
    "lease": _LEASE,
    "heartbeat": _HEARTBEAT,
    "add": _ADD,
    "update": _UPDATE,
    "delete": _DELETE,
    "correlate": _CORRELATE,
    "expire_corr": _EXPIRE_CORRELATIONS,
    "part": _PART,
    "enqueue": _ENQUEUE,
    "remove": _REMOVE,
    "attempt": _ATTEMPT,
    "depths": _DEPTHS,
    "fetch": _FETCH,
}


def redact_url(url: str) -> str:
    """A store URL fit for logs and replies: the password (and user) replaced."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


def _corr_field(provider: str, provider_message_id: str) -> str:
    return f"{provider}\x00{provider_message_id}"


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _change_wire(change: StateChange | None) -> bytes:
    if change is None:
        return b""
    return _encode((int(change.state), change.at, change.detail))


def _history(message_id: str, rows: Iterable[bytes]) -> list[StateChange]:
    out = []
    for raw in rows:
        state, at, detail = _decode(raw)
        out.append(StateChange(message_id, MessageState(state), at, detail))
    return out


def _part_wire(part: StoredPart) -> bytes:
    return _encode(
        (part.total, part.message_id, bytes(part.payload), part.received_at, bytes(part.meta))
    )


def _part_from(key: str, seqnum: int, raw: bytes) -> StoredPart:
    total, mid, payload, received_at, meta = _decode(raw)
    return StoredPart(key, seqnum, total, mid, payload, received_at, meta)


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


def _ignore(arg: Any, result: Any, error: BaseException | None) -> None:
    return None


class RedisStore:
    """:class:`bridge.core.store.Store` on a Redis server at ``url`` (``redis://``,
    ``rediss://``, ``unix://``), keys under ``prefix``."""

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
        self._live: dict[str, Message] = {}
        self._part_of: dict[str, str] = {}
        self._others: dict[str, list[str]] = {}
        self._finals: dict[str, None] = {}
        self._hist: dict[str, list[StateChange]] = {}
        self._corr: dict[tuple[str, str], tuple[str, float]] = {}
        self._removing: set[int] = set()
        self._queue_depth = 0
        self._delivery_depths: dict[str, int] = {}

    @property
    def description(self) -> str:
        return redact_url(self.url)

    async def __aenter__(self) -> RedisStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

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
        for name, body in _SCRIPTS.items():
            self._shas[name] = _str(await client.script_load(body))

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
            _str(raw[i]): int(raw[i + 1]) for i in range(1, len(raw) - 1, 2)
        }

    async def refresh_depths(self) -> None:
        """Read the depths again (a node that writes nothing still sees other nodes' work)."""
        self._set_depths(await self._eval("depths"))

    # ------------------------------------------------------------------ messages

    def _check_local(self, message: Message) -> None:
        for mid in (message.id, *message.part_ids):
            if mid in self._live or mid in self._part_of:
                raise DuplicateMessage(f"message id {mid!r} is already stored")

    @staticmethod
    def _add_args(message: Message) -> list[Any]:
        others = [pid for pid in message.part_ids if pid != message.id]
        return [
            message.id, message_to_blob(message), int(message.state),
            "1" if message.provider_message_id is not None else "0", message.created_at,
            len(others), *others,
        ]  # fmt: skip

    def _added(self, messages: Sequence[Message]) -> Callable[[Any], None]:
        def apply(result: Any) -> None:
            for m in messages:
                if m.state is MessageState.ENROUTE:
                    self._hold(m)
                    self._hist.setdefault(m.id, [])

        return apply

    def add_message_nowait(self, message: Message, done: Done, arg: Any = None) -> None:
        """Queue the add (checked by Redis for a duplicate id); ``done`` after Redis has it."""
        self._check_local(message)
        self._queue(
            "add", [self.node_id, "", 1, *self._add_args(message)], done, arg,
            self._added([message]),
        )  # fmt: skip

    async def add_message(self, message: Message) -> None:
        self._check_local(message)
        await self._write(
            "add", [self.node_id, "", 1, *self._add_args(message)], self._added([message])
        )

    async def add_messages(self, messages: Sequence[Message]) -> None:
        """Several in one script: all added or none."""
        if not messages:
            return
        args: list[Any] = [self.node_id, "", len(messages)]
        for m in messages:
            self._check_local(m)
            args += self._add_args(m)
        await self._write("add", args, self._added(list(messages)))

    @staticmethod
    def _update_args(
        message: Message,
        change: StateChange | None,
        correlation: tuple[str, str, float] | None,
        other_ids: Sequence[str],
    ) -> list[Any]:
        corrs: list[Any] = []
        if correlation is not None:
            provider, pid, expires = correlation
            for p in (pid, *other_ids):
                corrs += [_corr_field(provider, p), expires]
        return [
            message.id, message_to_blob(message), int(message.state),
            "1" if message.provider_message_id is not None else "0", _change_wire(change),
            len(corrs) // 2, *corrs,
        ]  # fmt: skip

    def _updated(
        self,
        message: Message,
        change: StateChange | None,
        correlation: tuple[str, str, float] | None,
        other_ids: Sequence[str],
    ) -> Callable[[Any], None]:
        def apply(result: Any) -> None:
            if correlation is not None:
                provider, pid, expires = correlation
                for p in (pid, *other_ids):
                    self._corr[(provider, p)] = (message.id, expires)
            if not result:
                return
            mid = message.id
            if message.state.is_final:
                # final: no longer this node's to keep (reads go to Redis)
                self._forget(mid)
                return
            if mid in self._live:
                self._live[mid] = message  # the object updated last is the live one
            else:  # dispatched here, read from Redis: its history is fetched when needed
                self._hold(message)
            if change is not None and mid in self._hist:
                self._hist[mid].append(change)

        return apply

    def _forget(self, mid: str) -> None:
        self._live.pop(mid, None)
        self._hist.pop(mid, None)
        for pid in self._others.pop(mid, ()):
            if self._part_of.get(pid) == mid:
                del self._part_of[pid]

    def _hold(self, message: Message) -> None:
        mid = message.id
        self._live[mid] = message
        others = [pid for pid in message.part_ids if pid != mid]
        if others:
            self._others[mid] = others
            for pid in others:
                self._part_of[pid] = mid

    async def update_message(
        self,
        message: Message,
        change: StateChange | None = None,
        *,
        correlation: tuple[str, str, float] | None = None,
        other_ids: Sequence[str] = (),
    ) -> None:
        """The message's fields, ``change`` and the correlations in one script (atomic)."""
        await self._write(
            "update",
            self._update_args(message, change, correlation, other_ids),
            self._updated(message, change, correlation, other_ids),
        )

    def update_message_nowait(
        self,
        message: Message,
        change: StateChange | None,
        done: Done,
        arg: Any = None,
        *,
        correlation: tuple[str, str, float] | None = None,
        other_ids: Sequence[str] = (),
    ) -> None:
        self._queue(
            "update",
            self._update_args(message, change, correlation, other_ids),
            done,
            arg,
            self._updated(message, change, correlation, other_ids),
        )

    def get_message_now(self, message_id: str) -> Message | None:
        """This node's live copy (created, dispatched or prefetched here), else None."""
        return self._live.get(self._part_of.get(message_id, message_id))

    def history_now(self, message_id: str) -> list[StateChange]:
        mid = self._part_of.get(message_id, message_id)
        return [
            StateChange(message_id, c.state, c.at, c.detail) for c in self._hist.get(mid, ())
        ]

    def lookup_now(self, provider: str, provider_message_id: str) -> str | None:
        found = self._corr.get((provider, provider_message_id))
        return found[0] if found is not None else None

    def prefetch(
        self, correlations: Sequence[tuple[str, str]], message_ids: Sequence[str] = ()
    ) -> Awaitable[None] | None:
        """Bring what the ``*_now`` reads will be asked for into this node, in one round trip:
        for each (provider, provider id) its message and history — always read again, since
        another node may have applied a report to it meanwhile — and each message id not held
        here. None when there is nothing to read (no await, no task)."""
        args: list[str] = []
        keys: list[tuple[str, str] | None] = []
        for key in correlations:
            known = self._corr.get(key)
            if known is None:
                args += ["c", _corr_field(*key)]
            else:
                args += ["m", known[0]]
            keys.append(key)
        for mid in message_ids:
            if not self._holds(self._part_of.get(mid, mid)):
                args += ["m", mid]
                keys.append(None)
        if not args:
            return None
        return self._fetch(args, keys)

    async def _fetch(self, args: list[str], keys: list[tuple[str, str] | None]) -> None:
        rows = await self._eval("fetch", *args)
        for wanted, (found, blob, history) in zip(keys, rows, strict=True):
            if not found:
                continue
            mid = _str(found)
            if wanted is not None and wanted not in self._corr:  # dropped by expiry later
                self._corr[wanted] = (mid, time.time() + _CACHED_CORRELATION)
            if not blob:
                self._forget(mid)  # purged or cancelled
                continue
            self._refresh(mid, blob, history)

    def _refresh(self, mid: str, blob: bytes, history: Sequence[bytes]) -> None:
        """What Redis holds now, into this node's copy (the live object kept where it is)."""
        held = self._live.get(mid)
        stored = message_from_blob(blob)
        if held is not None and not (stored.state.is_final and not held.state.is_final):
            self._hist[mid] = _history(mid, history)
            return
        # not held, or finished by another node: Redis's copy wins
        self._forget(mid)
        self._hold(stored)
        self._hist[mid] = _history(mid, history)
        if stored.state.is_final:  # a few kept for duplicate reports, the oldest dropped
            finals = self._finals
            finals[mid] = None
            while len(finals) > _CACHED_FINALS:
                old = next(iter(finals))
                del finals[old]
                if (m := self._live.get(old)) is not None and m.state.is_final:
                    self._forget(old)

    def _holds(self, mid: str) -> bool:
        """This node has the message and its history (the local reads can answer)."""
        return mid in self._live and mid in self._hist

    async def get_message(self, message_id: str) -> Message | None:
        """A message by any of its ids, as Redis has it (this node's live object when it holds
        one and Redis agrees it is live)."""
        found, blob, history = (await self._eval("fetch", "m", message_id))[0]
        if not blob:
            return None
        mid = _str(found)
        held = self._live.get(mid)
        if held is None:
            return message_from_blob(blob)
        self._refresh(mid, blob, history)  # another node may have finished it
        return self._live.get(mid) or message_from_blob(blob)

    async def history(self, message_id: str) -> list[StateChange]:
        client = self._client()
        found: Any = await client.get(self.prefix + "p:" + message_id)
        mid = _str(found) if found is not None else message_id
        rows: Any = await client.lrange(f"{self.prefix}h:{mid}", 0, -1)
        return _history(message_id, rows)

    async def _messages(self, index: str, limit: int, after_id: str) -> list[Message]:
        client = self._client()
        start = f"({after_id}" if after_id else "-"
        ids = [
            _str(x)
            for x in await client.zrangebylex(self.prefix + index, start, "+", 0, limit)
        ]
        if not ids:
            return []
        pipe = client.pipeline(transaction=False)
        for mid in ids:
            pipe.hget(f"{self.prefix}m:{mid}", "b")
        blobs = await pipe.execute()
        out = []
        for mid, blob in zip(ids, blobs, strict=True):
            live = self._live.get(mid)
            if live is not None:
                out.append(live)
            elif blob is not None:
                out.append(message_from_blob(blob))
        return out

    async def pending_messages(self, limit: int = 10_000, after_id: str = "") -> list[Message]:
        """This node's queued messages (its own and those it took over), by id."""
        return await self._messages(f"q:{self.node_id}", limit, after_id)

    async def awaiting_report(self, limit: int = 10_000, after_id: str = "") -> list[Message]:
        """This node's messages awaiting a report (its own and those it took over), by id."""
        return await self._messages(f"a:{self.node_id}", limit, after_id)

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
            out.append(
                (_str(rows[i]), [_str(x) for x in rows[i + 1]], [_str(x) for x in rows[i + 2]])
            )
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
        return {_str(a) for a in await self._eval("lease", *args)}

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

    async def messages(self, ids: Sequence[str]) -> list[Message]:
        """Several messages by id (as Redis has them), in one round trip; unknown ids left out."""
        if not ids:
            return []
        pipe = self._client().pipeline(transaction=False)
        for mid in ids:
            pipe.hget(f"{self.prefix}m:{mid}", "b")
        blobs = await pipe.execute()
        return [message_from_blob(b) for b in blobs if b is not None]

    async def delete_message(self, message_id: str) -> bool:
        def apply(result: Any) -> bool:
            mid = self._part_of.get(message_id, message_id)
            self._forget(mid)
            return bool(result)

        return bool(await self._write("delete", ["one", message_id], apply))

    def queue_depth(self) -> int:
        """Messages queued cluster-wide, as of the last write batch (an estimate)."""
        return self._queue_depth

    # ------------------------------------------------------------------ reassembly parts

    async def add_part(self, part: StoredPart) -> None:
        await self._write("part", ["add", part.key, part.seqnum, _part_wire(part)])

    async def parts(self, key: str) -> list[StoredPart]:
        stored: Any = await self._client().hgetall(f"{self.prefix}r:{key}")
        return sorted(
            (_part_from(key, int(n), raw) for n, raw in stored.items()), key=lambda p: p.seqnum
        )

    async def all_parts(self) -> list[StoredPart]:
        keys = sorted(_str(k) for k in await self._client().smembers(self.prefix + "rk"))
        out: list[StoredPart] = []
        for key in keys:
            out += await self.parts(key)
        return out

    async def complete_parts(self, key: str, message: Message) -> None:
        self._check_local(message)
        await self._write(
            "add", [self.node_id, key, 1, *self._add_args(message)], self._added([message])
        )

    async def drop_parts(self, key: str) -> None:
        await self._write("part", ["drop", key])

    # ------------------------------------------------------------------ correlations

    async def correlate(
        self, provider: str, provider_message_id: str, message_id: str, expires_at: float
    ) -> None:
        def apply(result: Any) -> None:
            self._corr[(provider, provider_message_id)] = (message_id, expires_at)

        await self._write(
            "correlate", [_corr_field(provider, provider_message_id), message_id, expires_at], apply
        )

    async def lookup(self, provider: str, provider_message_id: str) -> str | None:
        found = await self._client().hget(
            self.prefix + "c", _corr_field(provider, provider_message_id)
        )
        return _str(found) if found is not None else None

    async def expire_correlations(self, now: float) -> int:
        """Drop correlations with ``expires_at <= now`` (in pages); returns how many."""
        for key in [k for k, (_, exp) in self._corr.items() if exp <= now]:
            del self._corr[key]
        total = 0
        while True:
            n = int(await self._write("expire_corr", [now, 10_000]))
            total += n
            if n < 10_000:
                return total

    async def purge_final(self, created_before: float, limit: int = 10_000) -> int:
        return int(await self._write("delete", ["purge", created_before, limit]))

    # ------------------------------------------------------------------ delivery queues

    @staticmethod
    def _enqueue_args(
        items: Iterable[tuple[str, Receipt | InboundMessage]], at: float
    ) -> list[Any]:
        args: list[Any] = [at]
        for account, item in items:
            args += [account, _encode(item_to_wire(item))]
        return args

    def _enqueued(self, result: Any) -> list[int]:
        return [int(n) for n in result]

    async def enqueue_delivery(
        self, account: str, item: Receipt | InboundMessage, at: float
    ) -> int:
        args = self._enqueue_args([(account, item)], at)
        return int((await self._write("enqueue", args, self._enqueued))[0])

    async def enqueue_deliveries(
        self, items: Sequence[tuple[str, Receipt | InboundMessage]], at: float
    ) -> list[int]:
        if not items:
            return []
        return list(await self._write("enqueue", self._enqueue_args(items, at), self._enqueued))

    def enqueue_deliveries_nowait(
        self,
        items: Sequence[tuple[str, Receipt | InboundMessage]],
        at: float,
        done: Done,
        arg: Any = None,
    ) -> list[int]:
        """Queued with this pass's other writes. Redis allocates the ids: they are the
        ``result`` given to ``done``; the list returned here is empty."""
        if not items:
            self._queue(None, (), done, arg)
            return []
        self._queue("enqueue", self._enqueue_args(items, at), done, arg, self._enqueued)
        return []

    async def pending_deliveries(
        self, account: str, limit: int = 1000, after: int = 0
    ) -> list[DeliveryItem]:
        client = self._client()
        key = f"{self.prefix}d:{account}"
        start = f"(0-{after}" if after > 0 else "-"
        entries: Any = await client.xrange(key, start, "+", count=limit + len(self._removing))
        if not entries:
            return []
        ids = [int(_str(eid).partition("-")[2]) for eid, _ in entries]
        attempts = await client.hmget(self.prefix + "dt", [str(n) for n in ids])
        out: list[DeliveryItem] = []
        for n, (_, fields), tries in zip(ids, entries, attempts, strict=True):
            if n in self._removing:
                continue
            out.append(
                DeliveryItem(
                    n,
                    account,
                    item_from_wire(_decode(fields[b"w"])),
                    float(fields[b"t"]),
                    int(tries) if tries is not None else 0,
                )
            )
            if len(out) >= limit:
                break
        return out

    async def delivery_accounts(self) -> list[str]:
        client = self._client()
        accounts = sorted(_str(a) for a in await client.smembers(self.prefix + "da"))
        if not accounts:
            return []
        pipe = client.pipeline(transaction=False)
        for account in accounts:
            pipe.xlen(f"{self.prefix}d:{account}")
        lengths = await pipe.execute()
        return [a for a, n in zip(accounts, lengths, strict=True) if n]

    async def remove_delivery(self, delivery_id: int) -> None:
        await self._write("remove", ["", delivery_id])

    def remove_delivery_nowait(self, delivery_id: int) -> None:
        """Gone for this node's reads at once; the removal rides with the next batch, and is
        sent again a second later while Redis refuses it (each loss would repeat a receipt)."""
        self._removing.add(delivery_id)
        self._send_removal(delivery_id)

    def _send_removal(self, delivery_id: int) -> None:
        def removed(arg: Any, result: Any, error: BaseException | None) -> None:
            if error is None or self._writer is None or self._closing:
                self._removing.discard(delivery_id)
                return
            asyncio.get_running_loop().call_later(1.0, self._send_removal, delivery_id)

        try:
            self._queue("remove", ["", delivery_id], removed)
        except StoreUnavailable:
            self._removing.discard(delivery_id)

    async def note_delivery_attempt(self, delivery_id: int) -> None:
        await self._write("attempt", [delivery_id])

    def note_delivery_attempt_nowait(self, delivery_id: int) -> None:
        with contextlib.suppress(StoreUnavailable):  # the count is informational
            self._queue("attempt", [delivery_id], _ignore)

    async def expire_deliveries(self, older_than: float) -> int:
        """Drop queued items enqueued before ``older_than`` (a scan of every account's queue,
        in pages; a housekeeping job)."""
        total = 0
        for account in await self.delivery_accounts():
            after = 0
            while True:
                page = await self.pending_deliveries(account, limit=1000, after=after)
                if not page:
                    break
                old = [d.id for d in page if d.enqueued_at < older_than]
                if old:
                    total += int(await self._write("remove", [account, *old]))
                after = page[-1].id
        return total

    def delivery_depths(self) -> dict[str, int]:
        return dict(self._delivery_depths)

    def delivery_depth(self, account: str | None = None) -> int:
        """Queued deliveries (of ``account``, or all), as of the last write batch."""
        if account is None:
            return sum(self._delivery_depths.values())
        return self._delivery_depths.get(account, 0)


def _error(result: BaseException) -> BaseException:
    if isinstance(result, ResponseError):
        text = str(result)
        marker = text.find("DUP ")
        if marker >= 0:
            return DuplicateMessage(f"message id {text[marker + 4 :]!r} is already stored")
        return StoreUnavailable(f"redis: {text}"[:300])
    return result
