"""The one way in: every message an ESME submits passes :meth:`Pipeline.accept`.

Accept validates and normalises what the SMPP adapter decoded (numbers through ``phonenumbers``,
sender rules, validity), routes it (so a message no route can carry is refused at once, in the
submit response), stores it durably (the response says OK only after the commit), and hands it
to the dispatcher. Concatenated parts each get their own id at once and are stored as parts;
when the last one arrives the whole message is stored and dispatched, and when they time out
every received part gets a failure receipt. Nothing here knows SMPP bytes: text decoding is
injected (``decode``) by the adapter, which also maps :class:`~bridge.core.admission.Rejected`
reasons to statuses. What a submission must be to get in (reasons, policy, number rules) is in
:mod:`bridge.core.admission`.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from bridge.core.admission import (
    _NO_ROUTE_REASONS,
    AccountPolicy,
    Rejected,
    RejectReason,
    Submission,
    normalise_destination,
    normalise_source,
)
from bridge.core.model import Address, Message, MessageState
from bridge.core.reassembly import Assembled, Fragment, Incomplete, PartKey, ReassemblyBuffer
from bridge.core.router import NoRoute, Router
from bridge.core.store import StateChange, Store, StoredPart
from bridge.observability import Metrics

__all__ = ["MessageIds", "Pipeline"]

log = structlog.get_logger("bridge.pipeline")

# Decodes a payload: (octets, data_coding, default_alphabet) -> text, or None for binary content.
Decoder = Callable[[bytes, int, str], "str | None"]


#: ``done(arg, message_id, error)``: the outcome of :meth:`Pipeline.accept_nowait`.
Accepted = Callable[[Any, "str | None", "BaseException | None"], None]


class Dispatching(Protocol):
    def submit(self, message: Message) -> None: ...
    def cancel(self, message_id: str) -> bool: ...


class Finishing(Protocol):
    def finish(
        self, message: Message, state: MessageState, error_code: int = 0, detail: str = ""
    ) -> Awaitable[object]: ...


class MessageIds:
    """Unique, stable, sortable message ids: milliseconds since the epoch × 4096 + a counter.

    Monotonic across restarts as long as the clock does not go back by more than the counter
    absorbs; ≤ 16 hex digits or ≤ 20 decimal digits, well under SMPP's 64.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._counter = itertools.count(int(clock() * 1000) << 12)

    def next(self, fmt: str = "hex") -> str:
        n = next(self._counter)
        return str(n) if fmt == "decimal" else format(n, "x")


