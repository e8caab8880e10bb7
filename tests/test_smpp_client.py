"""The asyncio ESME (:class:`bridge.smpp.client.SmppClient`) over real loopback sockets.

The SMSC is our own :class:`~bridge.smpp.server.SmppServer` running in the test's event loop, or,
for an SMSC that misbehaves on purpose, :class:`RawSmsc`: a bare asyncio server scripted per test.
Waits are bounded polls (:func:`eventually`); timing assertions are lower bounds or bounds
derived from the elapsed time, so a slow machine never fails them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.core.accounts import AccountRegistry
from bridge.smpp.client import (
    ClientConfig,
    ConnectionLost,
    NotBound,
    ResponseTimeout,
    SmppClient,
)
from bridge.smpp.pdu import RESPONSE_BIT, CommandId, FrameReader, Pdu, Status, decode, encode
from bridge.smpp.server import ServerConfig, SessionInfo, SmppServer
from bridge.smpp.session import SessionConfig
from tests.harness.esme import deliver_sm_pdu
from tests.harness.server import AcceptingHandler, make_account
from tests.harness.tls import make_self_signed_cert

TIMEOUT = 5.0


async def eventually(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Wait until ``predicate()`` holds; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def submit_sm(text: bytes = b"hello") -> Pdu:
    return Pdu(
        CommandId.submit_sm,
        fields={
            "source_addr_ton": 5,
            "source_addr": "Bridge",
            "dest_addr_ton": 1,
            "dest_addr_npi": 1,
            "destination_addr": "4915112345678",
            "short_message": text,
        },
    )


async def accept_all(pdu: Pdu) -> int:
    return 0


# --------------------------------------------------------------------------- fixtures


class RecordingHandler(AcceptingHandler):
    """Accepts everything; records which session carried each request and the concurrency."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(delay=(lambda pdu: delay) if delay else None)
        self.sessions: list[SessionInfo] = []
        self.active: dict[int, int] = {}
        self.max_active: dict[int, int] = {}

    async def handle_request(self, session: SessionInfo, pdu: Pdu) -> Pdu:
        self.sessions.append(session)
        n = self.active[session.id] = self.active.get(session.id, 0) + 1
        self.max_active[session.id] = max(self.max_active.get(session.id, 0), n)
        try:
            return await super().handle_request(session, pdu)
        finally:
            self.active[session.id] -= 1


StartSmsc = Callable[..., Awaitable[SmppServer]]
MakeClient = Callable[..., SmppClient]


@pytest.fixture
async def smsc() -> AsyncIterator[StartSmsc]:
    """Factory: our SmppServer on 127.0.0.1:<free port> in this test's loop."""
    servers: list[SmppServer] = []

    async def start(
        handler: Any = None, session: SessionConfig | None = None, **kw: Any
    ) -> SmppServer:
        cfg = ServerConfig(
            host="127.0.0.1",
            port=0,
            session=session or SessionConfig(),
            bind_failure_delay=0.0,
            bind_failure_delay_max=0.0,
            **kw,
        )
        server = SmppServer(cfg, AccountRegistry([make_account()]), handler or AcceptingHandler())
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(timeout=1.0)


@pytest.fixture
async def make_client(smsc: StartSmsc) -> AsyncIterator[MakeClient]:
    """Factory: an SmppClient with test-friendly timers (stopped at teardown, before the SMSCs)."""
    clients: list[SmppClient] = []

    def make(
        port: int, on_deliver: Callable[[Pdu], Awaitable[int]] = accept_all, **kw: Any
    ) -> SmppClient:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": port,
            "system_id": "demo",
            "password": "demopass",
            "tps": 0.0,
            "response_timeout": 2.0,
            "reconnect_min": 0.02,
            "reconnect_max": 0.1,
            "connect_timeout": 2.0,
        }
        client_kw = {k: kw.pop(k) for k in ("on_bound_change", "ssl_context", "jitter") if k in kw}
        values.update(kw)
        client = SmppClient(ClientConfig(**values), on_deliver, name="test", **client_kw)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.stop(timeout=1.0)


class RawConn:
    def __init__(self, index: int, writer: asyncio.StreamWriter) -> None:
        self.index = index
        self.writer = writer
        self.seq = 1000

    def send(self, pdu: Pdu) -> None:
        if not pdu.sequence_number:
            self.seq += 1
            pdu.sequence_number = self.seq
        self.writer.write(encode(pdu))

    def abort(self) -> None:
        transport = self.writer.transport
        transport.abort()


