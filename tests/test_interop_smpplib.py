"""smpplib as the ESME: the client legacy systems actually run, over a real loopback socket."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from ipaddress import ip_network
from typing import Any

import pytest
import smpplib.client
import smpplib.consts
import smpplib.exceptions
import smpplib.smpp

from bridge.core.accounts import BindType
from bridge.smpp.pdu import Status
from tests.harness.esme import deliver_sm_pdu
from tests.harness.loop import IO_TIMEOUT, wait_until
from tests.harness.server import AcceptingHandler, ServerThread, StartServer, make_account

BINDS = {
    "transmitter": ("bind_transmitter", smpplib.consts.SMPP_CLIENT_STATE_BOUND_TX),
    "receiver": ("bind_receiver", smpplib.consts.SMPP_CLIENT_STATE_BOUND_RX),
    "transceiver": ("bind_transceiver", smpplib.consts.SMPP_CLIENT_STATE_BOUND_TRX),
}


@contextlib.contextmanager
def esme(st: ServerThread) -> Iterator[smpplib.client.Client]:
    client = smpplib.client.Client(
        "127.0.0.1", st.port, timeout=IO_TIMEOUT, allow_unknown_opt_params=True
    )
    client.connect()
    try:
        yield client
    finally:
        client.disconnect()


def bind_status(client: smpplib.client.Client, how: str = "bind_transceiver", **kw: Any) -> int:
    """The command_status of a bind_resp (smpplib raises PDUError for a failed bind)."""
    kw.setdefault("system_id", "demo")
    kw.setdefault("password", "demopass")
    try:
        getattr(client, how)(**kw)
    except smpplib.exceptions.PDUError as e:
        return int(e.args[1])
    return 0


def submit(client: smpplib.client.Client, text: bytes = b"hello") -> Any:
    sent = client.send_message(
        source_addr_ton=smpplib.consts.SMPP_TON_ALNUM,
        source_addr="Bridge",
        dest_addr_ton=smpplib.consts.SMPP_TON_INTL,
        dest_addr_npi=smpplib.consts.SMPP_NPI_ISDN,
        destination_addr="4915112345678",
        short_message=text,
    )
    resp = client.read_pdu()
    assert resp.command == "submit_sm_resp"
    assert resp.sequence == sent.sequence
    return resp


# --------------------------------------------------------------------------- bind


@pytest.mark.parametrize("bind_type", list(BINDS))
def test_bind_succeeds_for_each_bind_type(smpp_server: StartServer, bind_type: str) -> None:
    st = smpp_server()
    how, state = BINDS[bind_type]
    with esme(st) as client:
        resp = getattr(client, how)(system_id="demo", password="demopass")
        assert resp.status == 0
        assert resp.command == f"{how}_resp"
        assert client.state == state
        assert resp.system_id == b"smppbridge"


def test_bind_with_wrong_password_is_refused_with_rinvpaswd(smpp_server: StartServer) -> None:
    st = smpp_server()
    with esme(st) as client:
        assert bind_status(client, password="wrong") == Status.ESME_RINVPASWD
        # The connection stays usable: the right password binds.
        assert bind_status(client) == 0


def test_bind_with_unknown_system_id_is_refused_with_rinvsysid_when_revealed(
    smpp_server: StartServer,
) -> None:
    st = smpp_server(reveal_bind_errors=True)
    with esme(st) as client:
        assert bind_status(client, system_id="nobody") == Status.ESME_RINVSYSID


def test_bind_with_unknown_system_id_is_refused_with_rinvpaswd_by_default(
    smpp_server: StartServer,
) -> None:
    st = smpp_server()
    with esme(st) as client:
        assert bind_status(client, system_id="nobody") == Status.ESME_RINVPASWD


@pytest.mark.parametrize(
    ("allowed", "how"),
    [
        ({BindType.TRANSMITTER}, "bind_receiver"),
        ({BindType.TRANSMITTER}, "bind_transceiver"),
        ({BindType.RECEIVER}, "bind_transmitter"),
    ],
)
def test_bind_type_not_allowed_for_the_account_fails_with_rbindfail(
    smpp_server: StartServer, allowed: set[BindType], how: str
) -> None:
    st = smpp_server([make_account(allowed_bind_types=frozenset(allowed))])
    with esme(st) as client:
        assert bind_status(client, how) == Status.ESME_RBINDFAIL


def test_bind_from_an_address_outside_the_allow_list_fails_with_rbindfail(
    smpp_server: StartServer,
) -> None:
    st = smpp_server([make_account(allowed_networks=(ip_network("10.0.0.0/8"),))])
    with esme(st) as client:
        assert bind_status(client) == Status.ESME_RBINDFAIL


def test_bind_beyond_max_binds_fails_with_rbindfail(smpp_server: StartServer) -> None:
    st = smpp_server([make_account(max_binds=2)])
    with esme(st) as first, esme(st) as second, esme(st) as third:
        assert bind_status(first, "bind_transmitter") == 0
        assert bind_status(second, "bind_receiver") == 0
        assert bind_status(third, "bind_transceiver") == Status.ESME_RBINDFAIL
        # A bind slot frees up when a session goes away.
        first.unbind()
        first.disconnect()
        assert wait_until(lambda: st.run(lambda: st.server.bound_count("demo")) == 1, 2.0)
        assert bind_status(third, "bind_transceiver") == 0


# --------------------------------------------------------------------------- submit_sm


def test_submit_sm_before_bind_is_answered_with_rinvbndsts(smpp_server: StartServer) -> None:
    st = smpp_server(handler=AcceptingHandler())
    with esme(st) as client:
        # smpplib refuses to send submit_sm while open, so put its PDU on the wire directly.
        pdu = smpplib.smpp.make_pdu(
            "submit_sm", client=client, destination_addr="4915112345678", short_message=b"x"
        )
        client._socket.sendall(pdu.generate())
        resp = client.read_pdu()
        assert resp.command == "submit_sm_resp"
        assert resp.sequence == pdu.sequence
        assert resp.status == Status.ESME_RINVBNDSTS


def test_submit_sm_with_the_default_handler_is_refused_with_rsyserr(
    smpp_server: StartServer,
) -> None:
    st = smpp_server()  # no pipeline plugged in: RejectingHandler
    with esme(st) as client:
        client.bind_transmitter(system_id="demo", password="demopass")
        for _ in range(3):
            resp = submit(client)
            assert resp.status == Status.ESME_RSYSERR
            assert resp.is_error()


def test_submit_sm_accepted_by_the_handler_returns_rok_and_its_message_id(
    smpp_server: StartServer,
) -> None:
    handler = AcceptingHandler(message_id=lambda pdu: f"id-{pdu['short_message'].decode()}")
    st = smpp_server(handler=handler)
    with esme(st) as client:
        client.bind_transceiver(system_id="demo", password="demopass")
        resp = submit(client, b"first")
        assert resp.status == 0
        assert resp.message_id == b"id-first"
        resp = submit(client, b"second")
        assert resp.message_id == b"id-second"
    got = handler.requests[0]
    assert got["destination_addr"] == "4915112345678"
    assert got["source_addr"] == "Bridge"
    assert got["short_message"] == b"first"
    assert handler.bound and handler.bound[0].system_id == "demo"


# --------------------------------------------------------------------------- link control


def test_enquire_link_is_answered_with_the_same_sequence(smpp_server: StartServer) -> None:
    st = smpp_server()
    with esme(st) as client:
        client.bind_transceiver(system_id="demo", password="demopass")
        req = smpplib.smpp.make_pdu("enquire_link", client=client)
        client.send_pdu(req)
        resp = client.read_pdu()
        assert resp.command == "enquire_link_resp"
        assert resp.sequence == req.sequence
        assert resp.status == 0


def test_unbind_is_answered_and_the_server_closes_the_connection(smpp_server: StartServer) -> None:
    handler = AcceptingHandler()
    st = smpp_server(handler=handler)
    with esme(st) as client:
        client.bind_transceiver(system_id="demo", password="demopass")
        resp = client.unbind()
        assert resp.command == "unbind_resp"
        assert resp.status == 0
        sock: socket.socket = client._socket
        sock.settimeout(IO_TIMEOUT)
        assert sock.recv(1) == b""  # EOF: the server closed its side
    assert wait_until(lambda: st.connection_count() == 0, 2.0)
    assert wait_until(lambda: len(handler.closed) == 1, 2.0)


# --------------------------------------------------------------------------- deliver_sm


@pytest.mark.parametrize("how", ["bind_receiver", "bind_transceiver"])
def test_deliver_sm_reaches_a_bound_receiver_and_its_resp_acknowledges(
    smpp_server: StartServer, how: str
) -> None:
    st = smpp_server()
    received: list[Any] = []
    with esme(st) as client:
        getattr(client, how)(system_id="demo", password="demopass")
        assert wait_until(lambda: st.run(lambda: st.server.has_receiver("demo")), 2.0)
        client.set_message_received_handler(lambda pdu: received.append(pdu))
        result = st.submit(st.server.deliver("demo", deliver_sm_pdu(b"hi there")))
        client.read_once()  # reads deliver_sm, answers deliver_sm_resp ESME_ROK
        outcome = result.result(IO_TIMEOUT)
    assert outcome.acknowledged is True
    assert outcome.status == 0
    assert len(received) == 1
    assert received[0].command == "deliver_sm"
    assert received[0].short_message == b"hi there"
    assert received[0].source_addr == b"4915112345678"


def test_deliver_sm_refused_by_the_esme_is_reported_with_its_status(
    smpp_server: StartServer,
) -> None:
    st = smpp_server()
    with esme(st) as client:
        client.bind_receiver(system_id="demo", password="demopass")
        client.set_message_received_handler(lambda pdu: Status.ESME_RX_T_APPN)
        result = st.submit(st.server.deliver("demo", deliver_sm_pdu()))
        client.read_once()
        outcome = result.result(IO_TIMEOUT)
    assert outcome.status == Status.ESME_RX_T_APPN
    assert outcome.acknowledged is False


def test_deliver_with_nobody_bound_returns_no_status_and_a_reason(smpp_server: StartServer) -> None:
    st = smpp_server()
    outcome = st.call(st.server.deliver("demo", deliver_sm_pdu()))
    assert outcome.status is None
    assert outcome.error
    assert outcome.acknowledged is False


def test_deliver_to_a_transmitter_only_session_is_not_attempted(smpp_server: StartServer) -> None:
    st = smpp_server()
    with esme(st) as client:
        client.bind_transmitter(system_id="demo", password="demopass")
        outcome = st.call(st.server.deliver("demo", deliver_sm_pdu()))
    assert outcome.status is None
    assert outcome.error
