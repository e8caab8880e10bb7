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

The store is three modules: this one (what is stored, the local reads),
:mod:`bridge.store.redis_client` (the connection, the write pipeline, the cluster's calls) and
:mod:`bridge.store.redis_scripts` (the Lua scripts).

Not Redis Cluster (sharded): scripts touch keys they compute, so one primary (with replicas or
Sentinel for failover) holds all keys. Redis ≥ 7.0.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import msgspec

from bridge.core.model import InboundMessage, Message, MessageState, Receipt
from bridge.core.store import DeliveryItem, Done, StateChange, StoredPart
from bridge.store.common import (
    DuplicateMessage,
    StoreUnavailable,
    ignore,
    item_from_wire,
    item_to_wire,
    message_from_blob,
    message_to_blob,
)
from bridge.store.redis_client import RedisConnection, to_str

__all__ = ["RedisStore"]

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


_ENROUTE = int(MessageState.ENROUTE)

#: A correlation read from Redis is kept this many seconds on this node.
_CACHED_CORRELATION = 600.0
#: Final messages read from Redis kept on this node (the newest), for duplicate reports.
_CACHED_FINALS = 10_000

def _corr_field(provider: str, provider_message_id: str) -> str:
    return f"{provider}\x00{provider_message_id}"




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


class RedisStore(RedisConnection):
    """:class:`bridge.core.store.Store` on a Redis server at ``url`` (``redis://``,
    ``rediss://``, ``unix://``), keys under ``prefix``."""

    def _local_state(self) -> None:
        # Local state (see the module doc, "local reads").
        self._live: dict[str, Message] = {}
        self._part_of: dict[str, str] = {}
        self._others: dict[str, list[str]] = {}
        self._finals: dict[str, None] = {}
        self._hist: dict[str, list[StateChange]] = {}
        self._corr: dict[tuple[str, str], tuple[str, float]] = {}
        self._removing: set[int] = set()

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
            mid = to_str(found)
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
        mid = to_str(found)
        held = self._live.get(mid)
        if held is None:
            return message_from_blob(blob)
        self._refresh(mid, blob, history)  # another node may have finished it
        return self._live.get(mid) or message_from_blob(blob)

    async def history(self, message_id: str) -> list[StateChange]:
        client = self._client()
        found: Any = await client.get(self.prefix + "p:" + message_id)
        mid = to_str(found) if found is not None else message_id
        rows: Any = await client.lrange(f"{self.prefix}h:{mid}", 0, -1)
        return _history(message_id, rows)

    async def _messages(self, index: str, limit: int, after_id: str) -> list[Message]:
        client = self._client()
        start = f"({after_id}" if after_id else "-"
        ids = [
            to_str(x)
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
        keys = sorted(to_str(k) for k in await self._client().smembers(self.prefix + "rk"))
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
        return to_str(found) if found is not None else None

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
        ids = [int(to_str(eid).partition("-")[2]) for eid, _ in entries]
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
        accounts = sorted(to_str(a) for a in await client.smembers(self.prefix + "da"))
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
            self._queue("attempt", [delivery_id], ignore)

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
