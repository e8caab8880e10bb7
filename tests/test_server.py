"""The SMPP server over real loopback sockets, driven by a raw ESME on our own codec.

Each test is bounded in time: every socket read has a timeout and every wait a deadline.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.smpp.pdu import CommandId, Pdu, Status, encode
from bridge.smpp.session import SessionConfig
from tests.harness.esme import RawEsme, bind_pdu, submit_sm_pdu
from tests.harness.loop import IO_TIMEOUT, wait_until
from tests.harness.server import (
    AcceptingHandler,
    GatedHandler,
    ServerThread,
    StartServer,
    make_account,
)
from tests.harness.tls import make_self_signed_cert


def bound_esme(st: ServerThread, **kw: Any) -> RawEsme:
    esme = RawEsme(st.port, **kw)
    resp = esme.bind()
    assert resp.command_status == 0, resp
    return esme


def assert_still_serving(st: ServerThread) -> None:
    """A fresh connection binds and gets an answer to a submit_sm."""
    with RawEsme(st.port) as esme:
        assert esme.bind().command_status == 0
        seq = esme.submit()
        resp = esme.recv()
        assert resp.command_id == CommandId.submit_sm_resp
        assert resp.sequence_number == seq


# --------------------------------------------------------------------------- broken input


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: smsc\r\n\r\n",  # a web client on the SMPP port
        b"\x00\x00\x00\x05hello-this-is-not-smpp",  # command_length below the header size
        b"\xff" * 64,
    ],
    ids=["http", "short-length", "huge-length"],
)
def test_garbage_bytes_get_generic_nack_rinvcmdlen_and_the_connection_closes(
    smpp_server: StartServer, garbage: bytes
) -> None:
    st = smpp_server(handler=AcceptingHandler())
    with RawEsme(st.port) as esme:
        esme.send_raw(garbage)
        pdus = esme.recv_until_closed()
    assert len(pdus) == 1
    assert pdus[0].command_id == CommandId.generic_nack
    assert pdus[0].command_status == Status.ESME_RINVCMDLEN
    assert wait_until(lambda: st.connection_count() == 0, 2.0)
    assert_still_serving(st)


def test_garbage_after_a_bind_closes_only_that_session(smpp_server: StartServer) -> None:
    st = smpp_server(handler=AcceptingHandler())
    with bound_esme(st) as other, bound_esme(st) as victim:
        victim.send_raw(b"\x7f\xff\xff\xff" + b"\x00" * 12)
        pdus = victim.recv_until_closed()
        assert [p.command_status for p in pdus] == [Status.ESME_RINVCMDLEN]
        seq = other.submit()
        assert other.recv().sequence_number == seq


def test_unknown_command_id_gets_generic_nack_rinvcmdid_with_its_sequence(
    smpp_server: StartServer,
) -> None:
    st = smpp_server(handler=AcceptingHandler())
    with bound_esme(st) as esme:
        esme.send_raw(struct.pack(">IIII", 16, 0x00000099, 0, 4242))
        nack = esme.recv()
        assert nack.command_id == CommandId.generic_nack
        assert nack.command_status == Status.ESME_RINVCMDID
        assert nack.sequence_number == 4242
        # The session carries on.
        seq = esme.send(Pdu(CommandId.enquire_link))
        resp = esme.recv()
        assert (resp.command_id, resp.sequence_number) == (CommandId.enquire_link_resp, seq)
        seq = esme.submit()
        resp = esme.recv()
        assert (resp.command_id, resp.command_status) == (CommandId.submit_sm_resp, 0)
        assert resp.sequence_number == seq


def test_a_pdu_written_one_byte_at_a_time_is_reassembled(smpp_server: StartServer) -> None:
    handler = AcceptingHandler()
    st = smpp_server(handler=handler)
    with RawEsme(st.port) as esme:
        for pdu in (bind_pdu(), submit_sm_pdu(b"byte by byte")):
            pdu.sequence_number = esme.next_sequence()
            data = encode(pdu)
            for i in range(len(data)):
                esme.send_raw(data[i : i + 1])
                if i % 8 == 0:
                    time.sleep(0.001)  # let some bytes go out as separate segments
            resp = esme.recv()
            assert resp.sequence_number == pdu.sequence_number
            assert resp.command_id == pdu.command_id | 0x80000000
            assert resp.command_status == 0
    assert handler.requests[0]["short_message"] == b"byte by byte"


def test_abrupt_disconnect_mid_pdu_costs_nothing(smpp_server: StartServer) -> None:
    handler = AcceptingHandler()
    st = smpp_server(handler=handler)
    for _ in range(3):
        esme = bound_esme(st)
        data = encode(submit_sm_pdu(sequence=7))
        esme.send_raw(data[: len(data) // 2])
        esme.abort()  # RST with half a PDU in the server's buffer
    unbound = RawEsme(st.port)
    unbound.send_raw(encode(bind_pdu())[:10])  # and one that never finished its bind
    unbound.close()
    assert wait_until(lambda: st.connection_count() == 0, 2.0)
    assert handler.requests == []
    assert len(handler.closed) == 3  # every bound session reported closed
    assert_still_serving(st)


# --------------------------------------------------------------------------- concurrency


def test_500_pipelined_submits_in_one_write_are_each_answered_exactly_once(
    smpp_server: StartServer,
) -> None:
    handler = AcceptingHandler()
    st = smpp_server(handler=handler)
    with bound_esme(st) as esme:
        pdus = [submit_sm_pdu(f"m{i}".encode(), sequence=100 + i) for i in range(500)]
        esme.send_raw(b"".join(encode(p) for p in pdus))
        resps = [esme.recv() for _ in range(500)]
        # Nothing more: no duplicate answer is on its way.
        with pytest.raises(TimeoutError):
            esme.recv(timeout=0.2)
    assert all(r.command_id == CommandId.submit_sm_resp for r in resps)
    assert all(r.command_status == 0 for r in resps)
    seqs = [r.sequence_number for r in resps]
    assert sorted(seqs) == list(range(100, 600))
    assert {r["message_id"] for r in resps} == {f"msg-{s}" for s in range(100, 600)}
    assert handler.answered == 500


def test_responses_go_out_in_order_of_completion(smpp_server: StartServer) -> None:
    handler = AcceptingHandler(delay=lambda pdu: 0.4 if pdu["short_message"] == b"slow" else 0)
    st = smpp_server(handler=handler)
    with bound_esme(st) as esme:
        slow = esme.submit(b"slow")
        fast = esme.submit(b"fast")
        first, second = esme.recv(), esme.recv()
    assert first.sequence_number == fast
    assert second.sequence_number == slow
    assert first["message_id"] == f"msg-{fast}"
    assert second["message_id"] == f"msg-{slow}"


def test_a_slow_reader_makes_the_server_stop_reading_instead_of_buffering(
    smpp_server: StartServer,
) -> None:
    """An ESME that submits without reading its responses: once the server's unsent responses
    pass the high-water mark it stops reading, so the handler sees a bounded number of requests;
    when the ESME reads again, every complete request is answered."""
    handler = AcceptingHandler(message_id=lambda pdu: f"{pdu.sequence_number:064d}")
    st = smpp_server([make_account(max_outstanding=100_000)], handler=handler)
    esme = bound_esme(st, rcvbuf=4096)

    def shrink_kernel_send_buffer() -> None:
        # Loopback TCP buffers autotune to megabytes and would hide the server's own buffering:
        # keep the kernel's share small so that what piles up is in the server's hands.
        (conn,) = st.server._connections
        assert conn.transport is not None
        conn.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 16384
        )

    st.run(shrink_kernel_send_buffer)
    total = 20_000
    pdu_bytes = len(encode(submit_sm_pdu(b"x" * 40, sequence=1)))
    blob = b"".join(encode(submit_sm_pdu(b"x" * 40, sequence=i)) for i in range(2, total + 2))
    sent = 0
    esme.sock.setblocking(False)
    deadline = time.monotonic() + 5.0
    stalled_since: float | None = None
    while sent < len(blob) and time.monotonic() < deadline:
        try:
            sent += esme.sock.send(blob[sent : sent + 65536])
            stalled_since = None
        except BlockingIOError:
            # The server stopped reading and every buffer on the way is full.
            now = time.monotonic()
            stalled_since = stalled_since or now
            if now - stalled_since > 0.3:
                break
            time.sleep(0.01)
    esme.sock.setblocking(True)
    esme.sock.settimeout(IO_TIMEOUT)
    # The kernel's socket buffers (several MB on loopback) may take all of it: that is fine,
    # what counts is how much the server itself takes in.
    complete = sent // pdu_bytes

    def paused() -> bool:
        # Paused for the slow reader (not only between two batches of a long read).
        (conn,) = st.server._connections
        return (
            conn.transport is not None
            and not conn.transport.is_reading()
            and conn._writing_paused
        )

    assert wait_until(lambda: st.run(paused), 2.0)
    handled = len(handler.requests)
    time.sleep(0.2)
    assert len(handler.requests) == handled  # reading stays paused
    # Responses held by the server: about the write buffer's high-water mark (256 KiB, some
    # 3,200 responses of 81 octets) plus one read's worth of requests (256 KiB, about 3,000).
    assert handled < 10_000, (handled, complete)
    assert handled < complete

    # The reader catches up: everything the server read is answered, and it reads the rest.
    got = set()
    while len(got) < complete:
        resp = esme.recv()
        assert resp.command_status == 0
        got.add(resp.sequence_number)
    assert got == set(range(2, complete + 2))
    assert len(handler.requests) == complete
    esme.close()


# --------------------------------------------------------------------------- timers


def test_a_connection_that_never_binds_is_closed_after_session_init_timeout(
    smpp_server: StartServer,
) -> None:
    st = smpp_server(session=SessionConfig(session_init_timeout=0.3))
    with RawEsme(st.port) as esme:
        start = time.monotonic()
        pdus = esme.recv_until_closed(timeout=3.0)
        elapsed = time.monotonic() - start
    assert pdus == []
    assert 0.25 <= elapsed < 2.0
    # A client that binds in time stays connected past the timeout.
    with bound_esme(st) as esme:
        time.sleep(0.5)
        seq = esme.send(Pdu(CommandId.enquire_link))
        assert esme.recv().sequence_number == seq


def test_server_sends_enquire_link_on_an_idle_bound_session(smpp_server: StartServer) -> None:
    st = smpp_server(session=SessionConfig(enquire_link_interval=0.3, response_timeout=0.3))
    with bound_esme(st) as esme:
        for _ in range(2):  # answered keep-alives keep the session open
            req = esme.recv(timeout=2.0)
            assert req.command_id == CommandId.enquire_link
            esme.send(req.response())
        assert st.run(lambda: st.server.bound_count("demo")) == 1


def test_a_session_that_does_not_answer_enquire_link_is_closed(smpp_server: StartServer) -> None:
    st = smpp_server(session=SessionConfig(enquire_link_interval=0.3, response_timeout=0.3))
    with bound_esme(st) as esme:
        start = time.monotonic()
        req = esme.recv(timeout=2.0)
        assert req.command_id == CommandId.enquire_link
        rest = esme.recv_until_closed(timeout=3.0)  # never answered
        elapsed = time.monotonic() - start
    assert all(p.command_id == CommandId.enquire_link for p in rest)
    assert 0.5 <= elapsed < 2.5
    assert wait_until(lambda: st.connection_count() == 0, 2.0)


# --------------------------------------------------------------------------- limits


def test_submits_beyond_the_account_tps_are_throttled(smpp_server: StartServer) -> None:
    handler = AcceptingHandler()
    st = smpp_server([make_account(tps=5)], handler=handler)
    with bound_esme(st) as esme:
        pdus = [submit_sm_pdu(sequence=i) for i in range(1, 21)]
        esme.send_raw(b"".join(encode(p) for p in pdus))
        start = time.monotonic()
        resps = [esme.recv(timeout=3.0) for _ in range(20)]
        elapsed = time.monotonic() - start
    statuses = [r.command_status for r in resps]
    assert sorted(r.sequence_number for r in resps) == list(range(1, 21))
    assert set(statuses) <= {Status.ESME_ROK, Status.ESME_RTHROTTLED}
    accepted = statuses.count(Status.ESME_ROK)
    assert statuses.count(Status.ESME_RTHROTTLED) >= 10
    assert 1 <= accepted <= 7  # a burst of about tps, not all 20
    assert handler.answered == accepted
    assert elapsed < 1.0  # throttling answers at once, it does not queue


def test_sequential_submits_beyond_the_account_tps_are_throttled(smpp_server: StartServer) -> None:
    st = smpp_server([make_account(tps=5)], handler=AcceptingHandler())
    statuses = []
    with bound_esme(st) as esme:
        start = time.monotonic()
        for _ in range(20):
            esme.submit()
            statuses.append(esme.recv(timeout=3.0).command_status)
        elapsed = time.monotonic() - start
    assert Status.ESME_RTHROTTLED in statuses
    # A burst of 5, then 5 more per second that the 20 round trips took.
    assert 5 <= statuses.count(Status.ESME_ROK) <= 5 + 5 * elapsed + 1


def test_requests_beyond_max_outstanding_are_throttled(smpp_server: StartServer) -> None:
    handler = GatedHandler()
    st = smpp_server([make_account(max_outstanding=3)], handler=handler)
    with bound_esme(st) as esme:
        held = [esme.submit(f"held {i}".encode()) for i in range(3)]
        assert wait_until(lambda: handler.waiting == 3, 2.0)
        fourth = esme.submit(b"one too many")
        resp = esme.recv(timeout=2.0)
        assert (resp.sequence_number, resp.command_status) == (fourth, Status.ESME_RTHROTTLED)
        handler.release()
        resps = [esme.recv() for _ in range(3)]
        assert sorted(r.sequence_number for r in resps) == held
        assert all(r.command_status == 0 for r in resps)
        # With the window free again, the next one is accepted.
        seq = esme.submit()
        resp = esme.recv()
        assert (resp.sequence_number, resp.command_status) == (seq, 0)
    assert handler.answered == 4


def test_repeated_failed_binds_from_one_address_are_answered_ever_more_slowly(
    smpp_server: StartServer,
) -> None:
    st = smpp_server(bind_failure_delay=0.2, bind_failure_delay_max=5.0)
    times = []
    with RawEsme(st.port) as esme:
        for _ in range(3):
            start = time.monotonic()
            resp = esme.bind(password="guess")
            times.append(time.monotonic() - start)
            assert resp.command_status == Status.ESME_RINVPASWD
    # base_delay * 2**(n-1): about 0.2 s, 0.4 s, 0.8 s. Sleeps never end early, so the lower
    # bounds are safe on a busy machine; the comparison allows plenty of scheduling noise.
    first, second, third = times
    assert first >= 0.15
    assert second >= 0.3
    assert third >= 0.6
    assert third > first + 0.3
    # The right password still binds.
    with RawEsme(st.port) as esme:
        assert esme.bind().command_status == 0


def test_a_second_bind_on_a_bound_session_is_refused_with_ralybnd(smpp_server: StartServer) -> None:
    st = smpp_server()
    with bound_esme(st) as esme:
        resp = esme.bind(CommandId.bind_transmitter)
        assert resp.command_status == Status.ESME_RALYBND
        assert st.run(lambda: st.server.bound_count("demo")) == 1


def test_unbind_with_a_request_in_flight_still_delivers_its_response_before_closing(
    smpp_server: StartServer,
) -> None:
    handler = GatedHandler()
    st = smpp_server(handler=handler)
    with bound_esme(st) as esme:
        pending = esme.submit(b"accepted before the unbind")
        assert wait_until(lambda: handler.waiting == 1, 2.0)
        unbind = esme.send(Pdu(CommandId.unbind))
        resp = esme.recv(timeout=2.0)
        assert (resp.command_id, resp.sequence_number) == (CommandId.unbind_resp, unbind)
        handler.release()
        rest = esme.recv_until_closed(timeout=3.0)
    assert [(p.command_id, p.sequence_number, p.command_status) for p in rest] == [
        (CommandId.submit_sm_resp, pending, 0)
    ]


# --------------------------------------------------------------------------- shutdown


def test_graceful_stop_unbinds_waits_for_in_flight_work_and_then_closes(
    smpp_server: StartServer,
) -> None:
    handler = GatedHandler()
    st = smpp_server(handler=handler)
    esme = bound_esme(st)
    pending = esme.submit(b"in flight")
    assert wait_until(lambda: handler.waiting == 1, 2.0)
    stopping = st.submit(st.server.stop(timeout=5.0))

    unbind = esme.recv(timeout=2.0)
    assert unbind.command_id == CommandId.unbind
    # New work is refused once the server has asked to unbind.
    late = esme.submit(b"too late")
    resp = esme.recv(timeout=2.0)
    assert (resp.sequence_number, resp.command_status) == (late, Status.ESME_RINVBNDSTS)
    esme.send(unbind.response())
    time.sleep(0.1)
    assert not stopping.done()  # still waiting for the handler

    handler.release()
    rest = esme.recv_until_closed(timeout=3.0)
    assert [(p.command_id, p.sequence_number, p.command_status) for p in rest] == [
        (CommandId.submit_sm_resp, pending, 0)
    ]
    stopping.result(IO_TIMEOUT)
    assert st.server.connection_count == 0
    esme.close()
    with pytest.raises(OSError):
        RawEsme(st.port, timeout=1.0)  # the listener is gone


def test_graceful_stop_closes_connections_that_never_bound(smpp_server: StartServer) -> None:
    st = smpp_server()
    with RawEsme(st.port) as esme:
        # Wait until the server has the connection: on Python 3.11, one accepted by the kernel
        # but not yet by asyncio when the listener closes is left dangling (see the report).
        assert wait_until(lambda: st.connection_count() == 1, 2.0)
        start = time.monotonic()
        st.call(st.server.stop(timeout=5.0))
        assert esme.recv_until_closed(timeout=2.0) == []
    assert time.monotonic() - start < 1.0


# --------------------------------------------------------------------------- TLS


def test_bind_and_submit_over_the_tls_listener(smpp_server: StartServer, tmp_path: Path) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    handler = AcceptingHandler()
    st = smpp_server(handler=handler, tls_port=0, tls_cert=str(cert), tls_key=str(key))
    assert st.tls_port and st.tls_port != st.port
    ctx = ssl.create_default_context(cafile=str(cert))
    with RawEsme(st.tls_port, ssl_context=ctx) as esme:
        assert isinstance(esme.sock, ssl.SSLSocket)
        assert esme.bind().command_status == 0
        seq = esme.submit(b"secret")
        resp = esme.recv()
        assert (resp.sequence_number, resp.command_status) == (seq, 0)
    assert handler.bound[0].tls is True
    # A plain-text client on the TLS port gets no SMPP session.
    with socket.create_connection(("127.0.0.1", st.tls_port), timeout=2.0) as plain:
        plain.sendall(encode(bind_pdu()))
        try:
            data = plain.recv(4096)
        except (ConnectionResetError, TimeoutError):
            data = b""
        assert not data.startswith(b"\x00\x00\x00")  # a TLS alert or nothing, never a bind_resp
