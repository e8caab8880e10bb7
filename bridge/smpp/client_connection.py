"""One bind of the SMPP client: bytes between its socket and its sans-IO ClientSession.

:class:`ClientConnection` feeds :class:`~bridge.smpp.client_session.ClientSession`, resolves the
submit futures it carries as context, runs the upstream's deliver_sm through ``on_deliver``, and
ends gracefully (no new submits, in-flight ones answered, then unbind). :class:`SmppClient`
(:mod:`bridge.smpp.client`) keeps the binds up and picks one per submit. The errors a submit can
end with are defined here, by the connection that raises them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from bridge.smpp.client_session import ClientSession, ClientSessionConfig, ClientState, Event
from bridge.smpp.connection import SessionConnection
from bridge.smpp.events import (
    BindFailed,
    Bound,
    ConnectionClosed,
    DeliverRequested,
    ProtocolViolation,
    ResponseReceived,
    ResponseTimedOut,
    Unbound,
)
from bridge.smpp.pdu import Pdu, Status, command_name, status_name

if TYPE_CHECKING:
    from bridge.smpp.client import SmppClient

__all__ = ["ClientConnection", "ClientError", "ConnectionLost", "ResponseTimeout"]

# Pause reading from an upstream that does not read what we write beyond this many octets.
_HIGH_WATER = 256 * 1024


class ClientError(Exception):
    """Base of the client's errors; all transient for the caller (retry, or another route)."""


class ResponseTimeout(ClientError):
    """The request went out and no response came within response_timeout: outcome unknown."""


class ConnectionLost(ClientError):
    """The connection ended while the request awaited its response: outcome unknown."""