class RawSmsc:
    """A bare SMSC that does what each test scripts: answers binds with ``bind_status``,
    enquire_link when ``answer_enquire``, unbind always; submit_sm by ``submit_mode``
    ("answer", "ignore" or "nack"), after ``submit_delay`` seconds. Everything received is
    recorded in ``received`` as (connection index, PDU), and what it sent in ``log``."""

    def __init__(self) -> None:
        self.bind_status = 0
        self.answer_enquire = True
        self.submit_mode = "answer"
        self.submit_delay = 0.0
        self.received: list[tuple[int, Pdu]] = []
        self.log: list[str] = []
        self.conns: list[RawConn] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> RawSmsc:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in self.conns:
            conn.abort()
        for task in list(self._tasks):
            task.cancel()

    def pdus(self, command_id: int) -> list[Pdu]:
        return [p for _, p in self.received if p.command_id == command_id]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = RawConn(len(self.conns), writer)
        self.conns.append(conn)
        frames = FrameReader()
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                frames.feed(data)
                for frame in frames.frames():
                    pdu = decode(frame)
                    self.received.append((conn.index, pdu))
                    self._handle(conn, pdu)
        writer.close()

    def _handle(self, conn: RawConn, pdu: Pdu) -> None:
        cid = pdu.command_id
        if cid in (CommandId.bind_transceiver, CommandId.bind_transmitter, CommandId.bind_receiver):
            conn.send(pdu.response(self.bind_status, system_id="RAW"))
        elif cid == CommandId.enquire_link and self.answer_enquire:
            conn.send(pdu.response())
        elif cid == CommandId.unbind:
            conn.send(pdu.response())
            self.log.append("unbind_resp")
            conn.writer.close()
        elif cid == CommandId.submit_sm:
            self.log.append(f"submit {pdu.sequence_number}")
            if self.submit_mode == "answer":
                task = asyncio.ensure_future(self._answer(conn, pdu))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif self.submit_mode == "nack":
                conn.send(Pdu(CommandId.generic_nack, pdu.sequence_number, Status.ESME_RSYSERR))

    async def _answer(self, conn: RawConn, pdu: Pdu) -> None:
        if self.submit_delay:
            await asyncio.sleep(self.submit_delay)
        conn.send(pdu.response(0, message_id=f"raw-{pdu.sequence_number}"))
        self.log.append(f"submit_sm_resp {pdu.sequence_number}")


@pytest.fixture
async def raw_smsc() -> AsyncIterator[RawSmsc]:
    raw = await RawSmsc().start()
    yield raw
    await raw.stop()


# --------------------------------------------------------------------------- bind and submit


async def test_binds_as_transceiver_and_a_submit_gets_its_response(
    smsc: StartSmsc, make_client: MakeClient
) -> None:
    handler = RecordingHandler()
    server = await smsc(handler)
    changes: list[int] = []
    client = make_client(server.ports["smpp"], on_bound_change=changes.append)
    await client.start()
    assert await client.wait_bound(TIMEOUT)
    assert client.bound_count == 1
    pdu = submit_sm(b"Hello upstream")
    resp = await client.submit(pdu)
    assert resp.command_id == CommandId.submit_sm_resp
    assert resp.command_status == 0
    assert resp["message_id"] == f"msg-{pdu.sequence_number}"  # the client numbered it
    (got,) = handler.requests
    assert got["short_message"] == b"Hello upstream"
    assert handler.bound[0].bind_type == "transceiver"
    assert changes == [1]


async def test_n_binds_open_n_sessions_and_submits_spread_over_them(
    smsc: StartSmsc, make_client: MakeClient
) -> None:
    handler = RecordingHandler(delay=0.01)
    server = await smsc(handler)
    client = make_client(server.ports["smpp"], binds=3)
    await client.start()
    await eventually(lambda: client.bound_count == 3)
    await asyncio.gather(*(client.submit(submit_sm()) for _ in range(30)))
    assert len({s.id for s in handler.sessions}) == 3  # least loaded first: all three carried