@dataclass(slots=True)
class _PartMeta:
    """The first-part fields a reassembled message takes, stored with each part."""

    values: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps(self.values, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> _PartMeta:
        return cls(json.loads(raw) if raw else {})


def _alphabet(policy: AccountPolicy, data_coding: int) -> str:
    """The alphabet the account means by data_coding 0 or 1 (ignored for other values)."""
    return policy.alphabet_1 if data_coding == 1 else policy.default_alphabet


class Pipeline:
    """accept / query / cancel / replace, and the reassembly timeout loop."""

    def __init__(
        self,
        store: Store,
        router: Router,
        dispatcher: Dispatching,
        finisher: Finishing,
        decode: Decoder,
        *,
        clock: Callable[[], float] = time.time,
        max_queue: int = 1_000_000,
        reassembly_timeout: float = 60.0,
        chars: Callable[[str, int], tuple[int, bool]] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.router = router
        self.dispatcher = dispatcher
        self.finisher = finisher
        self.decode = decode
        self.clock = clock
        self.max_queue = max_queue
        #: Set by the bridge's disk watch (the domain does no I/O): refuse new submissions.
        self.disk_low = False
        #: Cluster mode (set by bridge/store/cluster.py): the parts of a long message may arrive at
        #: several nodes; the stored ones are merged and whoever has them all completes it.
        self.shared_parts = False
        self.ids = MessageIds(clock)
        self.reassembly = ReassemblyBuffer(timeout=reassembly_timeout)
        # (text, data_coding) -> (length in the units providers count, needs unicode)
        self.chars = chars or (lambda text, dc: (len(text), dc == 0x08))
        self._queued = 0  # approximate queue depth, refreshed from the store
        self._policies: dict[str, AccountPolicy] = {}
        self.incomplete = 0
        self.metrics = metrics if metrics is not None else Metrics()

    # ------------------------------------------------------------------ lifecycle

    async def restore(self) -> None:
        """Rebuild the reassembly buffer from stored parts after a restart; sets that were
        already complete are finished now, sets it displaced come out of the next expire()."""
        self._queued = self.store.queue_depth()
        fragments = [Fragment.from_stored(p) for p in await self.store.all_parts()]
        for assembled in self.reassembly.restore(fragments):
            await self._complete(assembled)

    async def expire_parts(self) -> int:
        """Time out incomplete concatenated messages: a failure receipt for each received part."""
        expired = self.reassembly.expire(self.clock())
        for inc in expired:
            await self._fail_incomplete(inc)
        return len(expired)

    # ------------------------------------------------------------------ accept

    def message_id(self, policy: AccountPolicy) -> str:
        return self.ids.next(policy.message_id_format)

    async def accept(self, sub: Submission, *, defer: list[Message] | None = None) -> str:
        """Validate, route, store durably and dispatch; returns the message id for the resp.

        Raises :class:`Rejected` for what is known to be wrong at once. With ``defer`` a
        single-part message is stored but appended there instead of dispatched: the caller
        hands them all to :meth:`dispatch` at once (a submit_multi's destinations, so that a
        provider that sends in bulk finds them queued together).
        """
        source, destination, now = self._admit(sub)
        if sub.concat is not None and sub.concat[1] > 1:
            return await self._accept_part(sub, source, destination, now)
        message = self._single(sub, source, destination, now)
        await self.store.add_message(message)
        self._queued += 1
        if defer is not None:
            defer.append(message)
            return message.id
        self.dispatcher.submit(message)
        # Per message, hot path: DEBUG only (the filtering logger drops it in ~0.35 µs).
        log.debug(
            "pipeline.accepted",
            message_id=message.id,
            account=message.account,
            route=message.route,
        )
        return message.id

    def dispatch(self, messages: list[Message]) -> None:
        """Hand stored messages deferred by :meth:`accept` to the dispatcher, together."""
        for message in messages:
            self.dispatcher.submit(message)
        messages.clear()

    def _admit(self, sub: Submission) -> tuple[Address, Address, float]:
        """The checks every submission passes first: numbers, validity, queue room."""
        policy = sub.account
        source = normalise_source(sub.source, policy)
        destination = normalise_destination(sub.destination, policy)
        now = self.clock()
        if sub.expire_at is not None and sub.expire_at <= now:
            raise Rejected(RejectReason.INVALID_EXPIRY, "already expired")
        if self.disk_low:
            raise Rejected(RejectReason.DISK_FULL)
        if self._queued >= self.max_queue:
            self._queued = self.store.queue_depth()
            if self._queued >= self.max_queue:
                raise Rejected(RejectReason.QUEUE_FULL)
        return source, destination, now

    def _single(
        self, sub: Submission, source: Address, destination: Address, now: float
    ) -> Message:
        """A single-part message, decoded and routed (raises Rejected)."""
        policy = sub.account
        text = self._decode(sub.payload, sub.data_coding, policy)
        message = self._message(self.message_id(policy), sub, source, destination, text, now)
        message.part_ids = [message.id]
        self._route(message)
        return message

    def accept_nowait(self, sub: Submission, done: Accepted, arg: Any) -> bool:
        """:meth:`accept` without a task or future: the hot path for single-part messages.

        Validates and routes at once (raising :class:`Rejected`), appends the accept to the
        store and returns True; ``done(arg, message_id, None)`` runs once the message is durable
        and handed to the dispatcher, ``done(arg, None, error)`` if the store could not take it.
        Returns False for a concatenated part (reassembly awaits: use :meth:`accept`).
        """
        if sub.concat is not None and sub.concat[1] > 1:
            return False
        message = self._single(sub, *self._admit(sub))
        self._queued += 1  # counted now, so a burst cannot overshoot max_queue
        self.store.add_message_nowait(message, self._stored, (message, done, arg))
        return True

    def _stored(
        self, ctx: tuple[Message, Accepted, Any], result: object, error: BaseException | None
    ) -> None:
        message, done, arg = ctx
        if error is not None:
            self._queued = max(0, self._queued - 1)
            done(arg, None, error)
            return
        self.dispatcher.submit(message)
        done(arg, message.id, None)
        log.debug(
            "pipeline.accepted", message_id=message.id, account=message.account, route=message.route
        )

    def _decode(self, payload: bytes, data_coding: int, policy: AccountPolicy) -> str | None:
        try:
            return self.decode(payload, data_coding, _alphabet(policy, data_coding))
        except ValueError as e:
            raise Rejected(RejectReason.INVALID_TEXT, str(e)) from None

    def _message(
        self,
        message_id: str,
        sub: Submission,
        source: Address,
        destination: Address,
        text: str | None,
        now: float,
    ) -> Message:
        return Message(
            id=message_id,
            account=sub.account.system_id,
            source=source,
            destination=destination,
            text=text,
            data_coding=sub.data_coding,
            binary=sub.payload if text is None else b"",
            udh=sub.udh,
            flash=sub.flash,
            registered_delivery=sub.registered_delivery,
            priority=sub.priority,
            esm_class=sub.esm_class,
            protocol_id=sub.protocol_id,
            service_type=sub.service_type,
            created_at=now,
            schedule_at=sub.schedule_at,
            expire_at=sub.expire_at or now + sub.account.default_validity,
        )

    def _route(self, message: Message) -> None:
        text = message.text
        if text is None:
            chars, unicode = len(message.binary), False
        else:
            chars, unicode = self.chars(text, message.data_coding)
        try:
            message.route = self.router.route(message, chars=chars, unicode=unicode)
        except NoRoute as e:
            raise Rejected(_NO_ROUTE_REASONS[e.reason], str(e)) from None

    # ------------------------------------------------------------------ concatenated parts

    async def _accept_part(
        self, sub: Submission, source: Address, destination: Address, now: float
    ) -> str:
        assert sub.concat is not None
        reference, total, seqnum = sub.concat
        if not 1 <= seqnum <= total:
            raise Rejected(RejectReason.INVALID_CONCAT, f"part {seqnum} of {total}")
        policy = sub.account
        self._policies[policy.system_id] = policy
        key = PartKey(policy.system_id, source.digits, destination.digits, reference)
        message_id = self.message_id(policy)
        meta = _PartMeta(
            {
                "source": [source.digits, source.ton, source.npi],
                "destination": [destination.digits, destination.ton, destination.npi],
                "data_coding": sub.data_coding,
                "udh": sub.udh.hex(),
                "flash": sub.flash,
                "registered_delivery": sub.registered_delivery,
                "priority": sub.priority,
                "esm_class": sub.esm_class,
                "protocol_id": sub.protocol_id,
                "service_type": sub.service_type,
                "schedule_at": sub.schedule_at,
                "expire_at": sub.expire_at,
                "alphabet": _alphabet(policy, sub.data_coding),
                "validity": policy.default_validity,
                "id_format": policy.message_id_format,
            }
        ).encode()
        fragment = Fragment(key, seqnum, total, message_id, sub.payload, now, meta)
        # Buffer first: a set this part supersedes shares its store key, so its parts must be
        # gone from the store before this one is written. The writer runs operations in order,
        # so concurrent parts of one message cannot overtake each other.
        try:
            assembled, displaced = self.reassembly.add(fragment)
        except ValueError as e:
            raise Rejected(RejectReason.INVALID_CONCAT, str(e)) from None
        for inc in displaced:
            await self._fail_incomplete(inc)
        await self.store.add_part(
            StoredPart(key.as_str(), seqnum, total, message_id, sub.payload, now, meta)
        )
        if assembled is None and self.shared_parts:
            assembled = await self._merge_shared(key.as_str(), fragment)
        if assembled is not None:
            await self._complete(assembled)
        return message_id

    async def _merge_shared(self, key: str, fragment: Fragment) -> Assembled | None:
        """Cluster mode: the other parts of this message may have come in over binds on other
        nodes — take the stored ones into this node's buffer (a part it holds is a no-op)."""
        assembled = None
        for part in await self.store.parts(key):
            if part.total != fragment.total or part.seqnum == fragment.seqnum:
                continue
            assembled, displaced = self.reassembly.add(Fragment.from_stored(part))
            for inc in displaced:
                await self._fail_incomplete(inc)
            if assembled is not None:
                break
        return assembled

    def _from_first_part(self, first: Fragment, account: str, payload: bytes | None) -> Message:
        """The message a set of parts stands for, built from the fields stored with its first
        part; ``payload`` None for an incomplete set (no content to decode)."""
        meta = _PartMeta.decode(first.meta).values
        src, dst = meta["source"], meta["destination"]
        text = None
        if payload is not None:
            try:
                text = self.decode(payload, meta["data_coding"], meta["alphabet"])
            except ValueError:
                text = None  # kept as binary: the parts were each accepted already
        return Message(
            id=first.message_id,
            account=account,
            source=Address(src[0], src[1], src[2]),
            destination=Address(dst[0], dst[1], dst[2]),
            text=text,
            data_coding=meta["data_coding"],
            binary=payload if payload is not None and text is None else b"",
            udh=bytes.fromhex(meta["udh"]),
            flash=meta["flash"],
            registered_delivery=meta["registered_delivery"],
            priority=meta["priority"],
            esm_class=meta["esm_class"],
            protocol_id=meta["protocol_id"],
            service_type=meta["service_type"],
            created_at=first.received_at,
            schedule_at=meta["schedule_at"],
            expire_at=meta["expire_at"] or first.received_at + meta["validity"],
        )

    def _assemble_sync(self, assembled: Assembled) -> Message:
        message = self._from_first_part(assembled.first, assembled.key.account, assembled.payload)
        message.part_ids = list(assembled.all_ids)
        message.next_attempt_at = self.clock()
        return message

    async def _complete(self, assembled: Assembled) -> None:
        message = self._assemble_sync(assembled)
        key = assembled.key.as_str()
        if self.shared_parts:
            try:
                self._route(message)
            except Rejected:
                pass  # the same refusal below
            else:
                try:
                    await self.store.complete_parts(key, message)
                except ValueError:  # a duplicate: another node completed it at the same time
                    log.debug("pipeline.completed_elsewhere", message_id=message.id)
                    return
                self._queued += 1
                self.dispatcher.submit(message)
                return
        try:
            self._route(message)
        except Rejected as e:
            # Every part already got ESME_ROK: the refusal travels as a receipt for each part.
            await self.store.complete_parts(key, message)
            await self.finisher.finish(message, MessageState.REJECTED, 0, e.reason.value)
            log.debug(
                "pipeline.rejected_assembled",
                message_id=message.id,
                account=message.account,
                reason=e.reason.name,
            )
            return
        await self.store.complete_parts(key, message)
        self._queued += 1
        self.dispatcher.submit(message)
        log.debug(
            "pipeline.accepted",
            message_id=message.id,
            account=message.account,
            route=message.route,
            parts=len(message.part_ids),
        )

    async def _fail_incomplete(self, inc: Incomplete) -> None:
        """An incomplete concatenated message: a failure receipt for every part received."""
        if self.shared_parts and not await self.store.parts(inc.key.as_str()):
            return  # completed (or ended) by another node that held the other parts
        self.incomplete += 1
        self.metrics.reassembly_timeout(inc.reason)
        frags = inc.fragments
        if not frags:
            return
        first = min(frags, key=lambda f: f.seqnum)
        message = self._from_first_part(first, inc.key.account, None)
        message.part_ids = list(inc.all_ids)
        log.warning(
            "pipeline.incomplete_message",
            message_id=message.id,
            account=message.account,
            parts=len(frags),
            total=inc.total,
            reason=inc.reason,
        )
        try:
            await self.store.complete_parts(inc.key.as_str(), message)
        except ValueError:
            if not self.shared_parts:
                raise
            return  # cluster mode: another node ended the same set at the same time
        await self.finisher.finish(
            message, MessageState.UNDELIVERABLE, 0, f"incomplete: {inc.reason}"
        )

    # ------------------------------------------------------------------ query, cancel, replace

    async def query(self, message_id: str, account: str) -> Message:
        message = await self.store.get_message(message_id)
        if message is None or message.account != account:
            raise Rejected(RejectReason.UNKNOWN_MESSAGE)
        return message

    async def cancel(self, message_id: str, account: str) -> None:
        message = await self.query(message_id, account)
        if message.state.is_final or not self.dispatcher.cancel(message.id):
            raise Rejected(RejectReason.NOT_CANCELLABLE)
        self._queued = max(0, self._queued - 1)
        await self.finisher.finish(message, MessageState.DELETED, 0, "cancelled by the ESME")

    async def replace(
        self,
        message_id: str,
        account: str,
        payload: bytes,
        *,
        registered_delivery: int | None,
        schedule_at: float | None,
        expire_at: float | None,
    ) -> None:
        message = await self.query(message_id, account)
        if message.state.is_final or not self.dispatcher.cancel(message.id):
            raise Rejected(RejectReason.NOT_CANCELLABLE)
        policy = self._policies.get(account) or AccountPolicy(account)
        text = self._decode(payload, message.data_coding, policy)
        message.text = text
        message.binary = payload if text is None else b""
        if registered_delivery is not None:
            message.registered_delivery = registered_delivery
        if schedule_at is not None:
            message.schedule_at = schedule_at
        if expire_at is not None:
            message.expire_at = expire_at
        self._route(message)
        await self.store.update_message(
            message, StateChange(message.id, message.state, self.clock(), "replaced")
        )
        self.dispatcher.submit(message)

    def note_dispatched(self) -> None:
        """The dispatcher handed a message to a provider (keeps the queue-depth estimate)."""
        self._queued = max(0, self._queued - 1)