class ClientConnection(SessionConnection):
    """One TCP (or TLS) connection to the upstream: feeds its session, runs its timers."""

    session: ClientSession

    def __init__(self, client: SmppClient, session_config: ClientSessionConfig, label: str) -> None:
        super().__init__(client._loop, client.clock)
        self.client = client
        self.label = label
        self.session = ClientSession(session_config, client.clock())
        # Window slots promised to submit() callers that wait for the TPS limiter.
        self.reserved = 0
        self.stopping = False  # stop(): no new submits, unbind once in-flight ones are answered
        self.peer_unbound = False
        # 0 once bound, the refusal status, or None when closed without an answer to the bind
        self.bound: asyncio.Future[int | None] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self._handlers: set[asyncio.Task[None]] = set()
        self.log = client.log.bind(bind=label)

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)
        self.client._connections.add(self)
        self.log.debug("smpp_client.connected")
        self.session.bind(self.client.clock())
        self._flush()  # arms the timer: the bind's response_timeout

    def data_received(self, data: bytes) -> None:
        events = self.session.receive_data(data, self.client.clock())
        if events:
            self._dispatch(events)
        if self.session.has_output:
            self._flush()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        was_bound = self.session.is_bound or (self.bound.done() and self.bound.result() == 0)
        failed = self.session.close()
        if failed:
            err = ConnectionLost(f"{self.client.name}: connection lost ({exc or 'closed'})")
            for ev in failed:
                fut = ev.context
                if fut is not None and not fut.done():
                    fut.set_exception(err)
        if not self.bound.done():
            self.bound.set_result(None)
        self.client._connection_gone(self)
        if not self.closed.done():
            self.closed.set_result(None)
        if was_bound and not self.stopping:
            self.log.warning("smpp_client.disconnected", error=str(exc or "closed by peer"))
        else:
            self.log.debug("smpp_client.disconnected", error=str(exc or ""))

    # ------------------------------------------------------------------ events

    def _dispatch(self, events: list[Event]) -> None:
        freed = 0
        for ev in events:
            kind = type(ev)
            if kind is ResponseReceived:
                fut = cast(ResponseReceived, ev).context
                if fut is not None and not fut.done():
                    fut.set_result(cast(ResponseReceived, ev).pdu)
                freed += 1
            elif kind is ResponseTimedOut:
                timed_out = cast(ResponseTimedOut, ev)
                fut = timed_out.context
                if fut is not None and not fut.done():
                    fut.set_exception(
                        ResponseTimeout(
                            f"{self.client.name}: no {timed_out.request.name}_resp within"
                            f" {self.session.config.response_timeout}s"
                        )
                    )
                freed += 1
            elif kind is DeliverRequested:
                task = self.loop.create_task(self._deliver(cast(DeliverRequested, ev).pdu))
                self._handlers.add(task)
                task.add_done_callback(self._handler_done)
            elif kind is Bound:
                bound = cast(Bound, ev)
                self.log.info(
                    "smpp_client.bound", bind_type=bound.bind_type.value, smsc=bound.system_id
                )
                if not self.bound.done():
                    self.bound.set_result(0)
                self.client._connection_bound(self)
            elif kind is BindFailed:
                if not self.bound.done():
                    self.bound.set_result(cast(BindFailed, ev).status)
                self._close_soon()
            elif kind is Unbound:
                self.client._drop_tx(self)
                if cast(Unbound, ev).initiated_by_peer:
                    self.peer_unbound = True
                    self.log.info("smpp_client.unbound_by_upstream")
                    self._close_when_idle(linger=True)
                else:
                    self._close_soon()
            elif kind is ConnectionClosed:
                self.log.warning("smpp_client.closing", reason=cast(ConnectionClosed, ev).reason)
                self._close_soon()
            elif kind is ProtocolViolation:
                pv = cast(ProtocolViolation, ev)
                self.log.info(
                    "smpp_client.protocol_violation",
                    status=status_name(pv.status),
                    command=command_name(pv.command_id),
                    detail=pv.detail,
                )
        if freed:
            if self.stopping or self.peer_unbound:
                self._close_when_idle()
            else:
                self.client._wake(freed)

    async def _deliver(self, pdu: Pdu) -> None:
        client = self.client
        try:
            status = await client._on_deliver(pdu)
            if not 0 <= status <= 0xFFFFFFFF:  # TypeError for None and the like, caught below
                raise ValueError(f"on_deliver returned {status!r}, not a command_status")
        except Exception:
            status = Status.ESME_RX_T_APPN
            suppressed = client._deliver_failures.allow(client.clock())
            if suppressed is not None:
                self.log.exception(
                    "smpp_client.on_deliver_failed", command=pdu.name, suppressed=suppressed
                )
        self.session.respond(pdu, status)
        self._flush_soon()

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self._handlers.discard(task)
        if self.stopping or self.peer_unbound:
            self._close_when_idle()

    # ------------------------------------------------------------------ sending

    def has_room(self) -> bool:
        """A submit may go out here now (bound as a transmitter, a free window slot)."""
        return (
            not self.stopping
            and self.session.can_submit
            and self.session.window_free - self.reserved > 0
        )

    def send(self, pdu: Pdu, fut: asyncio.Future[Pdu]) -> None:
        self.session.send_request(pdu, self.client.clock(), fut)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    # ------------------------------------------------------------------ ending

    def begin_stop(self) -> None:
        """Graceful stop: no new submits; unbind once in-flight requests and handlers are done."""
        self.stopping = True
        self.client._drop_tx(self)
        if self.session.is_bound:
            self._close_when_idle()
        else:
            self.abort()  # connecting or binding: nothing to wait for

    def _close_when_idle(self, linger: bool = False) -> None:
        """Once nothing is in flight and every deliver handler answered: unbind (when we stop
        and are still bound) or close (after the upstream's unbind).

        After the upstream's unbind it may still answer requests in flight (it took them); a
        submit failed as ConnectionLost that was in fact accepted would be sent twice. So we
        wait for those answers, at most response_timeout (``linger``).
        """
        if self.session.in_flight or self._handlers:
            if linger and self._linger is None:
                grace = self.session.config.response_timeout or 10.0
                self._linger = self.loop.call_later(grace, self._close_soon)
            return
        state = self.session.state
        if self.session.is_bound:
            if self.stopping:
                self.session.unbind(self.client.clock())
                self._flush()
        elif state is not ClientState.UNBINDING:  # else its Unbound (or timeout) closes
            self._close_soon()

    def _close_soon(self) -> None:
        """Close after flushing; abort if the upstream does not take the rest within 2 s (a
        peer that stopped reading would otherwise keep the connection, and its binds, forever)."""
        self.client._drop_tx(self)
        self._flush()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
            self.loop.call_later(2.0, transport.abort)

    def _run_timers(self) -> bool:
        events = self.session.handle_timers(self.client.clock())
        if events:
            self._dispatch(events)
        if self.session.has_output:
            self._flush()
        return not self.closed.done()