async def test_tx_rx_mode_binds_transmitters_for_submits_and_receivers_for_deliveries(
    smsc: StartSmsc, make_client: MakeClient
) -> None:
    handler = RecordingHandler()
    server = await smsc(handler)
    delivered: list[Pdu] = []

    async def on_deliver(pdu: Pdu) -> int:
        delivered.append(pdu)
        return 0

    client = make_client(server.ports["smpp"], on_deliver, bind_mode="tx_rx", binds=2)
    await client.start()
    await eventually(lambda: len(handler.bound) == 4 and client.bound_count == 2)
    assert sorted(s.bind_type for s in handler.bound) == ["receiver"] * 2 + ["transmitter"] * 2
    assert len(client._connections) == 4  # bound_count counts the transmitters only
    await asyncio.gather(*(client.submit(submit_sm()) for _ in range(6)))
    assert {s.bind_type for s in handler.sessions} == {"transmitter"}
    result = await server.deliver("demo", deliver_sm_pdu(b"MO text"))
    assert result.acknowledged
    assert delivered[0]["short_message"] == b"MO text"


async def test_binds_over_tls(smsc: StartSmsc, make_client: MakeClient, tmp_path: Path) -> None:
    import ssl

    cert, key = make_self_signed_cert(tmp_path)
    server = await smsc(tls_port=0, tls_cert=str(cert), tls_key=str(key))
    ctx = ssl.create_default_context(cafile=str(cert))
    client = make_client(server.ports["smpp_tls"], host="localhost", tls=True, ssl_context=ctx)
    await client.start()
    assert await client.wait_bound(TIMEOUT)
    assert (await client.submit(submit_sm())).command_status == 0


async def test_a_generic_nack_is_returned_to_the_caller_to_classify(
    raw_smsc: RawSmsc, make_client: MakeClient
) -> None:
    raw_smsc.submit_mode = "nack"
    client = make_client(raw_smsc.port)
    await client.start()
    assert await client.wait_bound(TIMEOUT)
    resp = await client.submit(submit_sm())
    assert (resp.command_id, resp.command_status) == (CommandId.generic_nack, Status.ESME_RSYSERR)


# --------------------------------------------------------------------------- window and TPS


async def test_never_more_than_window_submits_in_flight_per_bind(
    smsc: StartSmsc, make_client: MakeClient
) -> None:
    handler = RecordingHandler(delay=0.02)
    server = await smsc(handler)
    client = make_client(server.ports["smpp"], binds=2, window=3)
    await client.start()
    await eventually(lambda: client.bound_count == 2)
    results = await asyncio.gather(*(client.submit(submit_sm()) for _ in range(24)))
    assert all(r.command_status == 0 for r in results)
    assert len(handler.max_active) == 2
    assert max(handler.max_active.values()) == 3  # filled, never exceeded


async def test_the_tps_limit_is_shared_across_binds(
    smsc: StartSmsc, make_client: MakeClient
) -> None:
    handler = RecordingHandler()
    server = await smsc(handler)
    tps, n = 40.0, 24
    client = make_client(server.ports["smpp"], binds=2, tps=tps)
    assert client.limiter is not None
    burst = client.limiter.max_rate
    assert burst == 2.0  # 50 ms worth of 40/s, not a whole second's
    await client.start()
    await eventually(lambda: client.bound_count == 2)
    started = time.monotonic()
    await asyncio.gather(*(client.submit(submit_sm()) for _ in range(n)))
    elapsed = time.monotonic() - started
    # Two binds at 40/s each would take half as long: the limit holds for the pair.
    assert elapsed >= (n - burst) / tps - 0.05
    assert len({s.id for s in handler.sessions}) == 2


def test_the_default_tps_limiter_lets_out_at_most_50_ms_worth_at_once() -> None:
    client = SmppClient(ClientConfig("127.0.0.1", 1, "a", "b"), accept_all)
    assert client.limiter is not None
    assert client.limiter.max_rate == pytest.approx(35.0)
    assert client.limiter.max_rate / client.limiter.time_period == pytest.approx(700.0)
    unlimited = SmppClient(ClientConfig("127.0.0.1", 1, "a", "b", tps=0), accept_all)
    assert unlimited.limiter is None


# --------------------------------------------------------------------------- failures


