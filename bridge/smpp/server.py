"""The asyncio SMPP listener: a thin layer that moves bytes between sockets and sessions.

All protocol rules live in :mod:`bridge.smpp.session`; this module adds what needs a clock, a
socket or other connections: authentication against the accounts, bind limits across sessions,
brute-force slow-down, per-account TPS, the per-connection timers, TLS, back-pressure toward slow
readers, and the two seams to the pipeline:

* inbound: :class:`SmppHandler.handle_request` gets every submit_sm, submit_multi, data_sm,
  query_sm, cancel_sm and replace_sm of a bound session and returns the response to send. Requests
  run concurrently, so responses go out in order of completion, each with its request's sequence
  number.
* outbound: :meth:`SmppServer.deliver` sends a deliver_sm (or data_sm) to a bound receiver or
  transceiver of a system_id, within the session's window, and reports whether it was
  acknowledged.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import ssl
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, cast

import structlog
from aiolimiter import AsyncLimiter

from bridge.core.accounts import (
    Account,
    AccountRegistry,
    AuthResult,
    BindLockout,
    BindThrottle,
    IPNetwork,
)
from bridge.core.accounts import BindType as AccountBindType
from bridge.observability import LoopHistogram, Metrics, SampledLog
from bridge.smpp.admission import Admission, AdmissionConfig
from bridge.smpp.connection import SessionConnection
from bridge.smpp.events import (
    BindRequested,
    BindType,
    ConnectionClosed,
    MessageRequest,
    ProtocolViolation,
    ResponseReceived,
    ResponseTimedOut,
    Unbound,
)
from bridge.smpp.hash_pool import HashPool, PoolBusy
from bridge.smpp.listener import Listener, open_listeners
from bridge.smpp.pdu import RESPONSE_BIT, CommandId, Pdu, Status, encode
from bridge.smpp.session import Event, ServerSession, SessionConfig
from bridge.smpp.session_core import WindowFull

__all__ = [
    "DeliverResult",
    "RejectingHandler",
    "ServerConfig",
    "SessionInfo",
    "SmppHandler",
    "SmppServer",
]

log = structlog.get_logger("bridge.smpp")

_THROTTLED_COMMANDS = frozenset({CommandId.submit_sm, CommandId.submit_multi, CommandId.data_sm})
# Pause reading from a peer whose unread responses exceed this many octets (slow reader).
_HIGH_WATER = 256 * 1024
# Fairness (README "Reliability", SMPP): at most this many PDUs of one session are handled per
# loop pass; the rest waits in its buffer (reading paused) until the other sessions had a turn.
_BATCH = 128
# A refused connection waits this long for its first PDU, to answer a bind with bind_resp
# ESME_RBINDFAIL (else generic_nack ESME_RSYSERR), then closes; at most _MAX_REFUSING wait at
# once (beyond that they are closed at once, still counted).
_REFUSE_WAIT = 0.5
# listen() backlog: asyncio's default of 100 overflows under a reconnect storm, and a dropped
# SYN costs a good ESME 1 s, then 3 s (TCP retransmission) before its bind even arrives. The
# kernel caps it at net.core.somaxconn.
_BACKLOG = 4096
_MAX_REFUSING = 256
_BIND_IDS = frozenset(
    {CommandId.bind_transmitter, CommandId.bind_receiver, CommandId.bind_transceiver}
)

# --- metrics: PDU label names (bounded: SMPP 3.4's commands and statuses, else one bucket)
_COMMAND_NAMES = {int(c): c.name for c in CommandId}
_STATUS_NAMES = {int(s): s.name for s in Status}
_HEADER3 = struct.Struct(">III").unpack_from  # command_length, command_id, command_status
_NO_MORE = -1  # _Connection._in_next once the input cannot be framed any more
_OUTSIDE = 0xFFFFFFFF  # stands for every command id / status outside SMPP 3.4 in the counts
_PduKey = tuple[int, int]  # (command_id, command_status)


def pdu_labels(command_id: int, status: int) -> tuple[str, str]:
    """(command, status) label values: SMPP names; "unknown" / "other" outside SMPP 3.4."""
    return _COMMAND_NAMES.get(command_id, "unknown"), _STATUS_NAMES.get(status, "other")


def _canonical(key: _PduKey) -> _PduKey:
    """Fold ids outside SMPP 3.4 into one key, so a peer sending random command ids or
    statuses cannot grow the counts without bound."""
    cid, status = key
    return (
        cid if cid in _COMMAND_NAMES else _OUTSIDE,
        status if status in _STATUS_NAMES else _OUTSIDE,
    )


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Listener settings; timers and windows per session are in :class:`SessionConfig`."""

    host: str = "127.0.0.1"
    port: int = 2775
    session: SessionConfig = field(default_factory=SessionConfig)
    max_connections: int = 1000
    bind_failure_delay: float = 1.0
    bind_failure_delay_max: float = 30.0
    shutdown_timeout: float = 10.0
    # connection admission (see bridge/smpp/admission.py)
    max_unbound_per_address: int = 10
    bind_reserve: int = 100
    allowed_ips: tuple[IPNetwork, ...] | None = None  # None: the union of the accounts'
    log_sample_interval: float = 10.0
    # a receiver owing answers (or not reading) this long is closed; 0 = never
    stalled_receiver_timeout: float = 60.0
    # brute force (README "Binds")
    reveal_bind_errors: bool = False
    bind_lockout_failures: int = 10
    bind_lockout_duration: float = 300.0
    hash_workers: int = 1
    hash_max_pending: int = 16
    tls_host: str | None = None
    tls_port: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


