"""One ESME's connection to the SMPP server: bytes between its socket and its session.

:class:`ServerConnection` feeds the sans-IO :class:`~bridge.smpp.session.ServerSession`, turns its
events into work (requests to the pipeline's handler, binds to :mod:`bridge.smpp.server_bind`,
responses to the deliver_sm we sent), and adds what needs a socket or a clock: fairness between
pipelining sessions, back-pressure toward slow readers, the stalled-receiver check, refusal at
accept, per-account TPS, revocation. The server (:mod:`bridge.smpp.server`) keeps the registry
of connections and what spans them.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import structlog
from aiolimiter import AsyncLimiter

from bridge.smpp.connection import SessionConnection
from bridge.smpp.events import (
    BindRequested,
    ConnectionClosed,
    MessageRequest,
    ProtocolViolation,
    ResponseReceived,
    ResponseTimedOut,
    Unbound,
)
from bridge.smpp.pdu import RESPONSE_BIT, CommandId, Pdu, Status, encode
from bridge.smpp.pdu_metrics import PduMetering
from bridge.smpp.server_bind import authenticate_bind
from bridge.smpp.session import Event, ServerSession
from bridge.smpp.session_core import WindowFull

if TYPE_CHECKING:
    from bridge.smpp.server import SessionInfo, SmppServer

__all__ = ["THROTTLED_COMMANDS", "ServerConnection"]

log = structlog.get_logger("bridge.smpp")

# What the per-account TPS limiter counts (and the submit latency histogram observes).
THROTTLED_COMMANDS = frozenset({CommandId.submit_sm, CommandId.submit_multi, CommandId.data_sm})
# Pause reading from a peer whose unread responses exceed this many octets (slow reader).
_HIGH_WATER = 256 * 1024
# Fairness (README "Reliability", SMPP): at most this many PDUs of one session are handled per
# loop pass; the rest waits in its buffer (reading paused) until the other sessions had a turn.
_BATCH = 128
# A refused connection waits this long for its first PDU, to answer a bind with bind_resp
# ESME_RBINDFAIL (else generic_nack ESME_RSYSERR), then closes; at most _MAX_REFUSING wait at
# once (beyond that they are closed at once, still counted).
_REFUSE_WAIT = 0.5
_MAX_REFUSING = 256
_BIND_IDS = frozenset(
    {CommandId.bind_transmitter, CommandId.bind_receiver, CommandId.bind_transceiver}
)


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


class ServerConnection(PduMetering, SessionConnection):
    """One TCP (or TLS) connection: feeds its session, runs its timers, writes its output."""

    session: ServerSession

    server: SmppServer

    def __init__(self, server: SmppServer, info: SessionInfo) -> None:
        super().__init__(asyncio.get_running_loop(), server.clock)
        self.server = server
        self.tls = info.tls
        self.session = ServerSession(server.config.session, server.clock())
        self.info = info
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
        # PDUs in (PduMetering._count_in)
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
                self._spawn(authenticate_bind(self, ev))
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
            and pdu.command_id in THROTTLED_COMMANDS
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

    def _wrote(self, data: bytes, now: float) -> None:
        # The PDU counts and the submit latency of what leaves (not of what a closing
        # connection drops: those responses stay in _answered, never observed).
        self._count_out(data)
        if self._answered:
            self._observe_latency(now)


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