async def test_submit_without_a_bind_raises_not_bound_after_at_most_response_timeout(
    raw_smsc: RawSmsc, make_client: MakeClient
) -> None:
    raw_smsc.bind_status = Status.ESME_RBINDFAIL
    client = make_client(raw_smsc.port, response_timeout=0.2)
    with pytest.raises(NotBound):
        await client.submit(submit_sm())  # not started at all
    await client.start()
    started = time.monotonic()
    with pytest.raises(NotBound):
        await client.submit(submit_sm())
    assert time.monotonic() - started >= 0.15


async def test_an_unanswered_submit_raises_response_timeout_and_frees_its_slot(
    raw_smsc: RawSmsc, make_client: MakeClient
) -> None:
    raw_smsc.submit_mode = "ignore"
    client = make_client(raw_smsc.port, response_timeout=0.2, window=1)
    await client.start()
    assert await client.wait_bound(TIMEOUT)
    with pytest.raises(ResponseTimeout):
        await client.submit(submit_sm())
    raw_smsc.submit_mode = "answer"
    assert (await client.submit(submit_sm())).command_status == 0
    assert raw_smsc.connections == 1  # a timeout is not a reason to reconnect


async def test_in_flight_submits_fail_with_connection_lost_when_the_connection_drops(
    raw_smsc: RawSmsc, make_client: MakeClient
) -> None:
    raw_smsc.submit_mode = "ignore"
    client = make_client(raw_smsc.port)
    await client.start()
    assert await client.wait_bound(TIMEOUT)
    submits = [asyncio.ensure_future(client.submit(submit_sm())) for _ in range(3)]
    await eventually(lambda: len(raw_smsc.pdus(CommandId.submit_sm)) == 3)
    raw_smsc.conns[0].abort()
    results = await asyncio.gather(*submits, return_exceptions=True)
    assert all(isinstance(r, ConnectionLost) for r in results), results


async def test_reconnects_after_the_server_drops_the_connection(
    smsc: StartSmsc, make_client: MakeClient
) -> None:
    handler = RecordingHandler()
    server = await smsc(handler)
    changes: list[int] = []
    client = make_client(server.ports["smpp"], on_bound_change=changes.append)
    await client.start()
    assert await client.wait_bound(TIMEOUT)
    for conn in list(server._connections):
        conn.abort()
    await eventually(lambda: len(handler.bound) == 2)
    assert await client.wait_bound(TIMEOUT)
    assert (await client.submit(submit_sm())).command_status == 0
    assert changes == [1, 0, 1]


async def test_connection_failures_back_off_exponentially(
    raw_smsc: RawSmsc, make_client: MakeClient
) -> None:
    raw_smsc.bind_status = Status.ESME_RSYSERR  # not a credentials problem: exponential
    minimum = 0.02
    client = make_client(
        raw_smsc.port, reconnect_min=minimum, reconnect_max=10.0, jitter=lambda: 1.0
    )
    started = time.monotonic()
    await client.start()
    await eventually(lambda: raw_smsc.connections >= 4)
    elapsed = time.monotonic() - started
    # Attempt k comes after at least minimum * (2**(k-1) - 1) seconds of waiting.
    assert raw_smsc.connections <= math.log2(elapsed / minimum + 1) + 1


async def test_a_refused_bind_is_retried_at_max_backoff_and_never_crashes(
    raw_smsc: RawSmsc, make_client: MakeClient
) -> None:
    raw_smsc.bind_status = Status.ESME_RINVPASWD
    maximum = 0.15
    client = make_client(raw_smsc.port, reconnect_min=0.001, reconnect_max=maximum)
    started = time.monotonic()
    await client.start()
    await eventually(lambda: len(raw_smsc.pdus(CommandId.bind_transceiver)) >= 3)
    elapsed = time.monotonic() - started
    # Wrong credentials wait reconnect_max (jitter: at least half of it), not reconnect_min.
    assert len(raw_smsc.pdus(CommandId.bind_transceiver)) <= elapsed / (maximum / 2) + 1
    assert client.bound_count == 0
    assert all(not t.done() for t in client._loops)  # the bind loop lives on
    raw_smsc.bind_status = 0  # the password was fixed upstream
    assert await client.wait_bound(TIMEOUT)


# --------------------------------------------------------------------------- keep-alive, unbind