@dataclass(slots=True)
class SessionInfo:
    """What the pipeline may know of a session: who, from where, bound how."""

    id: int
    peer_ip: str
    peer_port: int
    tls: bool
    system_id: str | None = None
    bind_type: BindType | None = None
    account: Account | None = None


class DeliverResult(NamedTuple):
    """Outcome of :meth:`SmppServer.deliver`: ``status`` is the ESME's command_status, None when
    there was no answer (``error`` says why: no receiver bound, timeout, connection lost)."""

    status: int | None
    error: str | None = None

    @property
    def acknowledged(self) -> bool:
        return self.status == 0


#: ``reply(token, response)``: how a handler answers a request it took with ``try_handle``.
Reply = Callable[[Any, Pdu], None]


class SmppHandler(Protocol):
    """The pipeline seen from the SMPP server."""

    async def handle_request(self, session: SessionInfo, pdu: Pdu) -> Pdu:
        """Answer a message operation; the returned PDU's id and sequence are set for you."""
        ...

    def try_handle(self, session: SessionInfo, pdu: Pdu, reply: Reply, token: Any) -> bool:
        """The hot path, without a task per request: take the request and call
        ``reply(token, response)`` exactly once — now or later (say, once the message is on
        disk) — and return True; or return False and the request goes to
        :meth:`handle_request` in a task."""
        ...

    def session_bound(self, session: SessionInfo) -> None:
        """A session bound; a receiver bind is the moment to flush queued receipts."""
        ...

    def session_closed(self, session: SessionInfo) -> None: ...


class RejectingHandler:
    """The handler until a pipeline is plugged in: refuses every message, never pretends."""

    async def handle_request(self, session: SessionInfo, pdu: Pdu) -> Pdu:
        return Pdu(pdu.command_id, command_status=Status.ESME_RSYSERR)

    def try_handle(self, session: SessionInfo, pdu: Pdu, reply: Reply, token: Any) -> bool:
        return False

    def session_bound(self, session: SessionInfo) -> None:
        return None

    def session_closed(self, session: SessionInfo) -> None:
        return None


def _try_acquire(limiter: AsyncLimiter) -> bool:
    """Take one unit of the limiter's capacity now, or return False without waiting.

    ``has_capacity()`` alone does not consume anything: every request of a pipelined burst,
    checked in one ``data_received`` before any task ran ``acquire()``, would pass it. When there
    is capacity, ``acquire()`` finishes without suspending, so one ``send()`` runs it to the end
    synchronously.
    """
    if not limiter.has_capacity():
        return False
    coro = limiter.acquire()
    try:
        coro.send(None)
    except StopIteration:
        return True
    # It would have to wait after all (cannot happen on one thread): do not keep its place.
    coro.close()
    return False