async def test_enquire_link_is_sent_on_an_idle_link_and_the_upstreams_is_answered(
    raw_smsc: RawSmsc, make_client: MakeClient
) -> None:
    client = make_client(raw_smsc.port, enquire_link_interval=0.05)
    await client.start()
    assert await client.wait_bound(TIMEOUT)
    await eventually(lambda: len(raw_smsc.pdus(CommandId.enquire_link)) >= 2)
    raw_smsc.conns[0].send(Pdu(CommandId.enquire_link, 4242))
    await eventually(lambda: bool(raw_smsc.pdus(CommandId.enquire_link_resp)))
    (resp,) = raw_smsc.pdus(CommandId.enquire_link_resp)
    assert (resp.sequence_number, resp.command_status) == (4242, 0)
    assert raw_smsc.connections == 1


async def test_an_unanswered_enquire_link_drops_the_connection_and_binds_again(
    raw_smsc: RawSmsc, make_client: MakeClient
) -> None:
    raw_smsc.answer_enquire = False
    client = make_client(raw_smsc.port, enquire_link_interval=0.05, response_timeout=0.1)
    await client.start()
    await eventually(lambda: len(raw_smsc.pdus(CommandId.bind_transceiver)) >= 2)


async def test_the_upstreams_unbind_is_answered_and_the_client_binds_again(
    raw_smsc: RawSmsc, make_client: MakeClient
) -> None:
    changes: list[int] = []
    client = make_client(raw_smsc.port, on_bound_change=changes.append)
    await client.start()
    assert await client.wait_bound(TIMEOUT)
    raw_smsc.conns[0].send(Pdu(CommandId.unbind, 7))
    await eventually(lambda: bool(raw_smsc.pdus(CommandId.unbind_resp)))
    assert raw_smsc.pdus(CommandId.unbind_resp)[0].sequence_number == 7
    await eventually(lambda: raw_smsc.connections == 2 and client.bound_count == 1)
    assert changes == [1, 0, 1]
    assert (await client.submit(submit_sm())).command_status == 0


async def test_after_the_upstreams_unbind_in_flight_submits_still_get_their_responses(
    raw_smsc: RawSmsc, make_client: MakeClient
) -> None:
    raw_smsc.submit_mode = "ignore"
    client = make_client(raw_smsc.port)
    await client.start()
    assert await client.wait_bound(TIMEOUT)
    pending = asyncio.ensure_future(client.submit(submit_sm()))
    await eventually(lambda: bool(raw_smsc.pdus(CommandId.submit_sm)))
    (submit,) = raw_smsc.pdus(CommandId.submit_sm)
    conn = raw_smsc.conns[0]
    conn.send(Pdu(CommandId.unbind, 7))
    await eventually(lambda: bool(raw_smsc.pdus(CommandId.unbind_resp)))
    conn.send(submit.response(0, message_id="accepted-before-unbind"))
    resp = await asyncio.wait_for(pending, TIMEOUT)
    assert resp["message_id"] == "accepted-before-unbind"  # not ConnectionLost: no resend


# --------------------------------------------------------------------------- deliver_sm


async def test_a_deliver_sm_is_answered_with_on_delivers_status_only_after_it_returns(
    smsc: StartSmsc, make_client: MakeClient
) -> None:
    server = await smsc()
    gate = asyncio.Event()
    seen: list[Pdu] = []

    async def on_deliver(pdu: Pdu) -> int:
        seen.append(pdu)
        await gate.wait()  # storing the event takes its time
        return Status.ESME_RX_R_APPN

    client = make_client(server.ports["smpp"], on_deliver)
    await client.start()
    assert await client.wait_bound(TIMEOUT)
    outcome = asyncio.ensure_future(server.deliver("demo", deliver_sm_pdu(b"receipt")))
    await eventually(lambda: bool(seen))
    await asyncio.sleep(0.05)
    assert not outcome.done()  # no deliver_sm_resp while the handler has not returned
    gate.set()
    result = await asyncio.wait_for(outcome, TIMEOUT)
    assert result.status == Status.ESME_RX_R_APPN
    assert seen[0]["short_message"] == b"receipt"


async def test_an_exception_in_on_deliver_answers_rx_t_appn(
    smsc: StartSmsc, make_client: MakeClient
) -> None:
    server = await smsc()

    async def on_deliver(pdu: Pdu) -> int:
        raise RuntimeError("store unavailable")

    client = make_client(server.ports["smpp"], on_deliver)
    await client.start()
    assert await client.wait_bound(TIMEOUT)
    for _ in range(2):
        result = await server.deliver("demo", deliver_sm_pdu())
        assert result.status == Status.ESME_RX_T_APPN  # transient: the upstream resends
    assert client.bound_count == 1


# --------------------------------------------------------------------------- stop


async def test_stop_waits_for_in_flight_responses_then_unbinds(
    raw_smsc: RawSmsc, make_client: MakeClient
) -> None:
    raw_smsc.submit_delay = 0.1
    client = make_client(raw_smsc.port)
    await client.start()
    assert await client.wait_bound(TIMEOUT)
    submits = [asyncio.ensure_future(client.submit(submit_sm())) for _ in range(2)]
    await eventually(lambda: len(raw_smsc.pdus(CommandId.submit_sm)) == 2)
    stopping = asyncio.ensure_future(client.stop(timeout=TIMEOUT))
    await asyncio.sleep(0)
    with pytest.raises(NotBound):
        await client.submit(submit_sm())
    await asyncio.wait_for(stopping, TIMEOUT)
    assert all(s.result().command_status == 0 for s in submits)
    assert raw_smsc.log[-1] == "unbind_resp"
    assert sum(e.startswith("submit_sm_resp") for e in raw_smsc.log) == 2
    assert raw_smsc.received[-1][1].command_id == CommandId.unbind
    assert client.bound_count == 0


async def test_stop_gives_up_at_its_timeout_and_fails_what_is_still_in_flight(
    raw_smsc: RawSmsc, make_client: MakeClient
) -> None:
    raw_smsc.submit_mode = "ignore"
    client = make_client(raw_smsc.port, response_timeout=30.0)
    await client.start()
    assert await client.wait_bound(TIMEOUT)
    pending = asyncio.ensure_future(client.submit(submit_sm()))
    await eventually(lambda: bool(raw_smsc.pdus(CommandId.submit_sm)))
    started = time.monotonic()
    await client.stop(timeout=0.2)
    assert time.monotonic() - started < TIMEOUT
    with pytest.raises(ConnectionLost):
        await pending
    assert not raw_smsc.pdus(CommandId.unbind)  # never unbinds under a request in flight


async def test_the_smscs_own_shutdown_unbind_is_taken_in_stride(
    smsc: StartSmsc, make_client: MakeClient
) -> None:
    server = await smsc()
    client = make_client(server.ports["smpp"], reconnect_min=0.05)
    await client.start()
    assert await client.wait_bound(TIMEOUT)
    await server.stop(timeout=1.0)
    await eventually(lambda: client.bound_count == 0)
    assert all(not t.done() for t in client._loops)
    assert not RESPONSE_BIT & CommandId.unbind


async def test_submits_queued_for_a_window_slot_survive_a_reconnect(
    raw_smsc: RawSmsc, make_client: MakeClient
) -> None:
    raw_smsc.submit_mode = "ignore"
    client = make_client(raw_smsc.port, window=1)
    await client.start()
    assert await client.wait_bound(TIMEOUT)
    first = asyncio.ensure_future(client.submit(submit_sm(b"first")))
    await eventually(lambda: bool(raw_smsc.pdus(CommandId.submit_sm)))
    queued = [asyncio.ensure_future(client.submit(submit_sm(b"queued"))) for _ in range(2)]
    await asyncio.sleep(0.02)
    assert len(raw_smsc.pdus(CommandId.submit_sm)) == 1  # the window holds them back
    raw_smsc.submit_mode = "answer"
    raw_smsc.conns[0].abort()
    with pytest.raises(ConnectionLost):
        await first  # it was on the wire: outcome unknown, the caller decides
    results = await asyncio.wait_for(asyncio.gather(*queued), TIMEOUT)
    assert all(r.command_status == 0 for r in results)  # never sent before: sent after rebind
    assert raw_smsc.connections == 2


async def test_the_password_is_never_logged(raw_smsc: RawSmsc, make_client: MakeClient) -> None:
    from structlog.testing import capture_logs

    raw_smsc.bind_status = Status.ESME_RINVPASWD
    with capture_logs() as logs:
        client = make_client(raw_smsc.port, password="hunter2", reconnect_max=0.05)
        await client.start()
        await eventually(lambda: len(raw_smsc.pdus(CommandId.bind_transceiver)) >= 2)
        await client.stop()
    assert any(entry["event"] == "smpp_client.bind_refused" for entry in logs)
    assert "hunter2" not in repr(logs)
    assert "hunter2" not in repr(client.config)