class _Connection(SessionConnection):
    """One TCP (or TLS) connection: feeds its session, runs its timers, writes its output."""

    session: ServerSession

    def __init__(self, server: SmppServer, tls: bool) -> None:
        super().__init__(asyncio.get_running_loop(), server.clock)
        self.server = server
        self.tls = tls
        self.session = ServerSession(server.config.session, server.clock())
        self.info = SessionInfo(next(server._ids), "", 0, tls)
        self._refuse_timer: asyncio.TimerHandle | None = None
        self._waiters: dict[int, asyncio.Future[Pdu | None]] = {}
        # requests sent with send_request_nowait: seq -> (done, arg), called with the response
        self._callbacks: dict[int, tuple[Callable[[Any, Pdu | None], None], Any]] = {}
        self._window_waiters: list[asyncio.Future[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._writing_paused = False
        self._backlog = False  # PDUs left in the session's buffer after a _BATCH (fairness)
        self._refusing = False  # refused at accept: waiting for the first PDU to answer
        self._refused = False
        self._closed = False
        # since when the peer owes us something (an answer to a request we sent, or reading
        # what we wrote) without having sent a single octet: see _check_stalled()
        self._owed_since: float | None = None
        self._limiter: AsyncLimiter | None = None
        self._rx_at = 0.0  # server.clock() when the last chunk arrived (submit latency)
        # PDUs in (_count_in): where the next header starts in the next chunk, and the first
        # bytes of a header split over two reads
        self._in_next = 0
        self._in_head = b""
        # (command_id, arrival) of the message responses queued since the last write
        self._answered: list[tuple[int, float]] = []
        self.log = log

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername") or ("", 0)
        self.info.peer_ip, self.info.peer_port = str(peer[0]), int(peer[1])
        self.log = log.bind(session=self.info.id, peer=self.info.peer_ip)
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)
        server = self.server
        decision = server.admission.admit(self, self.info.peer_ip)
        if decision.refused is not None:
            self._refuse(decision.refused)
            return
        if decision.evict is not None:
            decision.evict._evicted()
        server._connections.add(self)
        self.log.debug("smpp.connected", tls=self.tls)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._refusing:
            self._answer_refused(data)
            return
        now = self._rx_at = self.server.clock()
        self._owed_since = None
        if self._in_next >= 0:
            self._count_in(data)
        session = self.session
        events = session.receive_data(data, now, _BATCH)
        if events:
            self._dispatch(events)
        if session.more_input:
            self._hold_input()
        self._flush()

    # ------------------------------------------------------------------ fairness

    def _hold_input(self) -> None:
        """More than _BATCH PDUs came in one read: stop reading and handle the rest in later
        loop passes, so one pipelining session cannot delay the others' answers."""
        if not self._backlog:
            self._backlog = True
            self._set_reading()
            self.loop.call_soon(self._more_input)

    def _more_input(self) -> None:
        if self._closed:
            return
        if self._writing_paused:
            return  # a slow reader: resume_writing() goes on with the backlog
        session = self.session
        events = session.receive_data(b"", self.server.clock(), _BATCH)
        if events:
            self._dispatch(events)
        self._flush()
        if session.more_input and not self._closed:
            self.loop.call_soon(self._more_input)
        else:
            self._backlog = False
            self._set_reading()

    def _set_reading(self) -> None:
        """Read while the peer reads its answers and no backlog waits."""
        transport = self.transport
        if transport is None or self._closed:
            return
        pause = self._writing_paused or self._backlog
        if pause and not self._reading_paused:
            transport.pause_reading()
            self._reading_paused = True
        elif not pause and self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False

    # ------------------------------------------------------------------ admission

    def _refuse(self, reason: str) -> None:
        """Refused at accept: answer with an SMPP PDU, never a bare reset (README "Connection
        admission"); sampled WARNING + bridge_smpp_connections_refused_total."""
        self._closed = self._refused = True
        server = self.server
        server.metrics.connection_refused(reason)
        server.sampled(
            "warning", "smpp.connection_refused", reason, reason=reason, peer=self.info.peer_ip
        )
        transport = self.transport
        assert transport is not None
        if server._refusing >= _MAX_REFUSING:
            transport.write(encode(Pdu(CommandId.generic_nack, 0, Status.ESME_RSYSERR)))
            transport.close()
            return
        server._refusing += 1
        self._refusing = True
        self._refuse_timer = self.loop.call_later(_REFUSE_WAIT, self._answer_refused, b"")

    def _answer_refused(self, data: bytes) -> None:
        if not self._refusing:
            return
        self._refusing = False
        self.server._refusing -= 1
        if self._refuse_timer is not None:
            self._refuse_timer.cancel()
        pdu = Pdu(CommandId.generic_nack, 0, Status.ESME_RSYSERR)
        if len(data) >= 16:
            _, cid, _, seq = struct.unpack_from(">IIII", data)
            if cid in _BIND_IDS:
                system_id = self.server.config.session.system_id
                pdu = Pdu(cid | RESPONSE_BIT, seq, Status.ESME_RBINDFAIL, {"system_id": system_id})
            else:
                pdu = Pdu(CommandId.generic_nack, seq, Status.ESME_RSYSERR)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(pdu))
            self.transport.close()

    def _evicted(self) -> None:
        """An unbound connection gives its place to a newcomer from a lighter address."""
        server = self.server
        server.metrics.connection_refused("evicted")
        server.sampled("warning", "smpp.connection_evicted", "evicted", peer=self.info.peer_ip)
        self.session.close()
        self.session._out.append(encode(Pdu(CommandId.generic_nack, 0, Status.ESME_RSYSERR)))
        self._close_soon()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            if self._refusing:
                self._refusing = False
                self.server._refusing -= 1
                if self._refuse_timer is not None:
                    self._refuse_timer.cancel()
            return
        if self._closed and self.transport is None:
            return
        self._closed = True
        self._cancel_timers()
        failed = self.session.close()
        for ev in failed:
            self._resolve(ev.request.sequence_number, None)
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()
        callbacks, self._callbacks = self._callbacks, {}
        for done, arg in callbacks.values():
            done(arg, None)
        for w in self._window_waiters:
            if not w.done():
                w.set_exception(ConnectionError("connection lost"))
        self._window_waiters.clear()
        server = self.server
        server._forget(self)
        system_id = self.info.system_id
        if system_id is not None:
            server.metrics.smpp_event("disconnect_bound")
            server.sampled(
                "info", "smpp.disconnected", system_id, system_id=system_id, error=str(exc or "")
            )
        else:
            server.metrics.smpp_event("disconnect_unbound")
            self.log.debug("smpp.disconnected", error=str(exc or ""))

    def pause_writing(self) -> None:
        # The peer does not read its responses: stop reading its requests until it catches up.
        self._writing_paused = True
        if self._owed_since is None:
            self._owed_since = self.server.clock()
            self._arm()  # the stalled receiver check: see _next_deadline()
        self._set_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._backlog:
            self.loop.call_soon(self._more_input)
        else:
            self._set_reading()

    # ------------------------------------------------------------------ events

    def _dispatch(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, MessageRequest):
                self._start_request(ev.pdu)
            elif isinstance(ev, ResponseReceived):
                self._resolve(ev.pdu.sequence_number, ev.pdu)
            elif isinstance(ev, ResponseTimedOut):
                self._resolve(ev.request.sequence_number, None)
            elif isinstance(ev, BindRequested):
                self._spawn(self._bind(ev))
            elif isinstance(ev, ProtocolViolation):
                self._violation(ev)
            elif isinstance(ev, Unbound):
                self.server.sampled(
                    "info",
                    "smpp.unbound",
                    self.info.system_id or "-",
                    session=self.info.id,
                    system_id=self.info.system_id,
                    by_peer=ev.initiated_by_peer,
                )
                self._close_when_answered()
            elif isinstance(ev, ConnectionClosed):
                self.server.sampled(
                    "info",
                    "smpp.closing",
                    ev.reason,
                    session=self.info.id,
                    peer=self.info.peer_ip,
                    system_id=self.info.system_id,
                    reason=ev.reason,
                )
                if ev.drain:
                    self._close_when_answered()
                else:
                    self._close_soon()

    def _violation(self, ev: ProtocolViolation) -> None:
        """Throttled requests and protocol violations: counted each, logged sampled (one line
        per account and status per log_sample_interval, with the suppressed count)."""
        server = self.server
        system_id = self.info.system_id or "unknown"
        if ev.status == Status.ESME_RTHROTTLED and not ev.command_id & RESPONSE_BIT:
            server.metrics.throttled(system_id, "outstanding")
            server.metrics.smpp_event("throttled")
        else:
            server.metrics.smpp_event("protocol_violation")
        server.sampled(
            "info",
            "smpp.protocol_violation",
            f"{system_id}:{ev.status}",
            session=self.info.id,
            peer=self.info.peer_ip,
            system_id=self.info.system_id,
            status=ev.status,
            command_id=ev.command_id,
            detail=ev.detail,
        )

    def _start_request(self, pdu: Pdu) -> None:
        limiter = self._limiter
        if (
            limiter is not None
            and pdu.command_id in _THROTTLED_COMMANDS
            and not _try_acquire(limiter)
        ):
            throttled = Pdu(pdu.command_id, command_status=Status.ESME_RTHROTTLED)
            self.session.respond(pdu, throttled)
            server = self.server
            system_id = self.info.system_id or "unknown"
            server.metrics.throttled(system_id, "tps")
            server.metrics.smpp_event("throttled")
            server.sampled("info", "smpp.throttled", system_id, system_id=system_id, reason="tps")
            return
        handler = self.server.handler
        try:
            taken = handler.try_handle(self.info, pdu, self._reply, (pdu, self._rx_at))
        except Exception:
            self.log.exception("smpp.handler_failed", command=pdu.name)
            self._reply((pdu, self._rx_at), Pdu(pdu.command_id, command_status=Status.ESME_RSYSERR))
            return
        if not taken:
            self._spawn(self._request(pdu, self._rx_at))

    def _reply(self, token: tuple[Pdu, float], resp: Pdu) -> None:
        """A request answered on the hot path (see SmppHandler.try_handle)."""
        if self._closed:
            return
        pdu, arrived = token
        self.session.respond(pdu, resp)
        self._answered.append((pdu.command_id, arrived))
        self._flush_soon()
        if self._linger is not None and self.session.outstanding == 0:
            self._close_soon()

    async def _request(self, pdu: Pdu, arrived: float) -> None:
        try:
            resp = await self.server.handler.handle_request(self.info, pdu)
        except Exception:
            self.log.exception("smpp.handler_failed", command=pdu.name)
            resp = Pdu(pdu.command_id, command_status=Status.ESME_RSYSERR)
        self.session.respond(pdu, resp)
        self._answered.append((pdu.command_id, arrived))
        self._flush_soon()
        if self._linger is not None and self.session.outstanding == 0:
            self._close_soon()

    async def _bind(self, ev: BindRequested) -> None:
        server = self.server
        ip = self.info.peer_ip
        bind_type = AccountBindType(ev.bind_type.value)
        accounts = server.accounts
        reveal = server.config.reveal_bind_errors
        now = server.clock()
        if accounts.get(ev.system_id) is not None and server.lockout.locked(ev.system_id, ip, now):
            # Locked (README "Binds"): refused without looking at the password (no hashing).
            locked = int(Status.ESME_RBINDFAIL if reveal else Status.ESME_RINVPASWD)
            result = AuthResult(locked, accounts.get(ev.system_id), "account locked out")
            server.metrics.smpp_event("bind_locked")
        elif accounts.would_block(ev.system_id, ev.password):
            # A password hash not verified before costs tens of ms of CPU: keep it off the
            # loop, in a bounded pool (bridge/smpp/hash_pool.py).
            try:
                result = await server.hash_pool.run(
                    ip,
                    functools.partial(
                        accounts.authenticate,
                        ev.system_id,
                        ev.password,
                        bind_type,
                        ip,
                        reveal=reveal,
                    ),
                )
            except PoolBusy:
                result = AuthResult(
                    Status.ESME_RBINDFAIL, accounts.get(ev.system_id), "password checks busy"
                )
        else:
            result = accounts.authenticate(ev.system_id, ev.password, bind_type, ip, reveal=reveal)
        status = result.status
        account = result.account
        reason = result.reason
        if status == 0 and account is not None:
            bound = server.bound_count(account.system_id)
            if account.max_binds and bound >= account.max_binds:
                status, reason = Status.ESME_RBINDFAIL, f"max_binds {account.max_binds} reached"
            elif (
                account.max_binds
                and server.bind_gate is not None
                # Cluster mode: the binds of the other nodes count too (bridge/store/cluster.py).
                and not await server.bind_gate(account.system_id, account.max_binds, bound)
            ):
                status = Status.ESME_RBINDFAIL
                reason = f"max_binds {account.max_binds} reached across the cluster"
        if self._closed or self.transport is None or self.transport.is_closing():
            return
        if status != 0 or account is None:
            # Never the raw system_id of a failed bind as a label: unknown ones are unbounded.
            server.metrics.bind(
                account.system_id if account is not None else "unknown",
                ev.bind_type.value,
                ok=False,
            )
            now = server.clock()
            if (
                reason == "wrong password"
                and account is not None
                and server.lockout.record_failure(account.system_id, now)
            ):
                log.warning(  # once per lock: not a flood
                    "smpp.account_locked",
                    system_id=account.system_id,
                    failures=server.lockout.max_failures,
                    seconds=server.lockout.duration,
                )
            # The n-th consecutive failure waits base_delay * 2**(n-1), the first one included.
            delay = server.throttle.record_failure(ip, now, ev.system_id)
            server.metrics.smpp_event("bind_rejected")
            server.sampled(
                "warning",
                "smpp.bind_rejected",
                ip,
                session=self.info.id,
                peer=ip,
                system_id=ev.system_id,
                bind_type=ev.bind_type.value,
                status=status,
                reason=reason,
                delay=round(delay, 3),
            )
            if delay > 0:
                await asyncio.sleep(delay)
            if self._closed:
                return
            self.session.reject_bind(status or Status.ESME_RBINDFAIL)
            self._flush()
            return
        server.throttle.record_success(ip, account.system_id)
        server.lockout.record_success(account.system_id, ip)
        server.admission.bound(self)
        self.session.accept_bind(max_outstanding=account.max_outstanding)
        server.metrics.bind(account.system_id, ev.bind_type.value, ok=True)
        self.info.system_id = account.system_id
        self.info.bind_type = ev.bind_type
        self.info.account = account
        self._limiter = server.limiter_for(account)
        self.log = self.log.bind(system_id=account.system_id)
        server.sampled(
            "info",
            "smpp.bound",
            account.system_id,
            session=self.info.id,
            peer=ip,
            system_id=account.system_id,
            bind_type=ev.bind_type.value,
        )
        self._flush()
        try:
            server.handler.session_bound(self.info)
        except Exception:
            self.log.exception("smpp.session_bound_hook_failed")
        server._notify_receivers()

    # ------------------------------------------------------------------ outbound requests

    async def send_request(self, pdu: Pdu) -> Pdu | None:
        """Send a request within the window; the response, or None on timeout / loss."""
        while True:
            if self._closed or not self.session.can_receive:
                return None
            try:
                seq = self.session.send_request(pdu, self.server.clock())
                break
            except WindowFull:
                fut: asyncio.Future[None] = self.loop.create_future()
                self._window_waiters.append(fut)
                try:
                    await fut
                except ConnectionError:
                    return None
        if self._owed_since is None:
            self._owed_since = self.server.clock()
        waiter: asyncio.Future[Pdu | None] = self.loop.create_future()
        self._waiters[seq] = waiter
        self._flush_soon()
        return await waiter

    def send_request_nowait(
        self, pdu: Pdu, done: Callable[[Any, Pdu | None], None], arg: Any
    ) -> bool:
        """:meth:`send_request` without a future: ``done(arg, response or None)`` later. False
        (nothing sent) when the window is full or the session cannot take it."""
        if self._closed or not self.session.can_receive or self.session.window_free <= 0:
            return False
        now = self.server.clock()
        seq = self.session.send_request(pdu, now)
        if self._owed_since is None:
            self._owed_since = now
        self._callbacks[seq] = (done, arg)
        self._flush_soon()
        return True

    def _resolve(self, seq: int, pdu: Pdu | None) -> None:
        callback = self._callbacks.pop(seq, None)
        if callback is not None:
            callback[0](callback[1], pdu)
        fut = self._waiters.pop(seq, None)
        if fut is not None and not fut.done():
            fut.set_result(pdu)
        while self._window_waiters and self.session.window_free > 0:
            w = self._window_waiters.pop(0)
            if not w.done():
                w.set_result(None)
                break

    # ------------------------------------------------------------------ plumbing

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        self.server._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.server._tasks.discard(task)

    def _flush(self) -> None:
        # SessionConnection._flush, plus the PDU counts and the submit latency of what leaves.
        self._flush_scheduled = False
        data = self.session.take_output()
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)
            now = self.server.clock()
            self.session.note_sent(now)
            self._arm()
            self._count_out(data)
            if self._answered:
                self._observe_latency(now)
        elif self._answered:
            self._answered.clear()  # not written (closing): no latency to report

    def _count_in(self, data: bytes) -> None:
        """bridge_smpp_pdus_total, direction in: walk the PDU headers of a read as it arrives.

        A PDU counts when its 16-octet header is in (before the session decodes it, so
        undecodable PDUs and those the session answers by itself count too). One pass per read
        instead of a hook per PDU: ~0.2 µs a PDU, where a prometheus-client child's ``inc()``
        takes a lock and ~0.6 µs, on a path that handles a whole submit_sm in ~7 µs.
        """
        counts = self.server._pdus_in
        offset = self._in_next
        end = len(data)
        if self._in_head:  # a header split over two reads
            carried = self._in_head
            head = carried + data[: 16 - len(carried)]
            if len(head) < 16:
                self._in_head = head
                return
            self._in_head = b""
            length, cid, status = _HEADER3(head)
            offset = length - len(carried)  # the PDU began len(carried) octets before `data`
            key = (cid, status)
            n = counts.get(key)
            if n is None:
                key = _canonical(key)
                n = counts.get(key, 0)
            counts[key] = n + 1
            if length < 16:  # a framing error: the session closes the connection
                self._in_next = _NO_MORE
                return
        while offset + 16 <= end:
            length, cid, status = _HEADER3(data, offset)
            key = (cid, status)
            n = counts.get(key)
            if n is None:
                key = _canonical(key)
                n = counts.get(key, 0)
            counts[key] = n + 1
            if length < 16:
                self._in_next = _NO_MORE
                return
            offset += length
        if offset < end:
            self._in_head = data[offset:]
            self._in_next = 0
        else:
            self._in_next = offset - end

    def _count_out(self, data: bytes) -> None:
        """bridge_smpp_pdus_total, direction out: the headers of what was just written, walked
        once per write rather than a hook per PDU (~0.2 µs a PDU)."""
        counts = self.server._pdus_out
        end = len(data)
        offset = 0
        while offset < end:
            length, cid, status = _HEADER3(data, offset)
            key = (cid, status)
            n = counts.get(key)
            if n is None:
                key = _canonical(key)
                n = counts.get(key, 0)
            counts[key] = n + 1
            if length < 16:  # cannot happen: the session encoded these
                break
            offset += length

    def _observe_latency(self, now: float) -> None:
        """bridge_smpp_submit_latency_seconds: arrival of each request to the write of its
        response. Responses to one read that leave in one write share their latency, so each
        distinct (command, arrival) is observed once, n times (a pipelining ESME's responses
        come in such runs). Both ends are read from ``server.clock`` (monotonic), which the
        read and the write read anyway."""
        hists = self.server._submit_latency
        answered = self._answered
        first = answered[0]
        # The usual cases first: one response, or one run (Counter costs ~1 µs to build).
        if len(answered) == 1 or answered.count(first) == len(answered):
            hist = hists.get(first[0])
            if hist is not None:
                hist.observe_n(now - first[1], len(answered))
        else:
            for (cid, arrived), n in Counter(answered).items():
                hist = hists.get(cid)
                if hist is not None:
                    hist.observe_n(now - arrived, n)
        answered.clear()

    def _close_soon(self) -> None:
        self._flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # close() flushes what is buffered first

    def _close_when_answered(self) -> None:
        """Close once every request handed to the pipeline has its response out.

        After an unbind (either side's) no new request is taken, but those already in the
        pipeline may be accepted messages: the ESME must still learn their message_id, else it
        resubmits them. A handler that never returns holds the connection at most
        response_timeout (or shutdown_timeout) seconds.
        """
        if self.session.outstanding == 0:
            self._close_soon()
            return
        if self._linger is None:
            cfg = self.server.config
            grace = cfg.session.response_timeout or cfg.shutdown_timeout
            self._linger = self.loop.call_later(grace, self._close_soon)

    def _next_deadline(self) -> float:
        """The session's next deadline, or the stalled receiver's if earlier (see _stalled)."""
        deadline = self.session.next_deadline()
        owed = self._owed_since
        limit = self.server.config.stalled_receiver_timeout
        if owed is not None and limit and owed + limit < deadline:
            return owed + limit
        return deadline

    def _run_timers(self) -> bool:
        if self._closed:
            return False
        now = self.server.clock()
        owed = self._owed_since
        limit = self.server.config.stalled_receiver_timeout
        if owed is not None and limit and now >= owed + limit:
            self._stalled(now - owed)
            return False
        events = self.session.handle_timers(now)
        if events:
            self._dispatch(events)
        self._flush()
        return not self._closed

    def unbind(self) -> None:
        self.session.unbind(self.server.clock())
        self._flush()

    def _stalled(self, seconds: float) -> None:
        """A receiver that neither answers nor reads (README "Reliability", SMPP): close it at
        once (abort: what we wrote is not being read), so that its deliver_sm fail now and
        go to another session of the account, or wait for one, instead of after ~330 s."""
        server = self.server
        system_id = self.info.system_id or "-"
        server.metrics.smpp_event("stalled_receiver")
        server.sampled(
            "warning",
            "smpp.stalled_receiver",
            system_id,
            session=self.info.id,
            peer=self.info.peer_ip,
            system_id=self.info.system_id,
            seconds=round(seconds, 1),
            unanswered=self.session.in_flight,
            write_buffer=self.transport.get_write_buffer_size() if self.transport else 0,
        )
        self.abort()

    def revoke(self, reason: str) -> None:
        """End a session whose right to be bound is gone (README "Revocation"): send unbind,
        then close once it is answered (or after response_timeout); requests already taken
        still get their responses, new ones get ESME_RINVBNDSTS."""
        server = self.server
        server.metrics.smpp_event("revoked")
        log.warning(
            "smpp.session_revoked",
            session=self.info.id,
            peer=self.info.peer_ip,
            system_id=self.info.system_id,
            reason=reason,
        )
        if self.session.is_bound:
            self.unbind()
        else:
            self._close_when_answered()


class SmppServer:
    """Accepts ESME connections on a plain and optionally a TLS port."""

    def __init__(
        self,
        config: ServerConfig,
        accounts: AccountRegistry,
        handler: SmppHandler | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.accounts = accounts
        self.handler: SmppHandler = handler or RejectingHandler()
        self.clock = clock
        self.metrics = metrics if metrics is not None else Metrics()
        # Loop-local per-PDU metrics (see _MeteredSession and _request), read at scrape time.
        self._pdus_in: dict[_PduKey, int] = {}
        self._pdus_out: dict[_PduKey, int] = {}
        self.metrics.add_pdu_source(self._pdu_rows)
        self._submit_latency: dict[int, LoopHistogram] = {
            int(cid): self.metrics.submit_latency(cid.name) for cid in _THROTTLED_COMMANDS
        }
        self.throttle = BindThrottle(config.bind_failure_delay, config.bind_failure_delay_max)
        self.lockout = BindLockout(config.bind_lockout_failures, config.bind_lockout_duration)
        self.hash_pool = HashPool(config.hash_workers, config.hash_max_pending)
        # Per-event log lines of the SMPP side are sampled (README "Reliability", SMPP).
        self.sampled = SampledLog(log, interval=config.log_sample_interval, clock=clock)
        reserve = min(config.bind_reserve, config.max_connections // 2)
        self.admission: Admission[_Connection] = Admission(
            AdmissionConfig(config.max_connections, config.max_unbound_per_address, reserve),
            self._allowed_networks,
        )
        self._refusing = 0  # refused connections waiting to be answered
        self._ids = itertools.count(1)
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._servers: list[Listener] = []
        self._limiters: dict[str, AsyncLimiter] = {}
        #: Cluster mode: ``await bind_gate(system_id, max_binds, bound here)`` says whether one
        #: more bind of the account fits cluster-wide (None: only this server's binds count).
        self.bind_gate: Callable[[str, int, int], Awaitable[bool]] | None = None
        self._rr: dict[str, int] = {}
        self._receiver_event: asyncio.Event | None = None
        self.ports: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        cfg = self.config
        # Our own accept loop (bridge/smpp/listener.py): many accepts per loop pass.
        plain = open_listeners(
            cfg.host, cfg.port, _BACKLOG, lambda: _Connection(self, tls=False), None,
            self._accept_failed,
        )  # fmt: skip
        self._servers.extend(plain)
        self.ports["smpp"] = plain[0].port
        if cfg.tls_port is not None and cfg.tls_cert and cfg.tls_key:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
            tls = open_listeners(
                cfg.tls_host or cfg.host, cfg.tls_port, _BACKLOG,
                lambda: _Connection(self, tls=True), ctx, self._accept_failed,
            )  # fmt: skip
            self._servers.extend(tls)
            self.ports["smpp_tls"] = tls[0].port
        log.info("smpp.listening", **self.ports)

    def _accept_failed(self, error: OSError) -> None:
        self.metrics.smpp_event("accept_failed")
        self.sampled("warning", "smpp.accept_failed", str(error.errno), error=str(error))

    async def stop(self, timeout: float | None = None) -> None:
        """Graceful shutdown: stop accepting, unbind bound sessions, let in-flight work finish.

        The unbind goes out first, so that ESMEs stop submitting (later requests get
        ESME_RINVBNDSTS); requests already in the pipeline still get their responses, and each
        connection closes once its unbind is answered and its last response is out. Whatever is
        left at ``timeout`` is aborted.
        """
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        deadline = self.clock() + timeout
        for srv in self._servers:
            srv.close()
        for conn in list(self._connections):
            if conn.session.is_bound:
                conn.unbind()
            else:
                conn._close_when_answered()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=max(0.0, deadline - self.clock()))
        while self._connections and self.clock() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self._connections):
            conn.abort()
        self._servers.clear()
        self.hash_pool.close()
        log.info("smpp.stopped")

    # ------------------------------------------------------------------ pipeline side

    def bound_count(self, system_id: str) -> int:
        return sum(
            1 for c in self._connections if c.info.system_id == system_id and c.session.is_bound
        )

    def receivers(self, system_id: str) -> list[_Connection]:
        return [
            c
            for c in self._connections
            if c.info.system_id == system_id and c.session.can_receive and not c._closed
        ]

    def has_receiver(self, system_id: str) -> bool:
        return bool(self.receivers(system_id))

    async def deliver(self, system_id: str, pdu: Pdu) -> DeliverResult:
        """Send deliver_sm/data_sm to a bound receiver of ``system_id`` (round robin).

        Returns the ESME's command_status, or status None with the reason when nobody is bound,
        the response timed out or the connection was lost: the caller keeps the message queued.
        """
        conns = self.receivers(system_id)
        if not conns:
            return DeliverResult(None, "no receiver bound")
        # Prefer a session with room in its window, round robin among them.
        start = self._rr.get(system_id, 0)
        self._rr[system_id] = start + 1
        ordered = conns[start % len(conns) :] + conns[: start % len(conns)]
        conn = next((c for c in ordered if c.session.window_free > 0), ordered[0])
        resp = await conn.send_request(pdu)
        if resp is None:
            return DeliverResult(None, "no response (timeout or connection lost)")
        return DeliverResult(resp.command_status)

    def deliver_nowait(
        self, system_id: str, pdu: Pdu, done: Callable[[Any, Pdu | None], None], arg: Any
    ) -> bool:
        """:meth:`deliver` without a future: round robin over the receivers of ``system_id``
        with room in their window; False (nothing sent) when none has room or none is bound.
        ``done(arg, response or None)`` runs when the ESME answers (None: timeout, lost)."""
        conns = self.receivers(system_id)
        if not conns:
            return False
        start = self._rr.get(system_id, 0)
        self._rr[system_id] = start + 1
        n = len(conns)
        return any(conns[(start + i) % n].send_request_nowait(pdu, done, arg) for i in range(n))

    async def wait_for_receiver(self) -> None:
        """Wakes when any receiver binds (for delivery queues that wait on unbound accounts)."""
        if self._receiver_event is None:
            self._receiver_event = asyncio.Event()
        await self._receiver_event.wait()

    def _notify_receivers(self) -> None:
        if self._receiver_event is not None:
            self._receiver_event.set()
            self._receiver_event = None

    def limiter_for(self, account: Account) -> AsyncLimiter | None:
        """One rate limiter per account, shared by all its sessions; None when unlimited."""
        if not account.tps:
            return None
        lim = self._limiters.get(account.system_id)
        if lim is None or lim.max_rate != account.tps:
            # time_period of 1 s: aiolimiter's bucket allows a burst of `tps` at once.
            lim = AsyncLimiter(account.tps, 1.0)
            self._limiters[account.system_id] = lim
        return lim

    def _allowed_networks(self) -> tuple[IPNetwork, ...]:
        allowed = self.config.allowed_ips
        return allowed if allowed is not None else self.accounts.networks()

    def _forget(self, conn: _Connection) -> None:
        was_bound = conn.info.system_id is not None
        self._connections.discard(conn)
        self.admission.closed(conn)
        if was_bound:
            try:
                self.handler.session_closed(conn.info)
            except Exception:
                log.exception("smpp.session_closed_hook_failed")

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def revoke_changed(self) -> int:
        """After the accounts were replaced (SIGHUP): revoke every bound session whose account
        is gone, whose password changed or whose address is no longer allowed. Returns how
        many."""
        n = 0
        for conn in list(self._connections):
            info = conn.info
            old = info.account
            if old is None or not conn.session.is_bound:
                continue
            new = self.accounts.get(old.system_id)
            if new is None:
                reason = "account removed"
            elif new.password != old.password:
                reason = "password changed"
            elif not new.ip_allowed(info.peer_ip):
                reason = "address no longer allowed"
            elif new.bind_type_allowed(info.bind_type):
                info.account = new  # other changes (tps, max_outstanding) apply to new binds
                continue
            else:
                reason = "bind type no longer allowed"
            conn.revoke(reason)
            n += 1
        return n

    def kick(self, target: str) -> list[int]:
        """Revoke a session by its id, or every session of a system_id (admin API ``kick``).
        Returns the ids of the sessions kicked."""
        kicked = []
        for conn in list(self._connections):
            info = conn.info
            if info.system_id is None or conn._closed:
                continue
            if str(info.id) == target or info.system_id == target:
                conn.revoke("kicked by the operator")
                kicked.append(info.id)
        return kicked

    def bound_sessions(self) -> list[SessionInfo]:
        """Every bound session (who, from where, bound how), for the admin status."""
        return [
            conn.info
            for conn in list(self._connections)
            if conn.info.system_id is not None
            and conn.info.bind_type is not None
            and conn.session.is_bound
        ]

    def session_counts(self) -> dict[tuple[str, str], int]:
        """Bound sessions by (system_id, bind type), for the sessions gauge."""
        counts: dict[tuple[str, str], int] = {}
        for conn in list(self._connections):
            info = conn.info
            if (
                info.system_id is not None
                and info.bind_type is not None
                and (conn.session.is_bound)
            ):
                key = (info.system_id, info.bind_type.value)
                counts[key] = counts.get(key, 0) + 1
        return counts

    def _pdu_rows(self) -> Iterator[tuple[str, str, str, float]]:
        """bridge_smpp_pdus_total rows (scrape time; the dicts are copied in one step each)."""
        for direction, counts in (("in", self._pdus_in), ("out", self._pdus_out)):
            for (command_id, status), n in list(counts.items()):
                command, status_name = pdu_labels(command_id, status)
                yield direction, command, status_name, n

    @property
    def listening(self) -> bool:
        """True while every listener (plain and TLS) accepts connections: for /readyz."""
        return bool(self._servers) and all(srv.is_serving() for srv in self._servers)
